// Socket connect over each transport: params, refusals (reject=true, bearer
// token, vsn), accepted tokens, heartbeat.
//
// How a refusal looks differs by transport (PROTOCOL.md §1.5): a refused
// WebSocket upgrade is an HTTP 403 (phoenix.js: onError, close 1006); a refused
// LongPoll session is an HTTP 200 with body {"status":403} (phoenix.js: onError
// with 403, close 1008 "forbidden"). phoenix.js sends its bearer token
// (`authToken`) as a Sec-WebSocket-Protocol entry over WebSocket and as the
// X-Phoenix-AuthToken header over LongPoll (§1.6).
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
  if (socket.transportKind === "longpoll") {
    // phoenix.js LongPoll on {"status":403}: onerror(403), then close 1008 "forbidden"
    const errors = socket.events.filter((e) => e.type === "error")
    assert.deepEqual(errors.map((e) => e.value), errors.map(() => 403), `LongPoll errors: ${socket.events.dump()}`)
    const close = await socket.events.waitFor((e) => e.type === "close", "close after the refusal")
    assert.equal(close.code, 1008, `close: ${h.describe(close)}`)
    assert.equal(close.reason, "forbidden")
  }
}

async function waitNth(inbox, pred, n, what) {
  return h.waitUntil(() => inbox.filter(pred).length >= n, what)
}

/**
 * Open a raw connection that the server must refuse and return what the
 * refusal looked like: WebSocket → the HTTP answer to the upgrade;
 * LongPoll → the answer to the session-opening GET.
 */
async function rawRefusal(transport, { params = {}, vsn = "2.0.0", token } = {}) {
  if (transport === "websocket") {
    const protocols = token === undefined ? undefined : ["phoenix", bearer(token)]
    const client = h.rawClient(server, { params, vsn, protocols })
    const res = await h.withTimeout(client.unexpectedResponse, h.WAIT_MS, "HTTP answer to a refused upgrade")
    await assert.rejects(client.opened)
    return res
  }
  const headers = token === undefined ? {} : { "x-phoenix-authtoken": token }
  const client = h.rawLongPoll(server, { params, vsn, headers })
  return client.open()
}

/** A refusal as PROTOCOL.md §1.5 describes it for the transport. */
function assertRefused(transport, res) {
  if (transport === "websocket") {
    assert.equal(res.status, 403, `upgrade answer: ${h.describe(res)}`)
  } else {
    assert.equal(res.status, 200, `LongPoll refusal is an HTTP 200: ${h.describe(res)}`)
    assert.match(res.headers["content-type"] ?? "", /^application\/json/)
    assert.deepEqual(res.json, { status: 403 }, `LongPoll refusal body: ${res.text}`)
  }
}

h.forEachTransport((transport) => {
  test("connect with user_id param: the joined push carries user_id, user_entered carries the join param user", async () => {
    const socket = await h.connectSocket(server, { transport, params: { user_id: "u42" } })
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
    const socket = await h.connectSocket(server, { transport })
    const channel = await h.joinOk(socket, h.uniq("room:anon"))
    const joined = await channel.seen.waitFor((e) => e.event === "joined", "joined push")
    assert.deepEqual(joined.payload, { status: "connected", user_id: null })
    const entered = await channel.seen.waitFor((e) => e.event === "user_entered", "user_entered broadcast")
    assert.deepEqual(entered.payload, { user: null })
  })

  test("connect refused with reject=true: phoenix.js gets onError and never opens", async () => {
    const socket = h.makeSocket(server, { transport, params: { reject: "true" } })
    await expectNeverOpens(socket)
  })

  test(transport === "websocket"
    ? "connect refused with reject=true is an HTTP 403 on the upgrade"
    : "connect refused with reject=true is an HTTP 200 with body {status: 403}", async () => {
    assertRefused(transport, await rawRefusal(transport, { params: { reject: "true" } }))
  })

  test("bearer token authToken \"reject\" is refused: onError, never opens", async () => {
    const socket = h.makeSocket(server, { transport, authToken: "reject" })
    await expectNeverOpens(socket)
  })

  test(transport === "websocket"
    ? "bearer token \"reject\" in Sec-WebSocket-Protocol is an HTTP 403"
    : "bearer token \"reject\" in X-Phoenix-AuthToken is refused with {status: 403}", async () => {
    assertRefused(transport, await rawRefusal(transport, { token: "reject" }))
  })

  test("a normal bearer token is accepted: socket opens, join works", async () => {
    const socket = await h.connectSocket(server, { transport, authToken: "s3cr3t-token.with/odd+chars" })
    if (transport === "websocket") {
      assert.equal(socket.conn.protocol, "phoenix", "server must echo the phoenix sub-protocol")
    }
    const channel = await h.joinOk(socket, h.uniq("room:token"))
    assert.deepEqual(await h.pushChannel(channel, "echo", { ok: 1 }), { status: "ok", response: { ok: 1 } })
  })

  test("bearer token combined with user_id: joined push carries user_id", async () => {
    const socket = await h.connectSocket(server, { transport, authToken: "abc", params: { user_id: "tok-user" } })
    const channel = await h.joinOk(socket, h.uniq("room:token"))
    const joined = await channel.seen.waitFor((e) => e.event === "joined", "joined push")
    assert.deepEqual(joined.payload, { status: "connected", user_id: "tok-user" })
  })

  test("unsupported vsn (3.0.0) is refused; 2.0.7 is accepted as V2", async () => {
    assertRefused(transport, await rawRefusal(transport, { vsn: "3.0.0" }))

    const good = await h.rawConnect(server, { transport, vsn: "2.0.7" })
    good.sendJson([null, "1", "phoenix", "heartbeat", {}])
    const reply = await good.waitForReply("1")
    assert.deepEqual(reply, { join_ref: null, ref: "1", topic: "phoenix", event: "phx_reply", payload: { status: "ok", response: {} } })
  })

  test("heartbeat is answered with join_ref null", async () => {
    const client = await h.rawConnect(server, { transport })
    client.sendJson(["7", "8", "phoenix", "heartbeat", {}])
    const reply = await client.waitForReply("8")
    assert.deepEqual(reply, { join_ref: null, ref: "8", topic: "phoenix", event: "phx_reply", payload: { status: "ok", response: {} } })
  })
})
