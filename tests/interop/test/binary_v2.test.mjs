// V2 binary frames: phoenix.js ArrayBuffer pushes and the byte layout of §2.3.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

test("binary push with ArrayBuffer \"hello\" gets an ok reply with ArrayBuffer \"hello world\"", async () => {
  const socket = await h.connectSocket(server)
  const channel = await h.joinRoom(socket, h.uniq("room:bin"))
  const reply = await h.pushChannel(channel, "binary", h.ab("hello"))
  assert.equal(reply.status, "ok", `reply: ${h.describe(reply)}`)
  assert.ok(reply.response instanceof ArrayBuffer, `response must be an ArrayBuffer, got ${h.describe(reply.response)}`)
  assert.equal(h.abText(reply.response), "hello world")
})

test("binary round trip keeps arbitrary bytes (including 0x00 and 0xff) and the empty payload", async () => {
  const socket = await h.connectSocket(server)
  const channel = await h.joinRoom(socket, h.uniq("room:bin"))
  const bytes = new Uint8Array([0, 1, 2, 0xff, 0xfe, 0x80, 0x7f, 10, 13])
  const reply = await h.pushChannel(channel, "binary", bytes.slice().buffer)
  assert.equal(reply.status, "ok")
  assert.deepEqual([...new Uint8Array(reply.response)], [...bytes, ...Buffer.from(" world")])

  const empty = await h.pushChannel(channel, "binary", new ArrayBuffer(0))
  assert.equal(empty.status, "ok")
  assert.equal(h.abText(empty.response), " world")
})

test("binary frames on the wire match the worked example of PROTOCOL.md §2.3 (raw ws)", async () => {
  const client = await h.rawConnect(server)
  client.sendJson(["3", "3", "room:lobby", "phx_join", {}])
  const joinReply = await client.waitForReply("3")
  assert.equal(joinReply.payload.status, "ok")

  const push = Buffer.from("00 01 01 0A 06 33 39 72 6F 6F 6D 3A 6C 6F 62 62 79 62 69 6E 61 72 79 68 65 6C 6C 6F".replace(/ /g, ""), "hex")
  const expected = Buffer.from("01 01 01 0A 02 33 39 72 6F 6F 6D 3A 6C 6F 62 62 79 6F 6B 68 65 6C 6C 6F 20 77 6F 72 6C 64".replace(/ /g, ""), "hex")
  assert.equal(push.length, 28)
  client.sendRaw(push, { binary: true })
  const frame = await client.frames.waitFor((f) => f.binary, "binary reply frame")
  assert.equal(frame.binary.toString("hex"), expected.toString("hex"))
})

test("the binary push does not disturb JSON traffic on the same channel", async () => {
  const socket = await h.connectSocket(server)
  const channel = await h.joinRoom(socket, h.uniq("room:bin"))
  const [a, b, c] = await Promise.all([
    h.pushChannel(channel, "echo", { before: 1 }),
    h.pushChannel(channel, "binary", h.ab("mixed")),
    h.pushChannel(channel, "echo", { after: 2 }),
  ])
  assert.deepEqual(a, { status: "ok", response: { before: 1 } })
  assert.equal(b.status, "ok")
  assert.equal(h.abText(b.response), "mixed world")
  assert.deepEqual(c, { status: "ok", response: { after: 2 } })
})
