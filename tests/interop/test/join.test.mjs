// Joining channels: ok, refused, crashing join, unmatched topic (over each transport).
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

h.forEachTransport((transport) => {
  test("join room:* is ok with an empty response and the reply carries ref = join_ref", async () => {
    const socket = await h.connectSocket(server, { transport })
    const topic = h.uniq("room:join")
    const { channel, join } = await h.join(socket, topic)
    assert.deepEqual(join, { status: "ok", response: {} })
    const frame = socket.frames.find((m) => m.topic === topic && m.event === "phx_reply")
    assert.equal(frame.ref, channel.joinRef())
    assert.equal(frame.join_ref, channel.joinRef())
  })

  test("join room:denied is refused with {reason: unauthorized}; no phx_close/phx_error follows", async () => {
    const socket = await h.connectSocket(server, { transport })
    const { channel, join } = await h.join(socket, "room:denied")
    assert.deepEqual(join, { status: "error", response: { reason: "unauthorized" } })
    const firstRef = channel.joinRef()
    const frame = socket.frames.find((m) => m.topic === "room:denied" && m.event === "phx_reply" && m.ref === firstRef)
    assert.equal(frame.join_ref, firstRef, "error reply echoes the join_ref")
    channel.leave() // stop phoenix.js from retrying the join

    // barrier: a round trip on another channel, then nothing else for room:denied
    const other = await h.joinOk(socket, h.uniq("room:after-denied"))
    assert.equal((await h.pushChannel(other, "echo", {})).status, "ok")
    await h.settle()
    const bad = socket.frames.filter((m) => m.topic === "room:denied" && (m.event === "phx_close" || m.event === "phx_error"))
    assert.deepEqual(bad, [], "a refused join must not be followed by phx_close/phx_error")
  })

  test("join room:join_crash gives {reason: join crashed} and the socket stays up", async () => {
    const socket = await h.connectSocket(server, { transport })
    const before = await h.joinOk(socket, h.uniq("room:before-crash"))
    const { channel, join } = await h.join(socket, "room:join_crash")
    assert.deepEqual(join, { status: "error", response: { reason: "join crashed" } })
    const frame = socket.frames.find((m) => m.topic === "room:join_crash" && m.event === "phx_reply")
    assert.equal(frame.join_ref, channel.joinRef(), "join crashed reply echoes the join_ref")
    channel.leave()

    // socket and the channel joined before still work; a new join works too
    assert.deepEqual(await h.pushChannel(before, "echo", { still: "alive" }), { status: "ok", response: { still: "alive" } })
    const after = await h.joinOk(socket, h.uniq("room:after-crash"))
    assert.deepEqual(await h.pushChannel(after, "echo", { n: 2 }), { status: "ok", response: { n: 2 } })
    assert.deepEqual(socket.events.filter((e) => e.type !== "open"), [], "no socket close/error")
  })

  test("join on an unrouted topic is refused with {reason: unmatched topic} and join_ref null", async () => {
    const socket = await h.connectSocket(server, { transport })
    const topic = h.uniq("nope:unrouted")
    const { channel, join } = await h.join(socket, topic)
    assert.deepEqual(join, { status: "error", response: { reason: "unmatched topic" } })
    const frame = socket.frames.find((m) => m.topic === topic && m.event === "phx_reply" && m.ref === channel.joinRef())
    assert.equal(frame.join_ref, null, "unmatched topic reply has join_ref null")
    channel.leave()
  })

  test("a push to a topic that was never joined gets unmatched topic (raw client), phx_leave there gets ok", async () => {
    const client = await h.rawConnect(server, { transport })
    const topic = h.uniq("room:never-joined")
    client.sendJson(["9", "30", topic, "new_msg", {}])
    assert.deepEqual(await client.waitForReply("30"),
      { join_ref: null, ref: "30", topic, event: "phx_reply", payload: { status: "error", response: { reason: "unmatched topic" } } })
    client.sendJson(["9", "31", topic, "phx_leave", {}])
    assert.deepEqual(await client.waitForReply("31"),
      { join_ref: "9", ref: "31", topic, event: "phx_reply", payload: { status: "ok", response: {} } })
  })
})
