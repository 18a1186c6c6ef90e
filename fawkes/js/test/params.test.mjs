// setParams / setAuthToken: what the next (re)connect presents; connect(params).
// The conformance app shows the connect param user_id in each join's `joined`
// push, refuses the bearer token "reject", and closes a user's sockets on
// POST /api/disconnect (CONFORMANCE_APP.md).
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import WebSocket from "ws"
import { Socket, LongPoll, AUTH_TOKEN_PREFIX } from "../fawkes.js"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

/** A `ws` WebSocket that logs the URL and sub-protocols of every connect. */
function recordingTransport() {
  const seen = []
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols)
      seen.push({ url: new URL(url), protocols })
    }
  }
  return { RecordingWebSocket, seen }
}

const fast = { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50, timeout: 2000 }
const bearer = (token) => `${AUTH_TOKEN_PREFIX}${Buffer.from(token).toString("base64").replace(/=/g, "")}`
const joinedPush = (socket, channel, userId, what) =>
  socket.frames.waitFor((f) => f.topic === channel.topic && f.event === "joined" && f.join_ref === channel.joinRef() && f.payload.user_id === userId, what, { ms: 5000 })

test("setParams and setAuthToken take effect on the reconnect after a forced disconnect", async () => {
  const { RecordingWebSocket, seen } = recordingTransport()
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: RecordingWebSocket, params: { user_id: "p1" }, authToken: "tok-1", ...fast }))
  socket.connect()
  const channel = socket.channel(h.uniq("room:params"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  await joinedPush(socket, channel, "p1", "joined with p1")
  assert.equal(seen[0].url.searchParams.get("user_id"), "p1")
  assert.deepEqual(seen[0].protocols, ["phoenix", bearer("tok-1")])

  socket.setParams({ user_id: "p2" })
  socket.setAuthToken("tök-2") // non-Latin-1: base64 of its UTF-8 bytes
  assert.equal(socket.isConnected(), true, "setting params does not touch the open connection")
  const mark = socket.events.mark()
  await h.apiDisconnect(server, "user_socket:p1")
  const closed = await socket.events.waitFor((e) => e.type === "close", "forced close", { from: mark })
  assert.equal(closed.code, 1001)
  await joinedPush(socket, channel, "p2", "joined with p2 after the reconnect")
  const last = seen.at(-1)
  assert.equal(last.url.searchParams.get("user_id"), "p2")
  assert.equal(last.url.searchParams.get("vsn"), "2.0.0")
  assert.deepEqual(last.protocols, ["phoenix", bearer("tök-2")])
})

test("a refused token set with setAuthToken keeps the socket out until it is replaced; params functions are re-evaluated", async () => {
  const { RecordingWebSocket, seen } = recordingTransport()
  let userId = "f1"
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: RecordingWebSocket, params: () => ({ user_id: userId }), ...fast }))
  socket.connect()
  const channel = socket.channel(h.uniq("room:params"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  await joinedPush(socket, channel, "f1", "joined with f1")

  socket.setAuthToken("reject")
  userId = "f2"
  const mark = socket.events.mark()
  await h.apiDisconnect(server, "user_socket:f1")
  // refused reconnects (HTTP 403 on the upgrade) show as errors
  await socket.events.waitFor((e) => e.type === "error", "a refused reconnect", { from: mark })
  assert.equal(socket.events.filter((e) => e.type === "open", mark).length, 0)
  assert.deepEqual(seen.at(-1).protocols, ["phoenix", bearer("reject")])

  socket.setAuthToken(null)
  await joinedPush(socket, channel, "f2", "joined with f2 once the token is gone")
  assert.equal(seen.at(-1).protocols, undefined, "no sub-protocols without a token")
})

test("connect(params) replaces the params, as in phoenix.js", async () => {
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: WebSocket, params: { user_id: "old" }, ...fast }))
  socket.connect({ user_id: "c1" })
  const channel = socket.channel(h.uniq("room:params"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  await joinedPush(socket, channel, "c1", "joined with c1")
})

test("over LongPoll, setParams and setAuthToken apply to the next session (X-Phoenix-AuthToken)", async () => {
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: LongPoll, params: { user_id: "lp1" }, ...fast }))
  socket.connect()
  const channel = socket.channel(h.uniq("room:params"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  await joinedPush(socket, channel, "lp1", "joined with lp1")
  assert.ok(socket.conn instanceof LongPoll)

  // a refused session: {"status":403} → error 403, close 1008
  socket.setAuthToken("reject")
  socket.setParams({ user_id: "lp2" })
  const mark = socket.events.mark()
  socket.disconnect()
  socket.connect()
  await socket.events.waitFor((e) => e.type === "error" && e.value === 403, "LongPoll refusal 403", { from: mark })
  const closed = await socket.events.waitFor((e) => e.type === "close" && e.code === 1008, "close 1008", { from: mark })
  assert.equal(closed.reason, "forbidden")

  socket.setAuthToken("fine")
  await joinedPush(socket, channel, "lp2", "joined with lp2")
  assert.equal(socket.conn.authToken, "fine")
})
