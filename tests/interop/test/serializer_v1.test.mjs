// The V1 serializer (vsn 1.0.0): JSON objects, no join_ref from the server.
//
// The phoenix.js tests run over WebSocket only: phoenix.js 1.8.16 ignores the
// `encode`/`decode` options when its transport is LongPoll (it always uses its
// V2 serializer there, and sends x-ndjson lines, which a server reads as V2),
// so phoenix.js cannot speak V1 over LongPoll. The raw-client tests at the end
// run over both transports.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

/** phoenix.js socket speaking V1; raw text frames received are kept in socket.rawV1. */
async function connectV1(params = {}) {
  const rawV1 = []
  const socket = await h.connectSocket(server, {
    vsn: "1.0.0",
    params,
    encode: (msg, callback) => callback(JSON.stringify({
      join_ref: msg.join_ref, ref: msg.ref, topic: msg.topic, event: msg.event, payload: msg.payload,
    })),
    decode: (raw, callback) => {
      rawV1.push(raw)
      callback(JSON.parse(raw))
    },
  })
  socket.rawV1 = rawV1
  return socket
}

function assertV1Shape(socket) {
  for (const raw of socket.rawV1) {
    assert.equal(typeof raw, "string", "V1 frames are text")
    const obj = JSON.parse(raw)
    assert.ok(obj && typeof obj === "object" && !Array.isArray(obj), `V1 frame must be a JSON object: ${raw}`)
    assert.deepEqual(Object.keys(obj).sort(), ["event", "payload", "ref", "topic"],
      `V1 server frames have exactly topic/event/payload/ref (no join_ref): ${raw}`)
  }
}

test("V1: join ok, joined push received, echo replies", async () => {
  const socket = await connectV1({ user_id: "v1user" })
  const topic = h.uniq("room:v1")
  const channel = await h.joinRoom(socket, topic)
  const joined = await channel.seen.waitFor((e) => e.event === "joined", "joined push over V1")
  assert.deepEqual(joined.payload, { status: "connected", user_id: "v1user" })
  assert.deepEqual(await h.pushChannel(channel, "echo", { v: 1, s: "ü" }), { status: "ok", response: { v: 1, s: "ü" } })
  assert.deepEqual(await h.pushChannel(channel, "error", {}), { status: "error", response: { reason: "requested" } })
  const replyFrame = socket.rawV1.map((r) => JSON.parse(r)).find((m) => m.event === "phx_reply" && m.topic === topic)
  assert.deepEqual(replyFrame, { topic, event: "phx_reply", payload: { status: "ok", response: {} }, ref: channel.joinRef() })
  assertV1Shape(socket)
})

test("V1: broadcasts between a V1 and a V2 client of the same topic, each in its own encoding", async () => {
  const topic = h.uniq("room:v1mix")
  const v1 = await connectV1({ user_id: "one" })
  const v2 = await h.connectSocket(server, { params: { user_id: "two" } })
  const c1 = await h.joinRoom(v1, topic)
  const c2 = await h.joinRoom(v2, topic)

  // V2 → both (intercepted new_msg via handle_out)
  assert.equal((await h.pushChannel(c2, "new_msg", { body: "from v2" })).status, "ok")
  const got1 = await c1.seen.waitFor((e) => e.event === "new_msg", "new_msg on the V1 client")
  assert.deepEqual(got1.payload, { body: "from v2", transport: "websocket" })
  await c2.seen.waitFor((e) => e.event === "new_msg", "new_msg on the V2 client")

  // V1 → both
  assert.equal((await h.pushChannel(c1, "new_msg", { body: "from v1" })).status, "ok")
  const got2 = await c2.seen.waitFor((e) => e.event === "new_msg" && e.payload.body === "from v1", "V1's new_msg on the V2 client")
  assert.deepEqual(got2.payload, { body: "from v1", transport: "websocket" })
  await c1.seen.waitFor((e) => e.event === "new_msg" && e.payload.body === "from v1", "V1's own new_msg")
  assertV1Shape(v1)
})

test("V1: bench broadcast (fast lane) reaches a V1 subscriber as {topic, event, payload, ref: null}", async () => {
  const topic = h.uniq("bench:v1")
  const v1 = await connectV1()
  const v2 = await h.connectSocket(server)
  await h.joinOk(v1, topic)
  const c2 = await h.joinOk(v2, topic)
  assert.equal((await h.pushChannel(c2, "broadcast", { n: 7 })).status, "ok")
  await h.waitUntil(() => v1.rawV1.some((r) => JSON.parse(r).event === "msg"), "msg on the V1 client")
  const raw = v1.rawV1.find((r) => JSON.parse(r).event === "msg")
  assert.deepEqual(JSON.parse(raw), { topic, event: "msg", payload: { n: 7 }, ref: null })
  assertV1Shape(v1)
})

test("V1: leave replies ok and closes the channel", async () => {
  const socket = await connectV1()
  const channel = await h.joinRoom(socket, h.uniq("room:v1leave"))
  const closed = h.nextCall((cb) => channel.onClose(cb), "onClose after V1 leave")
  assert.deepEqual(await h.replyOf(channel.leave()), { status: "ok", response: {} })
  await closed
  assertV1Shape(socket)
})

// Raw V1 clients over each transport. Over LongPoll a V1 client POSTs one
// message per request as the whole body (not x-ndjson, whose lines are V2 text
// or base64 binary: PROTOCOL.md §6.5).
h.forEachTransport((transport) => {
  test("no vsn parameter means V1 (raw client)", async () => {
    const client = await h.rawConnect(server, { transport, vsn: null })
    const topic = h.uniq("room:novsn")
    client.sendJson({ topic, event: "phx_join", payload: {}, ref: "1" })
    const reply = await client.frames.waitFor((f) => f.json && f.json.ref === "1", "V1 join reply")
    assert.deepEqual(reply.json, { topic, event: "phx_reply", payload: { status: "ok", response: {} }, ref: "1" })
    // the join carried no join_ref, so the classic V1 push without one is the matching one
    client.sendJson({ topic, event: "echo", payload: { a: [1] }, ref: "2" })
    const echo = await client.frames.waitFor((f) => f.json && f.json.ref === "2", "V1 echo reply")
    assert.deepEqual(echo.json, { topic, event: "phx_reply", payload: { status: "ok", response: { a: [1] } }, ref: "2" })
  })

  test("V1 raw: a join with a join_ref, then pushes with that join_ref; a leave ends with phx_close", async () => {
    const client = await h.rawConnect(server, { transport, vsn: "1.0.0" })
    const topic = h.uniq("room:v1raw")
    client.sendJson({ join_ref: "5", ref: "5", topic, event: "phx_join", payload: {} })
    const reply = await client.frames.waitFor((f) => f.json?.ref === "5", "V1 join reply")
    assert.deepEqual(reply.json, { topic, event: "phx_reply", payload: { status: "ok", response: {} }, ref: "5" })
    client.sendJson({ join_ref: "5", ref: "6", topic, event: "echo", payload: { b: 2 } })
    const echo = await client.frames.waitFor((f) => f.json?.ref === "6", "V1 echo reply")
    assert.deepEqual(echo.json, { topic, event: "phx_reply", payload: { status: "ok", response: { b: 2 } }, ref: "6" })
    client.sendJson({ join_ref: "5", ref: "7", topic, event: "phx_leave", payload: {} })
    const left = await client.frames.waitFor((f) => f.json?.ref === "7", "V1 leave reply")
    assert.deepEqual(left.json, { topic, event: "phx_reply", payload: { status: "ok", response: {} }, ref: "7" })
    const close = await client.frames.waitFor((f) => f.json?.event === "phx_close", "V1 phx_close")
    assert.deepEqual(close.json, { topic, event: "phx_close", payload: {}, ref: "5" })
  })

  test("V1 raw: an intercepted new_msg from a phoenix.js V2 client arrives as {topic, event, payload, ref: null}", async () => {
    const topic = h.uniq("room:v1rawmix")
    const client = await h.rawConnect(server, { transport, vsn: "1.0.0", params: { user_id: "v1raw" } })
    client.sendJson({ join_ref: "1", ref: "1", topic, event: "phx_join", payload: {} })
    const reply = await client.frames.waitFor((f) => f.json?.ref === "1", "V1 join reply")
    assert.deepEqual(reply.json, { topic, event: "phx_reply", payload: { status: "ok", response: {} }, ref: "1" })
    const joined = await client.frames.waitFor((f) => f.json?.event === "joined", "V1 joined push")
    assert.deepEqual(joined.json, { topic, event: "joined", payload: { status: "connected", user_id: "v1raw" }, ref: null })

    const v2 = await h.connectSocket(server, { transport })
    const c2 = await h.joinRoom(v2, topic)
    assert.equal((await h.pushChannel(c2, "new_msg", { body: "to v1" })).status, "ok")
    const msg = await client.frames.waitFor((f) => f.json?.event === "new_msg", "new_msg on the raw V1 client")
    assert.deepEqual(msg.json, { topic, event: "new_msg", payload: { body: "to v1", transport }, ref: null })
    for (const f of client.frames.items) {
      assert.deepEqual(Object.keys(f.json ?? {}).sort(), ["event", "payload", "ref", "topic"],
        `V1 server frames have exactly topic/event/payload/ref: ${f.text}`)
    }
  })
})
