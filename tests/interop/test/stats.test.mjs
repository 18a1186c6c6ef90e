// GET /api/stats counts sockets and channels of this node, with clients over
// each transport (one fresh node per transport).
//
// LongPoll has no "close" the server could see: a phoenix.js LongPoll socket
// that disconnects just stops polling, and its session ends only after 15–30 s
// without a poll (PROTOCOL.md §6.7), too slow for these tests. So in the
// LongPoll block every socket has a user_id, and "closing" it means stopping
// the client and then ending its session with POST /api/disconnect (§4.11).
// The client is stopped first: a client still polling when its session ends
// gets a new (orphan) session on its next poll (§6.3), which would be counted.
import { test, describe, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

for (const transport of h.TRANSPORTS) describe(transport, () => {
  const NODE = `interop-stats-${transport}-${process.pid}`
  const longpoll = transport === "longpoll"
  let server
  /** user ids of the sockets of the current test, to end their LongPoll sessions */
  let userIds = []

  before(async () => { server = await h.startServer({ nodeName: NODE }) })
  afterEach(async () => {
    await h.closeAll()
    if (longpoll) {
      for (const uid of userIds) await h.apiDisconnect(server, `user_socket:${uid}`)
    }
    userIds = []
  })
  after(async () => { await h.closeAll(); await server?.stop() })

  /** phoenix.js socket; over LongPoll anonymous sockets get a user_id (see above). */
  function connect(params = {}, opts = {}) {
    if (longpoll && params.user_id === undefined) params = { ...params, user_id: h.uniq("st-lp") }
    if (params.user_id !== undefined) userIds.push(params.user_id)
    return h.connectSocket(server, { transport, params, ...opts })
  }

  /** Close a socket as the transport allows the server to notice it (see above). */
  async function close(socket, uid) {
    await h.disconnectSocket(socket)
    if (longpoll) await h.apiDisconnect(server, `user_socket:${uid}`)
  }

  async function statsEqual(expected, what) {
    let last
    try {
      await h.waitUntil(async () => {
        last = (await h.apiStats(server)).json
        return last && last.sockets === expected.sockets && last.channels === expected.channels
      }, what)
    } catch {
      assert.deepEqual(last, { ...expected, node: NODE }, `stats ${what}`)
    }
    assert.deepEqual(last, { ...expected, node: NODE })
  }

  test("a fresh node reports zero sockets and channels and its name", async () => {
    const res = await h.apiStats(server)
    assert.equal(res.status, 200)
    assert.deepEqual(res.json, { sockets: 0, channels: 0, node: NODE })
  })

  test("stats follow connects, joins, refused joins, leaves and disconnects", async () => {
    const s1 = await connect({ user_id: `st1-${transport}` })
    const s2params = longpoll ? { user_id: `st2-${transport}` } : {}
    const s2 = await connect(s2params)
    await statsEqual({ sockets: 2, channels: 0 }, "after 2 connects")

    const c1 = await h.joinOk(s1, h.uniq("room:st"))
    await h.joinOk(s1, h.uniq("bench:st"))
    await h.joinOk(s2, h.uniq("chat:st"))
    await statsEqual({ sockets: 2, channels: 3 }, "after 3 joins")

    const denied = await h.join(s2, "room:denied")
    denied.channel.leave()
    const crashed = await h.join(s2, "room:join_crash")
    crashed.channel.leave()
    const unmatched = await h.join(s2, "nope:stats")
    unmatched.channel.leave()
    await statsEqual({ sockets: 2, channels: 3 }, "refused / crashed / unmatched joins do not count")

    assert.equal((await h.replyOf(c1.leave())).status, "ok")
    await statsEqual({ sockets: 2, channels: 2 }, "after a leave")

    const rawUid = `st-raw-${transport}`
    const raw = await h.rawConnect(server, { transport, params: longpoll ? { user_id: rawUid } : {} })
    await statsEqual({ sockets: 3, channels: 2 }, `a raw ${transport} client counts as a socket`)
    await raw.close()
    if (longpoll) await h.apiDisconnect(server, `user_socket:${rawUid}`)
    await close(s2, s2params.user_id)
    await statsEqual({ sockets: 1, channels: 1 }, "after closing two sockets")
  })

  test("a crashed channel (boom) and a stopped channel are no longer counted", async () => {
    await statsEqual({ sockets: 0, channels: 0 }, "clean start")
    const s = await connect({}, { rejoinAfterMs: () => 60000 })
    const a = await h.joinOk(s, h.uniq("room:st-boom"))
    const b = await h.joinOk(s, h.uniq("room:st-stop"))
    await statsEqual({ sockets: 1, channels: 2 }, "two channels")
    const errored = h.nextCall((cb) => a.onError(cb), "onError after boom")
    a.push("boom", {}, 300)
    await errored
    await statsEqual({ sockets: 1, channels: 1 }, "after boom (rejoin postponed)")
    assert.equal((await h.pushChannel(b, "stop", {})).status, "ok")
    await statsEqual({ sockets: 1, channels: 0 }, "after stop")
  })

  test("disconnect by id is reflected in the stats", async () => {
    await statsEqual({ sockets: 0, channels: 0 }, "clean start")
    const uid = `st-dc-${transport}`
    const s = await connect({ user_id: uid }, { reconnectAfterMs: () => 60000 })
    await h.joinOk(s, h.uniq("room:st-dc"))
    await statsEqual({ sockets: 1, channels: 1 }, "connected")
    if (longpoll) {
      // stop polling first (see the top of the file); the client side of a
      // forced disconnect over LongPoll is covered in http_api.test.mjs
      await h.disconnectSocket(s)
      await h.apiDisconnect(server, `user_socket:${uid}`)
    } else {
      const closed = s.events.waitFor((e) => e.type === "close", "close after disconnect")
      await h.apiDisconnect(server, `user_socket:${uid}`)
      await closed
    }
    await statsEqual({ sockets: 0, channels: 0 }, "after forced disconnect (reconnect postponed)")
  })
})
