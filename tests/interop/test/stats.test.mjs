// GET /api/stats counts sockets and channels of this node.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

const NODE = `interop-stats-${process.pid}`
let server
before(async () => { server = await h.startServer({ nodeName: NODE }) })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

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
  const s1 = await h.connectSocket(server, { params: { user_id: "st1" } })
  const s2 = await h.connectSocket(server)
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

  const raw = await h.rawConnect(server)
  await statsEqual({ sockets: 3, channels: 2 }, "a raw ws client counts as a socket")
  await raw.close()
  await h.disconnectSocket(s2)
  await statsEqual({ sockets: 1, channels: 1 }, "after closing two sockets")
})

test("a crashed channel (boom) and a stopped channel are no longer counted", async () => {
  await statsEqual({ sockets: 0, channels: 0 }, "clean start")
  const s = await h.connectSocket(server, { rejoinAfterMs: () => 60000 })
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
  const s = await h.connectSocket(server, { params: { user_id: "st-dc" }, reconnectAfterMs: () => 60000 })
  await h.joinOk(s, h.uniq("room:st-dc"))
  await statsEqual({ sockets: 1, channels: 1 }, "connected")
  const closed = s.events.waitFor((e) => e.type === "close", "close after disconnect")
  await h.apiDisconnect(server, "user_socket:st-dc")
  await closed
  await statsEqual({ sockets: 0, channels: 0 }, "after forced disconnect (reconnect postponed)")
})
