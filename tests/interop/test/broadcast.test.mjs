// Broadcasts between clients of one transport: intercepted new_msg (handle_out),
// broadcast_from, `to` filtering, and the bench fast lane. (Clients of both
// transports in one room: longpoll.test.mjs.)
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

h.forEachTransport((transport) => {
  /** Three sockets (u1, u2, anonymous) joined to the same fresh topic. */
  async function threeClients(prefix = "room:bc") {
    const topic = h.uniq(prefix)
    const clients = []
    for (const params of [{ user_id: "u1" }, { user_id: "u2" }, {}]) {
      const socket = await h.connectSocket(server, { transport, params })
      const channel = await h.joinRoom(socket, topic)
      clients.push({ socket, channel, params })
    }
    return { topic, clients }
  }

  /** Round trip on every client, so anything already sent to them has arrived. */
  async function barrier(clients) {
    for (const { channel } of clients) {
      assert.equal((await h.pushChannel(channel, "echo", { barrier: true })).status, "ok")
    }
    await h.settle(50)
  }

  test(`new_msg reaches all 3 clients (sender included) with transport ${transport} added`, async () => {
    const { topic, clients } = await threeClients()
    const marks = clients.map((c) => c.socket.frames.mark())
    const push = clients[0].channel.push("new_msg", { body: "hello all" })
    const ref = push.ref
    assert.deepEqual(await h.replyOf(push), { status: "ok", response: {} })

    for (const [i, { socket, channel }] of clients.entries()) {
      const msg = await socket.frames.waitFor((m) => m.topic === topic && m.event === "new_msg",
        `new_msg on client ${i}`, { from: marks[i] })
      assert.deepEqual(msg.payload, { body: "hello all", transport }, `client ${i} payload`)
      assert.equal(msg.join_ref, channel.joinRef(), `client ${i}: handle_out push carries its own join ref`)
      assert.equal(msg.ref, null)
      const seen = await channel.seen.waitFor((e) => e.event === "new_msg", `channel.on(new_msg) on client ${i}`)
      assert.deepEqual(seen.payload, { body: "hello all", transport })
    }
    // intercepted: the sender sees its reply before its own copy
    const f = clients[0].socket.frames
    const iReply = f.indexOf((m) => m.ref === ref && m.event === "phx_reply", marks[0])
    const iMsg = f.indexOf((m) => m.topic === topic && m.event === "new_msg", marks[0])
    assert.ok(iReply >= 0 && iReply < iMsg, `sender: phx_reply must precede its new_msg; frames:\n  ${f.dump(marks[0])}`)

    await barrier(clients)
    for (const [i, { socket }] of clients.entries()) {
      assert.equal(socket.frames.filter((m) => m.topic === topic && m.event === "new_msg", marks[i]).length, 1,
        `client ${i} gets exactly one new_msg`)
    }
  })

  test("new_msg_from reaches the other two clients but not the sender", async () => {
    const { topic, clients } = await threeClients()
    const marks = clients.map((c) => c.socket.frames.mark())
    assert.deepEqual(await h.pushChannel(clients[0].channel, "new_msg_from", { body: "not for me" }),
      { status: "ok", response: {} })
    for (const i of [1, 2]) {
      const msg = await clients[i].socket.frames.waitFor((m) => m.topic === topic && m.event === "new_msg",
        `new_msg on client ${i}`, { from: marks[i] })
      assert.deepEqual(msg.payload, { body: "not for me", transport })
    }
    await barrier(clients)
    assert.deepEqual(clients[0].socket.frames.filter((m) => m.topic === topic && m.event === "new_msg", marks[0]), [],
      "the sender must not receive its own broadcast_from")
  })

  test("new_msg with to=u2 is delivered only to the socket with user_id u2", async () => {
    const { topic, clients } = await threeClients()
    const marks = clients.map((c) => c.socket.frames.mark())
    assert.deepEqual(await h.pushChannel(clients[0].channel, "new_msg", { body: "psst", to: "u2" }),
      { status: "ok", response: {} })
    const msg = await clients[1].socket.frames.waitFor((m) => m.topic === topic && m.event === "new_msg",
      "new_msg on u2", { from: marks[1] })
    assert.deepEqual(msg.payload, { body: "psst", to: "u2", transport })
    await barrier(clients)
    for (const i of [0, 2]) {
      assert.deepEqual(clients[i].socket.frames.filter((m) => m.topic === topic && m.event === "new_msg", marks[i]), [],
        `client ${i} (${JSON.stringify(clients[i].params)}) must not receive a new_msg addressed to u2`)
    }
  })

  test("user_entered from a new joiner reaches the members already joined", async () => {
    const { topic, clients } = await threeClients()
    const marks = clients.map((c) => c.socket.frames.mark())
    const late = await h.connectSocket(server, { transport })
    await h.joinRoom(late, topic, { user: "latecomer" })
    for (const [i, { socket }] of clients.entries()) {
      const m = await socket.frames.waitFor((x) => x.topic === topic && x.event === "user_entered" &&
        x.payload?.user === "latecomer", `user_entered {user: latecomer} on client ${i}`, { from: marks[i] })
      assert.deepEqual(m, { join_ref: null, ref: null, topic, event: "user_entered", payload: { user: "latecomer" } })
    }
  })

  test("bench:* broadcast: msg reaches every subscriber (fast lane, join_ref null), sender sees msg before its reply", async () => {
    const topic = h.uniq("bench:bc")
    const clients = []
    for (let i = 0; i < 3; i++) {
      const socket = await h.connectSocket(server, { transport, params: { user_id: `b${i}` } })
      clients.push({ socket, channel: await h.joinOk(socket, topic) })
    }
    const marks = clients.map((c) => c.socket.frames.mark())
    const payload = { n: 1, data: "x".repeat(64) }
    const push = clients[0].channel.push("broadcast", payload)
    const ref = push.ref
    assert.deepEqual(await h.replyOf(push), { status: "ok", response: {} })
    for (const [i, { socket, channel }] of clients.entries()) {
      const m = await socket.frames.waitFor((x) => x.topic === topic && x.event === "msg", `msg on client ${i}`, { from: marks[i] })
      assert.deepEqual(m, { join_ref: null, ref: null, topic, event: "msg", payload })
      const seen = await channel.seen.waitFor((e) => e.event === "msg", `channel.on(msg) on client ${i}`)
      assert.deepEqual(seen.payload, payload)
    }
    const f = clients[0].socket.frames
    const iMsg = f.indexOf((m) => m.topic === topic && m.event === "msg", marks[0])
    const iReply = f.indexOf((m) => m.ref === ref && m.event === "phx_reply", marks[0])
    assert.ok(iMsg >= 0 && iMsg < iReply, `sender: msg (not intercepted) must precede the phx_reply; frames:\n  ${f.dump(marks[0])}`)
  })

  test("bench:* ping replies with the payload as received", async () => {
    const socket = await h.connectSocket(server, { transport })
    const channel = await h.joinOk(socket, h.uniq("bench:ping"))
    assert.deepEqual(await h.pushChannel(channel, "ping", { t: 123, s: "abc" }), { status: "ok", response: { t: 123, s: "abc" } })
  })
})
