// Serializer unit tests: V2 JSON, V2 binary frames byte-exact with the worked
// examples of PROTOCOL.md §2.3, V1 objects, the 255-byte field limit.
import { test } from "node:test"
import assert from "node:assert/strict"
import { Serializer } from "../fawkes.js"
import { hex, fromHex } from "./support.mjs"

const enc = (msg) => { let out; Serializer.encode(msg, (r) => { out = r }); return out }
const dec = (raw) => { let out; Serializer.decode(raw, (r) => { out = r }); return out }
const text = (buf) => new TextDecoder().decode(buf)
const bytes = (s) => new TextEncoder().encode(s).buffer

// PROTOCOL.md §2.3 worked examples
const CLIENT_PUSH = "00 01 01 0A 06 33 39 72 6F 6F 6D 3A 6C 6F 62 62 79 62 69 6E 61 72 79 68 65 6C 6C 6F"
const REPLY = "01 01 01 0A 02 33 39 72 6F 6F 6D 3A 6C 6F 62 62 79 6F 6B 68 65 6C 6C 6F 20 77 6F 72 6C 64"
const SERVER_PUSH = "00 01 0A 04 33 72 6F 6F 6D 3A 6C 6F 62 62 79 62 6C 6F 62 00 01"
const BROADCAST = "02 0A 04 72 6F 6F 6D 3A 6C 6F 62 62 79 62 6C 6F 62 00 01"
const norm = (s) => s.replace(/\s+/g, "").toLowerCase()

test("V2 JSON: a message is the array [join_ref, ref, topic, event, payload]", () => {
  assert.equal(enc({ join_ref: "3", ref: "3", topic: "room:lobby", event: "phx_join", payload: { user: "ann" } }),
    '["3","3","room:lobby","phx_join",{"user":"ann"}]')
  assert.equal(enc({ join_ref: null, ref: "7", topic: "phoenix", event: "heartbeat", payload: {} }), '[null,"7","phoenix","heartbeat",{}]')
  assert.deepEqual(dec('["3",null,"room:lobby","joined",{"status":"connected","user_id":null}]'),
    { join_ref: "3", ref: null, topic: "room:lobby", event: "joined", payload: { status: "connected", user_id: null } })
})

test("V2 binary encode: the client push of §2.3 is byte-exact (28 bytes)", () => {
  const out = enc({ join_ref: "3", ref: "9", topic: "room:lobby", event: "binary", payload: bytes("hello") })
  assert.ok(out instanceof ArrayBuffer)
  assert.equal(out.byteLength, 28)
  assert.equal(hex(out), norm(CLIENT_PUSH))
})

test("V2 binary encode accepts typed arrays (views) and empty payloads; null refs are empty fields", () => {
  const view = new Uint8Array([9, 9, 104, 101, 108, 108, 111, 9]).subarray(2, 7)
  assert.equal(hex(enc({ join_ref: "3", ref: "9", topic: "room:lobby", event: "binary", payload: view })), norm(CLIENT_PUSH))
  const empty = enc({ join_ref: null, ref: null, topic: "t", event: "e", payload: new ArrayBuffer(0) })
  assert.equal(hex(empty), "00000001017465")
})

test("V2 binary decode: reply (kind 1), server push (kind 0), broadcast (kind 2) of §2.3", () => {
  const reply = dec(fromHex(REPLY))
  assert.equal(reply.join_ref, "3")
  assert.equal(reply.ref, "9")
  assert.equal(reply.topic, "room:lobby")
  assert.equal(reply.event, "phx_reply")
  assert.equal(reply.payload.status, "ok")
  assert.ok(reply.payload.response instanceof ArrayBuffer)
  assert.equal(text(reply.payload.response), "hello world")

  const push = dec(fromHex(SERVER_PUSH))
  assert.deepEqual({ ...push, payload: hex(push.payload) }, { join_ref: "3", ref: null, topic: "room:lobby", event: "blob", payload: "0001" })

  const bc = dec(fromHex(BROADCAST))
  assert.deepEqual({ ...bc, payload: hex(bc.payload) }, { join_ref: null, ref: null, topic: "room:lobby", event: "blob", payload: "0001" })
})

test("V2 binary decode works on Node Buffers (views) too, and the payload owns only its bytes", () => {
  const b = Buffer.from(norm(BROADCAST), "hex")
  const bc = dec(new Uint8Array(b))
  assert.equal(bc.payload.byteLength, 2)
})

test("V2 binary decode rejects unknown kinds and truncated headers", () => {
  assert.throws(() => dec(fromHex("03 00")), /unknown kind 3/)
  assert.throws(() => dec(fromHex("02 0A 04 72 6F")), /header longer than the frame/)
})

test("V2 binary encode: string fields are limited to 255 bytes (UTF-8 bytes, not UTF-16 units)", () => {
  const ok = "é".repeat(127) // 254 bytes
  assert.doesNotThrow(() => enc({ join_ref: "1", ref: "2", topic: ok, event: "e", payload: new ArrayBuffer(1) }))
  assert.throws(() => enc({ join_ref: "1", ref: "2", topic: "é".repeat(128), event: "e", payload: new ArrayBuffer(1) }),
    /topic .* 255 bytes, but is 256 bytes/)
})

test("V1: objects with topic/event/payload/ref (and join_ref); decode of server objects without join_ref", () => {
  let out
  Serializer.V1.encode({ join_ref: "1", ref: "2", topic: "room:a", event: "echo", payload: { x: 1 } }, (r) => { out = r })
  assert.deepEqual(JSON.parse(out), { topic: "room:a", event: "echo", payload: { x: 1 }, ref: "2", join_ref: "1" })
  Serializer.V1.decode('{"topic":"room:a","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}', (r) => { out = r })
  assert.deepEqual(out, { join_ref: null, ref: "2", topic: "room:a", event: "phx_reply", payload: { status: "ok", response: {} } })
  assert.throws(() => Serializer.V1.encode({ join_ref: "1", ref: "2", topic: "t", event: "e", payload: new ArrayBuffer(1) }, () => {}), /binary/)
})
