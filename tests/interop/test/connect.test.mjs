// Socket connect: params, refusals (reject=true, bearer token), accepted tokens.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

const bearer = (token) => `base64url.bearer.phx.${btoa(token).replace(/=/g, "")}`

/** Wait for `n` connection errors of a socket that must never open. */
async function expectNeverOpens(socket, n = 2) {
  socket.connect()
  for (let i = 1; i <= n; i++) {
    await waitNth(socket.events, (e) => e.type === "error", i, `connection error #${i}`)
  }
  const opens = socket.events.filter((e) => e.type === "open")
  assert.equal(opens.length, 0, `socket must never open, events: ${socket.events.dump()}`)
  assert.equal(socket.isConnected(), false)
}

async function waitNth(inbox, pred, n, what) {
  return h.waitUntil(() => inbox.filter(pred).length >= n, what)
}

test("connect with user_id param: the joined push carries user_id, user_entered carries the join param user", async () => {
  const socket = await h.connectSocket(server, { params: { user_id: "u42" } })
  const topic = h.uniq("room:connect")
  const channel = h.recordChannel(socket.channel(topic, { user: "ann" }))
  const reply = await h.joinChannel(channel)
  assert.deepEqual(reply, { status: "ok", response: {} })

  const joined = await channel.seen.waitFor((e) => e.event === "joined", "joined push")
  assert.deepEqual(joined.payload, { status: "connected", user_id: "u42" })
  const entered = await channel.seen.waitFor((e) => e.event === "user_entered", "user_entered broadcast")
  assert.deepEqual(entered.payload, { user: "ann" })

  // wire details: join reply first, push carries the join ref, broadcast carries null
  const joinRef = channel.joinRef()
  const f = socket.frames
  const iReply = f.indexOf((m) => m.topic === topic && m.event === "phx_reply" && m.ref === joinRef)
  const iJoined = f.indexOf((m) => m.topic === topic && m.event === "joined")
  const iEntered = f.indexOf((m) => m.topic === topic && m.event === "user_entered")
  assert.ok(iReply >= 0 && iReply < iJoined && iReply < iEntered,
    `join reply must precede post-join frames; frames:\n  ${f.dump()}`)
  assert.equal(f.items[iReply].join_ref, joinRef, "join reply join_ref")
  assert.equal(f.items[iJoined].join_ref, joinRef, "joined push join_ref = channel join ref")
  assert.equal(f.items[iJoined].ref, null, "joined push ref")
  assert.equal(f.items[iEntered].join_ref, null, "user_entered broadcast join_ref")
  assert.equal(f.items[iEntered].ref, null, "user_entered broadcast ref")
})

test("connect without params is anonymous: joined push has user_id null, user_entered user null", async () => {
  const socket = await h.connectSocket(server)
  const channel = await h.joinOk(socket, h.uniq("room:anon"))
  const joined = await channel.seen.waitFor((e) => e.event === "joined", "joined push")
  assert.deepEqual(joined.payload, { status: "connected", user_id: null })
  const entered = await channel.seen.waitFor((e) => e.event === "user_entered", "user_entered broadcast")
  assert.deepEqual(entered.payload, { user: null })
})

test("connect refused with reject=true: phoenix.js gets onError and never opens", async () => {
  const socket = h.makeSocket(server, { params: { reject: "true" } })
  await expectNeverOpens(socket)
})

test("connect refused with reject=true is an HTTP 403 on the upgrade", async () => {
  const client = h.rawClient(server, { params: { reject: "true" } })
  const res = await h.withTimeout(client.unexpectedResponse, h.WAIT_MS, "HTTP answer to refused upgrade")
  assert.equal(res.status, 403)
  await assert.rejects(client.opened)
})

test("bearer token authToken \"reject\" is refused: onError, never opens", async () => {
  const socket = h.makeSocket(server, { authToken: "reject" })
  await expectNeverOpens(socket)
})

test("bearer token \"reject\" in Sec-WebSocket-Protocol is an HTTP 403", async () => {
  const client = h.rawClient(server, { protocols: ["phoenix", bearer("reject")] })
  const res = await h.withTimeout(client.unexpectedResponse, h.WAIT_MS, "HTTP answer to refused upgrade")
  assert.equal(res.status, 403)
})

test("a normal bearer token is accepted: socket opens, sub-protocol phoenix is selected, join works", async () => {
  const socket = await h.connectSocket(server, { authToken: "s3cr3t-token.with/odd+chars" })
  assert.equal(socket.conn.protocol, "phoenix", "server must echo the phoenix sub-protocol")
  const channel = await h.joinOk(socket, h.uniq("room:token"))
  assert.deepEqual(await h.pushChannel(channel, "echo", { ok: 1 }), { status: "ok", response: { ok: 1 } })
})

test("bearer token combined with user_id: joined push carries user_id", async () => {
  const socket = await h.connectSocket(server, { authToken: "abc", params: { user_id: "tok-user" } })
  const channel = await h.joinOk(socket, h.uniq("room:token"))
  const joined = await channel.seen.waitFor((e) => e.event === "joined", "joined push")
  assert.deepEqual(joined.payload, { status: "connected", user_id: "tok-user" })
})

test("unsupported vsn (3.0.0) is refused with HTTP 403; 2.0.7 is accepted as V2", async () => {
  const bad = h.rawClient(server, { vsn: "3.0.0" })
  const res = await h.withTimeout(bad.unexpectedResponse, h.WAIT_MS, "HTTP answer to vsn=3.0.0")
  assert.equal(res.status, 403)

  const good = await h.rawConnect(server, { vsn: "2.0.7" })
  good.sendJson([null, "1", "phoenix", "heartbeat", {}])
  const reply = await good.waitForReply("1")
  assert.deepEqual(reply, { join_ref: null, ref: "1", topic: "phoenix", event: "phx_reply", payload: { status: "ok", response: {} } })
})

test("heartbeat is answered with join_ref null", async () => {
  const client = await h.rawConnect(server)
  client.sendJson(["7", "8", "phoenix", "heartbeat", {}])
  const reply = await client.waitForReply("8")
  assert.deepEqual(reply, { join_ref: null, ref: "8", topic: "phoenix", event: "phx_reply", payload: { status: "ok", response: {} } })
})
