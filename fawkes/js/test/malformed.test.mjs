// Frames from the server that do not decode to a message are dropped and
// logged: the socket, its channels and the process live on. A small
// WebSocket server stands in for a broken or hostile one.
import { test, after } from "node:test"
import assert from "node:assert/strict"
import WebSocket, { WebSocketServer } from "ws"
import { Socket } from "../fawkes.js"
import * as h from "./support.mjs"

after(() => h.closeAll())

const GARBAGE = [
  "not json",
  "[1, 2",
  "{}",
  "42",
  "null",
  '[null, null, 7, "event", {}]',
  '[null, null, "room:x", null, {}]',
  Buffer.from([9, 1, 1, 1]), // a binary frame of no known kind
  Buffer.from([1, 200]), // a reply whose header outruns the frame
]

test("garbage frames are dropped and logged; the join's reply after them still lands", async () => {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" })
  await new Promise((r) => wss.once("listening", r))
  h.onCleanup(() => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()) }))
  wss.on("connection", (ws) => {
    ws.on("message", (data) => {
      const [joinRef, ref, topic, event] = JSON.parse(String(data))
      if (event !== "phx_join") return
      for (const frame of GARBAGE) ws.send(frame)
      ws.send(JSON.stringify([joinRef, ref, topic, "phx_reply", { status: "ok", response: { fine: true } }]))
    })
  })

  const logged = []
  const socket = new Socket(`ws://127.0.0.1:${wss.address().port}/socket`, {
    transport: WebSocket,
    logger: (kind, msg, data) => { if (msg.startsWith("dropped")) logged.push(String(data)) },
  })
  h.onCleanup(() => new Promise((r) => socket.disconnect(r)))
  const closes = []
  socket.onClose((e) => closes.push(e))
  socket.connect()
  const channel = socket.channel("room:x")
  const reply = await h.withTimeout(h.replyOf(channel.join()), h.WAIT_MS, "the join reply")
  assert.deepEqual(reply, { status: "ok", response: { fine: true } })
  assert.equal(logged.length, GARBAGE.length, `one log line per dropped frame: ${logged.join(" | ")}`)
  assert.equal(closes.length, 0, "the connection stayed up")
  assert.equal(channel.state, "joined")
})
