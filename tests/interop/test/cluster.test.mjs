// A cluster of two conformance nodes over Redis (REDIS_URL, docs/CLUSTER.md)
// driven by the official phoenix.js client: broadcasts with handle_out on the
// receiving node, broadcast_from, phoenix.js's Presence seeing the union,
// forced disconnect from the other node, and LongPoll behind a proxy that
// sends each HTTP request to the next node in turn (no sticky sessions).
import { test, describe, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379"
// Presence gossip runs every 1.5 s: allow a few periods.
const CONVERGE_MS = 8000

let a, b, proxy
before(async () => {
  const namespace = h.uniq("interop-cluster")
  const args = ["--pubsub", REDIS_URL, "--pubsub-namespace", namespace]
  ;[a, b] = await Promise.all([
    h.startServer({ nodeName: "node-a", args }),
    h.startServer({ nodeName: "node-b", args }),
  ])
  proxy = await startRoundRobinProxy([a, b])
})
afterEach(() => h.closeAll())
after(async () => {
  await h.closeAll()
  await proxy?.close()
  await Promise.all([a?.stop(), b?.stop()])
})

/**
 * An HTTP proxy that sends each request to the next node in turn, as a load
 * balancer without sticky sessions would. `hits` counts requests per node.
 */
async function startRoundRobinProxy(nodes) {
  let next = 0
  const hits = nodes.map(() => 0)
  const proxy = await h.startHttpProxy(() => {
    const i = next++ % nodes.length
    hits[i]++
    return nodes[i]
  })
  return { ...proxy, hits }
}

describe("cluster of two nodes", () => {
  test("room new_msg from node A reaches node B's clients through B's handle_out, once", async () => {
    const topic = h.uniq("room:cluster")
    const onA = await h.connectSocket(a, { params: { user_id: "ann" } })
    const onB = await h.connectSocket(b, { params: { user_id: "bob" } })
    const bob = await h.joinOk(onB, topic)
    const bobLp = await h.joinOk(await h.connectSocket(b, { transport: "longpoll", params: { user_id: "bea" } }), topic)
    const ann = await h.joinOk(onA, topic)
    assert.deepEqual(await h.pushChannel(ann, "new_msg", { body: "hi" }), { status: "ok", response: {} })
    const seen = await bob.seen.waitFor((m) => m.event === "new_msg", "new_msg on node B")
    assert.deepEqual(seen.payload, { body: "hi", transport: "websocket" })
    const seenLp = await bobLp.seen.waitFor((m) => m.event === "new_msg", "new_msg on node B over LongPoll", { ms: h.SESSION_END_MS })
    assert.deepEqual(seenLp.payload, { body: "hi", transport: "longpoll" })
    // `to` filtering runs on B for B's subscribers.
    await h.pushChannel(ann, "new_msg", { body: "for bea", to: "bea" })
    await bobLp.seen.waitFor((m) => m.event === "new_msg" && m.payload.to === "bea", "the message to bea", { ms: h.SESSION_END_MS })
    await h.settle(300)
    assert.equal(bob.seen.filter((m) => m.event === "new_msg").length, 1, "bob: only the message for everyone, once")
    assert.equal(ann.seen.filter((m) => m.event === "new_msg" && m.payload.body === "hi").length, 1, "ann: her own message once")
  })

  test("new_msg_from reaches everyone on both nodes but the sender", async () => {
    const topic = h.uniq("room:from")
    const ann = await h.joinOk(await h.connectSocket(a, { params: { user_id: "ann" } }), topic)
    const amy = await h.joinOk(await h.connectSocket(a, { params: { user_id: "amy" } }), topic)
    const bob = await h.joinOk(await h.connectSocket(b, { params: { user_id: "bob" } }), topic)
    assert.equal((await h.pushChannel(ann, "new_msg_from", { body: "psst" })).status, "ok")
    await amy.seen.waitFor((m) => m.event === "new_msg" && m.payload.body === "psst", "amy (same node)")
    await bob.seen.waitFor((m) => m.event === "new_msg" && m.payload.body === "psst", "bob (other node)")
    await h.settle(300)
    assert.equal(ann.seen.filter((m) => m.event === "new_msg").length, 0, "the sender got nothing")
  })

  test("POST /api/broadcast on one node reaches both; /api/disconnect on B closes A's socket", async () => {
    const topic = h.uniq("room:api")
    const sa = await h.connectSocket(a, { params: { user_id: "zed" } })
    const za = await h.joinOk(sa, topic)
    const zb = await h.joinOk(await h.connectSocket(b, { params: { user_id: "yan" } }), topic)
    assert.deepEqual((await h.apiBroadcast(b, topic, "new_msg", { body: "from api" })).json, { ok: true })
    for (const ch of [za, zb]) await ch.seen.waitFor((m) => m.event === "new_msg" && m.payload.body === "from api", "the API broadcast")
    const from = sa.events.mark()
    assert.deepEqual((await h.apiDisconnect(b, "user_socket:zed")).json, { ok: true })
    const closed = await sa.events.waitFor((e) => e.type === "close", "zed's socket closed", { from })
    assert.equal(closed.code, 1001)
  })

  test("phoenix.js Presence on each node lists the users of both, and sees a leave on the other node", async () => {
    const topic = h.uniq("presence:cluster")
    const watch = async (server, user) => {
      const socket = await h.connectSocket(server, { params: { user_id: user } })
      const channel = h.recordChannel(socket.channel(topic, { device: user }))
      const presence = new h.Presence(channel)
      const syncs = new h.Inbox(`${user}'s presence`)
      presence.onSync(() => syncs.add(presence.list((key) => key).sort()))
      assert.equal((await h.joinChannel(channel)).status, "ok")
      return { socket, syncs }
    }
    const ann = await watch(a, "ann")
    const bob = await watch(b, "bob")
    const both = (keys) => h.describe(keys) === h.describe(["ann", "bob"])
    await ann.syncs.waitFor(both, "ann sees ann and bob", { ms: CONVERGE_MS })
    await bob.syncs.waitFor(both, "bob sees ann and bob", { ms: CONVERGE_MS })
    const union = (await h.httpJson(a, "GET", `/api/presence/${topic}`)).json
    assert.deepEqual(Object.keys(union).sort(), ["ann", "bob"], "GET /api/presence on A is the union")
    const from = ann.syncs.mark()
    await h.disconnectSocket(bob.socket)
    await ann.syncs.waitFor((keys) => h.describe(keys) === h.describe(["ann"]), "ann sees bob leave", { ms: CONVERGE_MS, from })
  })

  test("LongPoll without sticky sessions: every request goes to the next node, the session works", async () => {
    const topic = h.uniq("room:lp")
    const before = [...proxy.hits]
    const socket = await h.connectSocket(proxy, { transport: "longpoll", params: { user_id: "lp" } })
    const room = await h.joinOk(socket, topic)
    assert.deepEqual(await h.pushChannel(room, "echo", { n: 1 }), { status: "ok", response: { n: 1 } })
    assert.deepEqual(await h.pushChannel(room, "echo", { n: 2 }), { status: "ok", response: { n: 2 } })
    assert.deepEqual((await h.apiBroadcast(a, topic, "new_msg", { body: "to lp" })).json, { ok: true })
    const got = await room.seen.waitFor((m) => m.event === "new_msg", "the broadcast over LongPoll", { ms: h.SESSION_END_MS })
    assert.deepEqual(got.payload, { body: "to lp", transport: "longpoll" })
    const hits = proxy.hits.map((n, i) => n - before[i])
    assert.ok(hits[0] >= 2 && hits[1] >= 2, `requests reached both nodes: ${h.describe(hits)}`)
  })
})
