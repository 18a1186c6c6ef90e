// Room handle_in over each transport: echo, error reply, noreply, unknown event, boom (crash), stop, leave.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

h.forEachTransport((transport) => {
  async function setup(params = {}) {
    const socket = await h.connectSocket(server, { transport, params })
    const topic = h.uniq("room:ev")
    const channel = await h.joinRoom(socket, topic)
    return { socket, topic, channel }
  }

  test("echo replies ok with the payload as received", async () => {
    const { channel } = await setup()
    const payload = { x: 1, s: "héllo ✓", list: [1, "two", null, { deep: true }], f: 1.5, empty: {} }
    assert.deepEqual(await h.pushChannel(channel, "echo", payload), { status: "ok", response: payload })
    assert.deepEqual(await h.pushChannel(channel, "echo", {}), { status: "ok", response: {} })
  })

  test("error replies error with {reason: requested}", async () => {
    const { channel } = await setup()
    assert.deepEqual(await h.pushChannel(channel, "error", {}), { status: "error", response: { reason: "requested" } })
  })

  test("noreply gets no reply at all: the push times out", async () => {
    const { socket, channel } = await setup()
    const push = channel.push("noreply", {}, 300)
    const ref = push.ref
    assert.deepEqual(await h.replyOf(push), { status: "timeout", response: {} })
    // barrier: the channel still answers, and nothing ever came for the noreply ref
    assert.equal((await h.pushChannel(channel, "echo", {})).status, "ok")
    assert.deepEqual(socket.frames.filter((m) => m.ref === ref), [], "no frame may carry the noreply push's ref")
  })

  test("an unknown event replies error with {reason: unknown event}", async () => {
    const { channel } = await setup()
    assert.deepEqual(await h.pushChannel(channel, "no_such_event", { a: 1 }),
      { status: "error", response: { reason: "unknown event" } })
  })

  test("boom: channel onError (phx_error channel_crash), sibling channel keeps working, errored channel rejoins", async () => {
    const { socket, topic, channel } = await setup()
    const sibling = await h.joinRoom(socket, h.uniq("room:sibling"))
    const firstJoinRef = channel.joinRef()

    const errored = h.nextCall((cb) => channel.onError(cb), "channel onError after boom")
    const mark = socket.frames.mark()
    const boomPush = channel.push("boom", {}, 1000)
    const boomRef = boomPush.ref
    const boomReply = h.replyOf(boomPush)
    const reason = await errored
    assert.deepEqual(reason, { reason: "channel_crash" }, "onError receives the phx_error payload")

    // raw frames: you_left (terminate) then phx_error with ref = join_ref = channel join ref
    const iErr = socket.frames.indexOf((m) => m.topic === topic && m.event === "phx_error", mark)
    assert.ok(iErr >= 0, `phx_error frame expected; frames:\n  ${socket.frames.dump(mark)}`)
    const err = socket.frames.items[iErr]
    assert.deepEqual(err, { join_ref: firstJoinRef, ref: firstJoinRef, topic, event: "phx_error", payload: { reason: "channel_crash" } })
    const iLeft = socket.frames.indexOf((m) => m.topic === topic && m.event === "you_left", mark)
    assert.ok(iLeft >= 0 && iLeft < iErr, `you_left must come before phx_error; frames:\n  ${socket.frames.dump(mark)}`)
    assert.deepEqual(socket.frames.items[iLeft].payload, { message: "bye!" })

    // the sibling channel on the same socket keeps working
    assert.deepEqual(await h.pushChannel(sibling, "echo", { sib: 1 }), { status: "ok", response: { sib: 1 } })
    assert.deepEqual(socket.events.filter((e) => e.type !== "open"), [], "the socket must not close")

    // the errored channel rejoins by itself with a new join ref
    await socket.frames.waitFor((m) => m.topic === topic && m.event === "phx_reply" &&
      m.ref !== firstJoinRef && m.ref === m.join_ref && m.payload.status === "ok",
    "ok reply to the automatic rejoin", { from: mark })
    await h.waitUntil(() => channel.state === "joined", "channel state joined after rejoin")
    assert.notEqual(channel.joinRef(), firstJoinRef)
    assert.deepEqual(await h.pushChannel(channel, "echo", { back: true }), { status: "ok", response: { back: true } })

    // the boom push itself never got a reply
    assert.equal((await boomReply).status, "timeout")
    assert.deepEqual(socket.frames.filter((m) => m.ref === boomRef && m.event === "phx_reply"), [],
      "no phx_reply for the boom push")
  })

  test("stop: reply ok, then channel onClose; raw order reply → phx_close → you_left", async () => {
    const { socket, topic, channel } = await setup()
    const joinRef = channel.joinRef()
    const closed = h.nextCall((cb) => channel.onClose(cb), "channel onClose after stop")
    const mark = socket.frames.mark()
    const push = channel.push("stop", {})
    const stopRef = push.ref
    assert.deepEqual(await h.replyOf(push), { status: "ok", response: {} })
    await closed
    assert.equal(channel.state, "closed")
    assert.ok(!socket.channels.includes(channel), "phoenix.js removed the channel")

    await socket.frames.waitFor((m) => m.topic === topic && m.event === "you_left", "you_left after stop", { from: mark })
    const seq = socket.frames.filter((m) => m.topic === topic, mark)
    assert.deepEqual(seq, [
      { join_ref: joinRef, ref: stopRef, topic, event: "phx_reply", payload: { status: "ok", response: {} } },
      { join_ref: joinRef, ref: joinRef, topic, event: "phx_close", payload: {} },
      { join_ref: joinRef, ref: null, topic, event: "you_left", payload: { message: "bye!" } },
    ])
  })

  test("leave: channel.leave() gets ok; raw frames show phx_close then you_left", async () => {
    const { socket, topic, channel } = await setup()
    const joinRef = channel.joinRef()
    const closed = h.nextCall((cb) => channel.onClose(cb), "channel onClose after leave")
    const mark = socket.frames.mark()
    const leavePush = channel.leave()
    const leaveRef = leavePush.ref
    assert.deepEqual(await h.replyOf(leavePush), { status: "ok", response: {} })
    await closed

    await socket.frames.waitFor((m) => m.topic === topic && m.event === "you_left", "you_left after leave", { from: mark })
    const seq = socket.frames.filter((m) => m.topic === topic, mark)
    assert.deepEqual(seq, [
      { join_ref: joinRef, ref: leaveRef, topic, event: "phx_reply", payload: { status: "ok", response: {} } },
      { join_ref: joinRef, ref: joinRef, topic, event: "phx_close", payload: {} },
      { join_ref: joinRef, ref: null, topic, event: "you_left", payload: { message: "bye!" } },
    ])

    // after the leave a new channel object on the same topic joins fresh
    const again = await h.joinRoom(socket, topic)
    assert.notEqual(again.joinRef(), joinRef)
    assert.deepEqual(await h.pushChannel(again, "echo", { again: 1 }), { status: "ok", response: { again: 1 } })
  })
})
