// The Chat channel (chat:*) over each transport: permission check, every event broadcast as new_msg, no replies.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

h.forEachTransport((transport) => {
  test("join chat:secret is refused with {reason: You don't have permission!}", async () => {
    const socket = await h.connectSocket(server, { transport })
    const { channel, join } = await h.join(socket, "chat:secret")
    assert.deepEqual(join, { status: "error", response: { reason: "You don't have permission!" } })
    channel.leave()
  })

  test("join chat:lobby is ok with {}", async () => {
    const socket = await h.connectSocket(server, { transport })
    const { join } = await h.join(socket, h.uniq("chat:lobby"))
    assert.deepEqual(join, { status: "ok", response: {} })
  })

  test("a chat message is broadcast as new_msg unchanged to all members (sender included), with no reply", async () => {
    const topic = h.uniq("chat:room")
    const clients = []
    for (const params of [{ user_id: "c1" }, { user_id: "c2" }, {}]) {
      const socket = await h.connectSocket(server, { transport, params })
      clients.push({ socket, channel: await h.joinOk(socket, topic) })
    }
    // chat pushes never get a reply: a short push timeout is expected to fire
    const push = clients[0].channel.push("new_msg", { body: "hi chat", to: "nobody" }, 300)
    const ref = push.ref
    for (const [i, { socket, channel }] of clients.entries()) {
      const m = await socket.frames.waitFor((x) => x.topic === topic && x.event === "new_msg", `new_msg on member ${i}`)
      // pushed unchanged by handle_out: no transport key, no `to` filtering
      assert.deepEqual(m.payload, { body: "hi chat", to: "nobody" })
      assert.ok(m.join_ref === channel.joinRef() || m.join_ref === null, `join_ref: ${h.describe(m)}`)
    }
    assert.deepEqual(await h.replyOf(push), { status: "timeout", response: {} })
    assert.deepEqual(clients[0].socket.frames.filter((m) => m.ref === ref), [], "no reply frame for a chat push")
  })

  test("any chat event name is broadcast as new_msg", async () => {
    const topic = h.uniq("chat:any")
    const a = await h.connectSocket(server, { transport })
    const b = await h.connectSocket(server, { transport })
    await h.joinOk(a, topic)
    const cb = await h.joinOk(b, topic)
    const chanA = a.channels.find((c) => c.topic === topic)
    chanA.push("shout", { text: "HEY" }, 300)
    chanA.push("whisper", { text: "hey" }, 300)
    const got = await h.waitUntil(() => {
      const ms = cb.seen.filter((e) => e.event === "new_msg")
      return ms.length >= 2 && ms
    }, "two new_msg on the other member")
    assert.deepEqual(got.map((e) => e.payload), [{ text: "HEY" }, { text: "hey" }], "in order, unchanged")
  })
})
