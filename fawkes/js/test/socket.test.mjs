// Socket and Channel behaviour the interop suite does not pin down: heartbeat
// timeout → close and reconnect, messages of an older join ref ignored, pushes
// buffered until joined, the built-in V1 serializer, URLs and refs, ping,
// replaceTransport.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import WebSocket, { WebSocketServer } from "ws"
import { Socket, LongPoll } from "../fawkes.js"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

const fast = { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50, timeout: 2000 }

/** A scripted WebSocket server: `onMessage(ws, msg)` gets each decoded V2 array. */
async function scriptedServer(onMessage = () => {}) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 })
  await new Promise((r) => wss.once("listening", r))
  const connections = new h.Inbox("scripted connections")
  const received = new h.Inbox("scripted frames")
  wss.on("connection", (ws, req) => {
    connections.add({ ws, url: req.url })
    ws.on("message", (data) => {
      const msg = JSON.parse(data.toString())
      received.add(msg)
      onMessage(ws, msg)
    })
  })
  h.onCleanup(() => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()) }))
  return { url: `ws://127.0.0.1:${wss.address().port}`, connections, received }
}

test("a heartbeat without reply closes the connection (1000 \"heartbeat timeout\"), errors the channels and reconnects", async () => {
  // joins are answered, heartbeats are not
  const fake = await scriptedServer((ws, [joinRef, ref, topic, event]) => {
    if (event === "phx_join") ws.send(JSON.stringify([joinRef, ref, topic, "phx_reply", { status: "ok", response: {} }]))
  })
  const socket = h.instrument(new Socket(`${fake.url}/socket`, { transport: WebSocket, heartbeatIntervalMs: 100, ...fast }))
  const channel = socket.channel("room:hb")
  const errors = new h.Inbox("channel errors")
  channel.onError((reason) => errors.add(reason))
  channel.join()
  socket.connect()
  await fake.received.waitFor((m) => m[3] === "heartbeat" && m[0] === null && m[2] === "phoenix", "a heartbeat")
  const closed = await socket.events.waitFor((e) => e.type === "close", "close on heartbeat timeout")
  assert.deepEqual([closed.code, closed.reason], [1000, "heartbeat timeout"])
  assert.deepEqual(await errors.waitFor(() => true, "channel error"), { source: "transport", reason: "heartbeat_timeout" })
  await fake.connections.waitFor(() => fake.connections.items.length >= 2, "a reconnect")
  // the channel rejoins on the new connection
  await fake.received.waitFor((m) => m[3] === "phx_join" && m[0] === channel.joinRef(), "rejoin")
})

test("messages carrying an older join ref of the topic are ignored; null join refs pass", async () => {
  let wsRef
  const fake = await scriptedServer((ws, [joinRef, ref, topic, event]) => {
    wsRef = ws
    if (event === "phx_join") ws.send(JSON.stringify([joinRef, ref, topic, "phx_reply", { status: "ok", response: {} }]))
  })
  const socket = h.instrument(new Socket(`${fake.url}/socket`, { transport: WebSocket, ...fast }))
  socket.connect()
  const channel = socket.channel("room:stale")
  const seen = new h.Inbox("seen")
  channel.on("ev", (payload) => seen.add(payload))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  const current = channel.joinRef()
  wsRef.send(JSON.stringify(["stale-ref", null, "room:stale", "ev", { n: 1 }]))
  wsRef.send(JSON.stringify([null, null, "room:stale", "ev", { n: 2 }]))
  wsRef.send(JSON.stringify([current, null, "room:stale", "ev", { n: 3 }]))
  await seen.waitFor((p) => p.n === 3, "the current join's message")
  assert.deepEqual(seen.items, [{ n: 2 }, { n: 3 }])
})

test("pushes made before the socket is open and the channel joined are sent after the join, in order", async () => {
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: WebSocket, ...fast }))
  const channel = socket.channel(h.uniq("room:buffer"))
  const join = h.replyOf(channel.join())
  const pushes = [1, 2, 3].map((i) => h.replyOf(channel.push("echo", { i })))
  assert.equal(channel.state, "joining")
  socket.connect()
  assert.equal((await join).status, "ok")
  assert.deepEqual((await Promise.all(pushes)).map((r) => r.response.i), [1, 2, 3])
  const order = socket.frames.items.filter((f) => f.topic === channel.topic && f.event === "phx_reply").map((f) => f.ref)
  assert.equal(order[0], channel.joinRef(), "the join is answered first")
})

for (const transport of [WebSocket, LongPoll]) test(`vsn 1.0.0 without custom encode/decode speaks V1 objects (${transport.name})`, async () => {
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport, vsn: "1.0.0", ...fast }))
  socket.connect()
  const channel = socket.channel(h.uniq("room:v1"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  assert.deepEqual(await h.replyOf(channel.push("echo", { v: 1 })), { status: "ok", response: { v: 1 } })
  assert.ok(socket.endPointURL().endsWith("vsn=1.0.0"))
  // V1 frames from the server have no join_ref
  const reply = socket.frames.items.find((f) => f.event === "phx_reply" && f.topic === channel.topic)
  assert.equal(reply.join_ref, null)
})

test("endPointURL, makeRef, protocol, channel list and callback refs", () => {
  const socket = new Socket("ws://h.test/socket", { transport: WebSocket, params: { user: { id: 1, name: "a b" }, skip: null } })
  assert.equal(socket.endPointURL(), "ws://h.test/socket/websocket?user%5Bid%5D=1&user%5Bname%5D=a%20b&vsn=2.0.0")
  assert.equal(socket.protocol(), "ws")
  const a = socket.makeRef()
  assert.equal(socket.makeRef(), String(Number(a) + 1))
  socket.ref = Number.MAX_SAFE_INTEGER
  assert.equal(socket.makeRef(), "0")
  const ref = socket.onOpen(() => {})
  assert.equal(typeof ref, "string")
  socket.off([ref])
  assert.equal(socket.stateChangeCallbacks.open.length, 0)
  const ch = socket.channel("room:x", { a: 1 })
  assert.deepEqual(socket.channels, [ch])
  assert.deepEqual(ch.params(), { a: 1 })
  assert.equal(ch.state, "closed")
  assert.equal(socket.isConnected(), false)
  assert.equal(socket.connectionState(), "closed")
  assert.throws(() => ch.push("x", {}), /before joining/)
})

test("ping reports a round trip; false when not connected", async () => {
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: WebSocket, ...fast }))
  assert.equal(socket.ping(() => {}), false)
  socket.connect()
  await socket.events.waitFor((e) => e.type === "open", "open")
  const rtt = await h.withTimeout(new Promise((r) => assert.equal(socket.ping(r), true)), 3000, "ping")
  assert.ok(rtt >= 0 && rtt < 3000)
})

test("replaceTransport: from WebSocket to LongPoll, the channels rejoin over the new transport", async () => {
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: WebSocket, ...fast }))
  socket.connect()
  const channel = socket.channel(h.uniq("room:replace"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  const first = channel.joinRef()
  const mark = socket.events.mark()
  socket.replaceTransport(LongPoll)
  socket.connect()
  await socket.events.waitFor((e) => e.type === "open", "open over LongPoll", { from: mark })
  assert.ok(socket.conn instanceof LongPoll)
  await socket.frames.waitFor((f) => f.event === "phx_reply" && f.ref === channel.joinRef() && f.ref !== first, "rejoin reply")
  assert.deepEqual(await h.replyOf(channel.push("echo", { lp: true })), { status: "ok", response: { lp: true } })
})

test("leave closes the channel and removes it from the socket", async () => {
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: WebSocket, ...fast }))
  socket.connect()
  const channel = socket.channel(h.uniq("room:leave"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  const closed = new Promise((r) => channel.onClose(r))
  assert.equal((await h.replyOf(channel.leave())).status, "ok")
  await h.withTimeout(closed, 1000, "onClose")
  assert.equal(channel.state, "closed")
  assert.deepEqual(socket.channels, [])
})
