// Duplicate join of a topic on one socket (raw client: ws frames, or LongPoll requests).
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

h.forEachTransport((transport) => {
  test("joining a joined topic again: new join's reply, then phx_close with the old join ref, old terminate silent", async () => {
    const client = await h.rawConnect(server, { transport, params: { user_id: "dup" } })
    const topic = h.uniq("room:dup")
    client.sendJson(["3", "3", topic, "phx_join", {}])
    assert.deepEqual(await client.waitForReply("3"),
      { join_ref: "3", ref: "3", topic, event: "phx_reply", payload: { status: "ok", response: {} } })
    await client.waitForMsg((m) => m.event === "joined" && m.join_ref === "3", "joined push for join 3")

    const mark = client.frames.mark()
    client.sendJson(["20", "20", topic, "phx_join", {}])
    const reply = await client.waitForMsg((m) => m.ref === "20", "reply to the second join", { from: mark })
    assert.deepEqual(reply, { join_ref: "20", ref: "20", topic, event: "phx_reply", payload: { status: "ok", response: {} } })
    await client.waitForMsg((m) => m.event === "phx_close", "phx_close for the old join", { from: mark })
    await client.waitForMsg((m) => m.event === "joined" && m.join_ref === "20", "joined push for join 20", { from: mark })

    // barrier: a round trip on the new join
    client.sendJson(["20", "21", topic, "echo", { b: 1 }])
    assert.deepEqual((await client.waitForReply("21", { from: mark })).payload, { status: "ok", response: { b: 1 } })

    const msgs = client.frames.items.slice(mark).filter((f) => Array.isArray(f.json)).map((f) => h.toMsg(f.json))
    const dump = msgs.map(h.describe).join("\n  ")
    const iReply = msgs.findIndex((m) => m.event === "phx_reply" && m.ref === "20")
    const closes = msgs.filter((m) => m.event === "phx_close")
    assert.deepEqual(closes, [{ join_ref: "3", ref: "3", topic, event: "phx_close", payload: {} }],
      `exactly one phx_close, for the old join ref; frames:\n  ${dump}`)
    const iClose = msgs.findIndex((m) => m.event === "phx_close")
    const iJoined = msgs.findIndex((m) => m.event === "joined" && m.join_ref === "20")
    assert.ok(iReply < iClose, `new reply must precede the old phx_close; frames:\n  ${dump}`)
    assert.ok(iClose < iJoined, `old phx_close must precede the new channel's joined push; frames:\n  ${dump}`)
    assert.deepEqual(msgs.filter((m) => m.event === "you_left"), [],
      `the replaced channel's terminate must not push you_left; frames:\n  ${dump}`)
    assert.deepEqual(msgs.filter((m) => m.event === "phx_error"), [], "no phx_error")
  })

  test("after a duplicate join, messages with the old join ref are dropped and the new join ref works", async () => {
    const client = await h.rawConnect(server, { transport })
    const topic = h.uniq("room:dup")
    client.sendJson(["1", "1", topic, "phx_join", {}])
    await client.waitForReply("1")
    client.sendJson(["2", "2", topic, "phx_join", {}])
    await client.waitForReply("2")
    const mark = client.frames.mark()
    client.sendJson(["1", "5", topic, "echo", { stale: true }])
    client.sendJson(["2", "6", topic, "echo", { fresh: true }])
    assert.deepEqual(await client.waitForReply("6", { from: mark }),
      { join_ref: "2", ref: "6", topic, event: "phx_reply", payload: { status: "ok", response: { fresh: true } } })
    await h.settle(50)
    assert.equal(client.frames.find((f) => Array.isArray(f.json) && f.json[1] === "5", mark), undefined,
      "a message with a stale join_ref gets no reply")
  })
})
