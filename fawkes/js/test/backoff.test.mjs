// The default reconnect / rejoin back-off: exponential, capped, jittered; a
// user-given reconnectAfterMs still wins; a socket comes back by itself after
// a server restart.
import { test, afterEach } from "node:test"
import assert from "node:assert/strict"
import WebSocket from "ws"
import { Socket, jitteredBackoff, defaultReconnectAfterMs, defaultRejoinAfterMs } from "../fawkes.js"
import * as h from "./support.mjs"

afterEach(() => h.closeAll())

test("jitteredBackoff: within [d/2, d] for d = min(cap, base·2^(tries-1)), never zero, randomised", () => {
  for (let tries = 1; tries <= 12; tries++) {
    const d = Math.min(10000, 200 * 2 ** (tries - 1))
    const samples = Array.from({ length: 200 }, () => jitteredBackoff(tries, 200, 10000))
    for (const s of samples) assert.ok(s >= d / 2 && s <= d, `tries ${tries}: ${s} outside [${d / 2}, ${d}]`)
    assert.ok(new Set(samples).size > 10, `tries ${tries}: samples must differ, got ${[...new Set(samples)]}`)
  }
  // the bounds are reached with the extremes of random()
  assert.equal(jitteredBackoff(3, 100, 1000, () => 0), 200)
  assert.equal(jitteredBackoff(3, 100, 1000, () => 1), 400)
  assert.equal(jitteredBackoff(50, 100, 1000, () => 1), 1000)
  assert.equal(jitteredBackoff(0, 100, 1000, () => 0), 50, "tries below 1 count as the first")
})

test("the Socket defaults use the jittered back-off; user functions win", () => {
  const s = new Socket("ws://127.0.0.1:9/socket", { transport: WebSocket })
  const first = Array.from({ length: 50 }, () => s.reconnectAfterMs(1))
  assert.ok(first.every((d) => d >= 100 && d <= 200), `first reconnect delays ${first}`)
  assert.ok(new Set(first).size > 1, "not all equal")
  assert.ok(Array.from({ length: 50 }, () => s.reconnectAfterMs(20)).every((d) => d >= 5000 && d <= 10000))
  assert.ok(Array.from({ length: 50 }, () => s.rejoinAfterMs(1)).every((d) => d >= 500 && d <= 1000))
  assert.ok(Array.from({ length: 50 }, () => defaultRejoinAfterMs(9)).every((d) => d >= 5000 && d <= 10000))
  assert.ok(defaultReconnectAfterMs(2) >= 200)

  const custom = new Socket("ws://127.0.0.1:9/socket", { transport: WebSocket, reconnectAfterMs: (t) => t * 7, rejoinAfterMs: () => 3 })
  assert.equal(custom.reconnectAfterMs(3), 21)
  assert.equal(custom.rejoinAfterMs(1), 3)
})

test("after a server restart the socket reconnects with the default back-off and the channel rejoins", async () => {
  let server = await h.startServer()
  const port = server.port
  const socket = h.instrument(new Socket(`${server.url}/socket`, { transport: WebSocket, params: { user_id: "restart" } }))
  const delays = []
  const calc = socket.reconnectAfterMs
  socket.reconnectAfterMs = (tries) => { const d = calc(tries); delays.push([tries, d]); return d }
  socket.connect()
  const channel = socket.channel(h.uniq("room:restart"))
  assert.equal((await h.replyOf(channel.join())).status, "ok")
  const firstRef = channel.joinRef()
  await socket.frames.waitFor((f) => f.event === "joined" && f.join_ref === firstRef, "first joined push")

  const mark = socket.events.mark()
  await server.stop()
  try {
    const closed = await socket.events.waitFor((e) => e.type === "close", "close on shutdown", { from: mark })
    assert.equal(closed.code, 1012, "shutdown closes with 1012")
    // let at least one reconnect attempt fail before the server is back
    await socket.events.waitFor((e) => e.type === "error", "a refused reconnect", { from: mark, ms: 5000 })
    server = await h.startServer({ port })
    await socket.events.waitFor((e) => e.type === "open", "reopen after restart", { from: mark, ms: 10000 })
    await socket.frames.waitFor((f) => f.event === "joined" && f.join_ref !== firstRef && f.payload.user_id === "restart",
      "joined push of the rejoin", { ms: 5000 })
    assert.equal(channel.state, "joined")
    assert.ok(delays.length >= 2, `reconnect delays ${JSON.stringify(delays)}`)
    for (const [tries, d] of delays) {
      const max = Math.min(10000, 200 * 2 ** (tries - 1))
      assert.ok(d >= max / 2 && d <= max, `try ${tries}: ${d} ms`)
    }
    assert.deepEqual(delays.map(([t]) => t), delays.map((_, i) => i + 1), "tries count up until a connection opens")
  } finally {
    await h.closeAll()
    await server.stop()
  }
})
