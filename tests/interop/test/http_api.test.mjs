// HTTP API: /healthz, /api/broadcast, /api/disconnect (the last two with
// subscribers over each transport).
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

const NODE = `interop-http-${process.pid}`
let server
before(async () => { server = await h.startServer({ nodeName: NODE }) })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

test("GET /healthz answers 200 {status: ok, node: NAME}", async () => {
  const res = await h.healthz(server)
  assert.equal(res.status, 200)
  assert.deepEqual(res.json, { status: "ok", node: NODE })
})

test("malformed API bodies get 400 {error} and the server stays up", async () => {
  const cases = [
    ["POST", "/api/broadcast", "{not json"],
    ["POST", "/api/broadcast", JSON.stringify({ topic: "room:x" })],
    ["POST", "/api/disconnect", "[]"],
  ]
  for (const [method, path, rawBody] of cases) {
    const res = await h.httpJson(server, method, path, undefined, { rawBody })
    assert.equal(res.status, 400, `${method} ${path} ${rawBody} → ${res.status} ${res.text}`)
    assert.equal(typeof res.json?.error, "string", `400 body must be {"error": "..."}; got ${res.text}`)
  }
  assert.equal((await h.healthz(server)).status, 200)
})

/**
 * What phoenix.js observes when the server ends its connection by socket id
 * (PROTOCOL.md §4.11, §5.11): over WebSocket a close frame with code 1001;
 * over LongPoll the session ends and the client's next poll is answered
 * {"status":410} (a new session), which phoenix.js reports as onError(410)
 * followed by close 3410 "session_gone". The pending poll may be held until
 * the end of the poll window, hence the longer deadline.
 */
async function expectForcedClose(socket, from, what) {
  if (socket.transportKind === "websocket") {
    const close = await socket.events.waitFor((e) => e.type === "close", what, { from })
    assert.equal(close.code, 1001, `close code: ${h.describe(close)}`)
    return close
  }
  const close = await socket.events.waitFor((e) => e.type === "close", what, { from, ms: h.SESSION_END_MS })
  assert.equal(close.code, 3410, `close: ${h.describe(close)}; events: ${socket.events.dump(from)}`)
  assert.equal(close.reason, "session_gone")
  const errors = socket.events.filter((e) => e.type === "error", from)
  assert.deepEqual(errors.map((e) => e.value), [410], `phoenix.js reports the poll status 410; events: ${socket.events.dump(from)}`)
  return close
}

h.forEachTransport((transport) => {
  test("POST /api/broadcast new_msg reaches subscribers through handle_out (transport added, own join ref)", async () => {
    const topic = h.uniq("room:http")
    const subs = []
    for (const params of [{ user_id: "h1" }, {}]) {
      const socket = await h.connectSocket(server, { transport, params })
      subs.push({ socket, channel: await h.joinRoom(socket, topic) })
    }
    const res = await h.apiBroadcast(server, topic, "new_msg", { body: "from http" })
    assert.equal(res.status, 200)
    assert.deepEqual(res.json, { ok: true })
    for (const [i, { socket, channel }] of subs.entries()) {
      const m = await socket.frames.waitFor((x) => x.topic === topic && x.event === "new_msg", `new_msg on subscriber ${i}`)
      assert.deepEqual(m, { join_ref: channel.joinRef(), ref: null, topic, event: "new_msg",
        payload: { body: "from http", transport } })
    }
  })

  test("POST /api/broadcast new_msg with to=h2 reaches only user h2", async () => {
    const topic = h.uniq("room:httpto")
    const subs = []
    for (const params of [{ user_id: "h1" }, { user_id: "h2" }, {}]) {
      const socket = await h.connectSocket(server, { transport, params })
      subs.push({ socket, channel: await h.joinRoom(socket, topic) })
    }
    assert.equal((await h.apiBroadcast(server, topic, "new_msg", { body: "dm", to: "h2" })).status, 200)
    const m = await subs[1].socket.frames.waitFor((x) => x.topic === topic && x.event === "new_msg", "new_msg on h2")
    assert.deepEqual(m.payload, { body: "dm", to: "h2", transport })
    for (const { channel } of subs) assert.equal((await h.pushChannel(channel, "echo", {})).status, "ok")
    await h.settle(50)
    for (const i of [0, 2]) {
      assert.deepEqual(subs[i].socket.frames.filter((x) => x.topic === topic && x.event === "new_msg"), [],
        `subscriber ${i} must not get new_msg addressed to h2`)
    }
  })

  test("POST /api/broadcast of a non-intercepted event arrives unchanged with join_ref null", async () => {
    const topic = h.uniq("room:httpraw")
    const socket = await h.connectSocket(server, { transport })
    const channel = await h.joinRoom(socket, topic)
    assert.equal((await h.apiBroadcast(server, topic, "announce", { x: 1, y: ["z"] })).status, 200)
    const m = await socket.frames.waitFor((x) => x.topic === topic && x.event === "announce", "announce broadcast")
    assert.deepEqual(m, { join_ref: null, ref: null, topic, event: "announce", payload: { x: 1, y: ["z"] } })
    const seen = await channel.seen.waitFor((e) => e.event === "announce", "channel.on(announce)")
    assert.deepEqual(seen.payload, { x: 1, y: ["z"] })
  })

  test("POST /api/broadcast to a bench topic delivers msg to subscribers", async () => {
    const topic = h.uniq("bench:http")
    const socket = await h.connectSocket(server, { transport })
    await h.joinOk(socket, topic)
    assert.equal((await h.apiBroadcast(server, topic, "msg", { k: "v" })).status, 200)
    const m = await socket.frames.waitFor((x) => x.topic === topic && x.event === "msg", "msg broadcast")
    assert.deepEqual(m.payload, { k: "v" })
  })

  test(transport === "websocket"
    ? "POST /api/disconnect closes that user's socket with 1001; it reconnects and rejoins; others unaffected"
    : "POST /api/disconnect ends that user's session (410, close 3410); it reconnects and rejoins; others unaffected", async () => {
    const uid = `dc-${transport}-${process.pid}`
    const topic = h.uniq("room:dc")
    const target = await h.connectSocket(server, { transport, params: { user_id: uid } })
    const anon = await h.connectSocket(server, { transport })
    const other = await h.connectSocket(server, { transport, params: { user_id: `${uid}-other` } })
    const tChan = await h.joinRoom(target, topic)
    const aChan = await h.joinRoom(anon, topic)
    const oChan = await h.joinRoom(other, topic)
    const firstJoinRef = tChan.joinRef()
    const evMark = target.events.mark()
    const frMark = target.frames.mark()

    const res = await h.apiDisconnect(server, `user_socket:${uid}`)
    assert.equal(res.status, 200)
    assert.deepEqual(res.json, { ok: true })

    await expectForcedClose(target, evMark, "close of the disconnected socket")
    await target.events.waitFor((e) => e.type === "open", "reconnect (second open)", { from: evMark })
    await target.frames.waitFor((m) => m.topic === topic && m.event === "phx_reply" && m.ref !== firstJoinRef &&
      m.ref === m.join_ref && m.payload.status === "ok", "ok reply to the rejoin", { from: frMark })
    const joined = await target.frames.waitFor((m) => m.topic === topic && m.event === "joined" && m.join_ref !== firstJoinRef,
      "joined push of the rejoin", { from: frMark })
    assert.deepEqual(joined.payload, { status: "connected", user_id: uid })
    await h.waitUntil(() => tChan.state === "joined", "rejoined channel state")
    assert.deepEqual(await h.pushChannel(tChan, "echo", { back: 1 }), { status: "ok", response: { back: 1 } })

    for (const [name, socket, chan] of [["anonymous", anon, aChan], ["other user", other, oChan]]) {
      assert.deepEqual(await h.pushChannel(chan, "echo", { name }), { status: "ok", response: { name } })
      assert.deepEqual(socket.events.filter((e) => e.type !== "open"), [], `${name} socket must not be closed`)
      assert.equal(socket.events.filter((e) => e.type === "open").length, 1, `${name} socket opened once`)
    }
  })

  test("POST /api/disconnect closes every socket of that id", async () => {
    const uid = `dc-many-${transport}-${process.pid}`
    const a = await h.connectSocket(server, { transport, params: { user_id: uid } })
    const b = await h.connectSocket(server, { transport, params: { user_id: uid } })
    const marks = [a.events.mark(), b.events.mark()]
    assert.equal((await h.apiDisconnect(server, `user_socket:${uid}`)).status, 200)
    await Promise.all([a, b].map((s, i) => expectForcedClose(s, marks[i], `close of socket ${i}`)))
  })

  test("POST /api/disconnect for an unknown id answers ok and closes nothing", async () => {
    const socket = await h.connectSocket(server, { transport, params: { user_id: `stay-${transport}` } })
    const channel = await h.joinRoom(socket, h.uniq("room:stay"))
    const res = await h.apiDisconnect(server, "user_socket:nobody-here")
    assert.equal(res.status, 200)
    assert.deepEqual(res.json, { ok: true })
    assert.equal((await h.pushChannel(channel, "echo", {})).status, "ok")
    assert.deepEqual(socket.events.filter((e) => e.type !== "open"), [])
  })
})
