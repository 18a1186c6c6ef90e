// Abusive raw frames: the offending connection is closed by the server, the
// server stays healthy and an already-joined phoenix.js client keeps working.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

const MiB = 1024 * 1024

/**
 * Join a phoenix.js bystander, open a raw connection (optionally joined),
 * send the abuse, then check: the server closes the raw connection (with
 * `expectCode` if given), /healthz answers 200 and the bystander still echoes.
 */
async function abuse(send, { expectCode, joinFirst = true } = {}) {
  const bystander = await h.connectSocket(server, { params: { user_id: "bystander" } })
  const topic = h.uniq("room:abuse")
  const channel = await h.joinRoom(bystander, topic)

  const client = await h.rawConnect(server)
  if (joinFirst) {
    client.sendJson(["1", "1", topic, "phx_join", {}])
    assert.equal((await client.waitForReply("1")).payload.status, "ok")
  }
  send(client)
  const closed = await h.withTimeout(client.closed, 5000, "the server to close the offending connection")
  if (expectCode !== undefined) {
    assert.equal(closed.code, expectCode, `close code (reason ${JSON.stringify(closed.reason)})`)
  }

  const health = await h.healthz(server)
  assert.equal(health.status, 200, "/healthz after the abuse")
  assert.deepEqual(await h.pushChannel(channel, "echo", { after: "abuse" }),
    { status: "ok", response: { after: "abuse" } }, "bystander echo after the abuse")
  assert.deepEqual(bystander.events.filter((e) => e.type !== "open"), [], "the bystander socket was not closed")
  return closed
}

test("malformed JSON text frame: connection closed, server and other clients fine", async () => {
  await abuse((c) => c.sendRaw('["1","2","room:x","echo",{"a":', { binary: false }))
})

test("JSON frame of the wrong shape (object instead of V2 array): connection closed", async () => {
  await abuse((c) => c.sendJson({ topic: "room:x", event: "echo", payload: {}, ref: "2" }))
})

test("JSON frame of the wrong shape (array of 3 elements): connection closed", async () => {
  await abuse((c) => c.sendJson(["1", "2", "room:x"]))
})

test("JSON frame of the wrong shape (a bare number): connection closed", async () => {
  await abuse((c) => c.sendRaw("42", { binary: false }))
})

test("oversized text frame (> 1 MiB): connection closed with 1009", async () => {
  await abuse((c) => c.sendJson(["1", "2", "room:x", "echo", { pad: "a".repeat(MiB + 1024) }]), { expectCode: 1009 })
})

test("oversized binary frame (> 1 MiB): connection closed with 1009", async () => {
  await abuse((c) => {
    const header = Buffer.from([0, 1, 1, 6, 6, ...Buffer.from("12room:xbinary")])
    c.sendRaw(Buffer.concat([header, Buffer.alloc(MiB + 1024, 0x61)]), { binary: true })
  }, { expectCode: 1009 })
})

test("binary frame with an unknown kind byte: connection closed", async () => {
  await abuse((c) => c.sendRaw(Buffer.from([0x07, 1, 1, 6, 4, ...Buffer.from("12room:xecho"), 1, 2, 3]), { binary: true }))
})

test("binary frame of a server-only kind (reply, 0x01) from the client: connection closed", async () => {
  await abuse((c) => c.sendRaw(Buffer.from([0x01, 1, 1, 6, 2, ...Buffer.from("12room:xok"), 1]), { binary: true }))
})

test("binary frame whose header is longer than the frame: connection closed", async () => {
  await abuse((c) => c.sendRaw(Buffer.from([0x00, 50, 50, 50, 50, 0x31]), { binary: true }))
})

test("text frame with invalid UTF-8 bytes: connection closed", async () => {
  const closed = await abuse((c) => c.sendRaw(Buffer.from([0x5b, 0x22, 0xff, 0xfe, 0xc3, 0x28, 0x22, 0x5d]), { binary: false }))
  // RFC 6455 §8.1 asks for 1007; 1006 (abrupt close) is tolerated, as Phoenix may drop the TCP connection.
  assert.ok([1007, 1006, 1002, 1011].includes(closed.code), `close code ${closed.code}`)
})

test("abuse on a connection that joined nothing: connection closed, server fine", async () => {
  await abuse((c) => c.sendRaw("}{", { binary: false }), { joinFirst: false })
})

test("a long-lived client joined before several abusive connections still echoes after all of them", async () => {
  const veteran = await h.connectSocket(server, { params: { user_id: "veteran" } })
  const channel = await h.joinRoom(veteran, h.uniq("room:veteran"))
  const abusive = [
    (c) => c.sendRaw("not json", { binary: false }),
    (c) => c.sendJson([1]),
    (c) => c.sendRaw(Buffer.from([0xee]), { binary: true }),
    (c) => c.sendRaw(Buffer.from([0xc0, 0xaf]), { binary: false }),
  ]
  for (const send of abusive) {
    const c = await h.rawConnect(server)
    send(c)
    await h.withTimeout(c.closed, 5000, "server closing the abusive connection")
  }
  assert.deepEqual(await h.pushChannel(channel, "echo", { survived: 4 }), { status: "ok", response: { survived: 4 } })
  assert.equal((await h.healthz(server)).status, 200)
})
