// The LongPoll transport and the longPollFallbackMs fallback from WebSocket.
import { test, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import WebSocket from "ws"
import { Socket, LongPoll } from "../fawkes.js"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

const fast = { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50, timeout: 2000 }

test("LongPoll: join, echo, many pushes batched in order, binary push answered with the app's LongPoll error", async () => {
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: LongPoll, ...fast }))
  socket.connect()
  await socket.events.waitFor((e) => e.type === "open", "open")
  assert.ok(socket.conn instanceof LongPoll)
  assert.equal(socket.conn.skipHeartbeat, true)
  assert.equal(socket.connectionState(), "open")
  const channel = socket.channel(h.uniq("room:lp"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")

  // 150 pushes in one turn of the event loop: more than one POST (100 lines each), order kept
  const replies = await Promise.all(Array.from({ length: 150 }, (_, i) => h.replyOf(channel.push("echo", { i }))))
  assert.deepEqual(replies.map((r) => r.response.i), Array.from({ length: 150 }, (_, i) => i))

  const bin = await h.replyOf(channel.push("binary", new TextEncoder().encode("hi").buffer))
  assert.deepEqual(bin, { status: "error", response: { reason: "binary not supported on longpoll" } })
})

test("LongPoll endpoint URL: ws→http, /websocket→/longpoll, params and vsn kept, then the session token", () => {
  const lp = new LongPoll("ws://example.test:4000/socket/websocket?user_id=1&vsn=2.0.0")
  lp.close()
  assert.equal(lp.endpointURL(), "http://example.test:4000/socket/longpoll?user_id=1&vsn=2.0.0")
  lp.token = "T"
  assert.equal(lp.endpointURL(), "http://example.test:4000/socket/longpoll?user_id=1&vsn=2.0.0&token=T")
  const withToken = new LongPoll("wss://x/socket/websocket", ["phoenix", "base64url.bearer.phx.MTIzNA"])
  withToken.close()
  assert.equal(withToken.authToken, "1234")
})

for (const mode of ["drop", "400"]) {
  test(`longPollFallbackMs: behind a proxy that ${mode === "drop" ? "drops" : "answers 400 to"} upgrades, the socket falls back to LongPoll and remembers it`, async () => {
    const onUpgrade = mode === "drop"
      ? (_req, sock) => sock.destroy()
      : (_req, sock) => sock.end("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    const proxy = await h.startProxy(server, { onUpgrade })
    const storage = new h.MemoryStorage()
    const socket = h.instrument(new Socket(`${proxy.url}/socket`, { transport: WebSocket, longPollFallbackMs: 300, sessionStorage: storage, ...fast }))
    socket.connect()
    await socket.events.waitFor((e) => e.type === "open", "open after the fallback", { ms: 5000 })
    assert.equal(socket.transport, LongPoll)
    assert.ok(socket.conn instanceof LongPoll)
    const channel = socket.channel(h.uniq("room:fb"))
    assert.equal((await h.replyOf(channel.join())).status, "ok")
    assert.deepEqual(await h.replyOf(channel.push("echo", { via: "fallback" })), { status: "ok", response: { via: "fallback" } })
    assert.equal(storage.getItem("phx:fallback:LongPoll"), "true", "the fallback is remembered for the session")
    assert.equal(proxy.seen.filter((r) => r.upgrade).length, 1, "one WebSocket attempt")

    // a new socket with the same session storage goes straight to LongPoll
    const again = h.instrument(new Socket(`${proxy.url}/socket`, { transport: WebSocket, longPollFallbackMs: 300, sessionStorage: storage, ...fast }))
    again.connect()
    await again.events.waitFor((e) => e.type === "open", "open of the second socket")
    assert.ok(again.conn instanceof LongPoll)
    assert.equal(proxy.seen.filter((r) => r.upgrade).length, 1, "no new WebSocket attempt")
  })
}

test("longPollFallbackMs: when WebSocket works it stays on WebSocket (the ping passes) and nothing is remembered", async () => {
  const storage = new h.MemoryStorage()
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: WebSocket, longPollFallbackMs: 300, sessionStorage: storage, ...fast }))
  socket.connect()
  await socket.events.waitFor((e) => e.type === "open", "open")
  const channel = socket.channel(h.uniq("room:fb"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  // the ping of the health check answered: the fallback timer is gone for good
  await h.waitUntil(() => socket.primaryPassedHealthCheck, "the primary transport's health check")
  assert.ok(socket.conn instanceof WebSocket)
  assert.equal(socket.primaryPassedHealthCheck, true)
  assert.equal(storage.getItem("phx:fallback:LongPoll"), null)
})
