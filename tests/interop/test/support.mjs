// Shared helpers for the interop suite: start the conformance server, make
// phoenix.js sockets and raw `ws` clients, and wait for things with timeouts.
//
// Rules the helpers enforce:
// - every wait has a deadline and fails with a message saying what it waited
//   for and what it saw instead;
// - every socket / raw client created through them is registered and closed by
//   `closeAll()` (call it from `afterEach`), so node exits at the end.

import { spawn } from "node:child_process"
import http from "node:http"
import { existsSync } from "node:fs"
import path from "node:path"
import { describe as suite } from "node:test"
import { fileURLToPath } from "node:url"
import WebSocket from "ws"

/**
 * The client under test: `FAWKES_CLIENT=phoenix` (default, the official
 * phoenix npm package) or `FAWKES_CLIENT=fawkes` (Fawkes's own client,
 * fawkes/js/fawkes.js, which has the same API).
 */
export const CLIENT = process.env.FAWKES_CLIENT || "phoenix"
if (!["phoenix", "fawkes"].includes(CLIENT)) {
  throw new Error(`FAWKES_CLIENT: unknown client ${JSON.stringify(CLIENT)} (phoenix or fawkes)`)
}
/** Whether the suite drives Fawkes's client (for the few client-conditional expectations). */
export const IS_FAWKES = CLIENT === "fawkes"
const { Socket, LongPoll, Presence } = IS_FAWKES
  ? await import("../../../fawkes/js/fawkes.js")
  : await import("phoenix")

export { WebSocket, Socket, LongPoll, Presence }

const HERE = path.dirname(fileURLToPath(import.meta.url))
export const INTEROP_DIR = path.resolve(HERE, "..")
export const DEFAULT_BIN = path.resolve(INTEROP_DIR, "../../target/debug/fawkes-conformance")

/** Default deadline for a single awaited event, in ms. */
export const WAIT_MS = Number(process.env.FAWKES_WAIT_MS || 3000)
/** Default phoenix.js push/join timeout used by the suite, in ms. */
export const PUSH_TIMEOUT_MS = Number(process.env.FAWKES_PUSH_TIMEOUT_MS || 3000)

// ---------------------------------------------------------------------------
// Transports

const ALL_TRANSPORTS = ["websocket", "longpoll"]

/**
 * The transports the channel scenarios run over. `FAWKES_TRANSPORTS` (a comma
 * separated list, e.g. `websocket`) narrows it; the default is both.
 */
export const TRANSPORTS = (() => {
  const wanted = (process.env.FAWKES_TRANSPORTS || ALL_TRANSPORTS.join(","))
    .split(",").map((t) => t.trim()).filter(Boolean)
  for (const t of wanted) {
    if (!ALL_TRANSPORTS.includes(t)) throw new Error(`FAWKES_TRANSPORTS: unknown transport ${JSON.stringify(t)}`)
  }
  return ALL_TRANSPORTS.filter((t) => wanted.includes(t))
})()

/** Whether the scenarios of `transport` are selected (see TRANSPORTS). */
export const hasTransport = (transport) => TRANSPORTS.includes(transport)

/**
 * Run a block of tests once per transport, each inside a node:test
 * `describe(transport)`: `h.forEachTransport((transport) => { test(…) })`.
 * Hooks registered at file level (`afterEach(closeAll)`) apply inside.
 */
export function forEachTransport(body) {
  for (const transport of TRANSPORTS) suite(transport, () => body(transport))
}

/** The phoenix.js transport class for a transport name. */
export function transportClass(name) {
  switch (name) {
    case "websocket": return WebSocket
    case "longpoll": return LongPoll
    default: throw new Error(`unknown transport ${JSON.stringify(name)}`)
  }
}

/**
 * LongPoll poll window of the server (PROTOCOL.md §6.4): an idle GET is held
 * this long. When a session ends on the server (forced disconnect), phoenix.js
 * may only notice when its pending GET returns, so waits for that use
 * SESSION_END_MS.
 */
export const LONGPOLL_WINDOW_MS = 10000
export const SESSION_END_MS = LONGPOLL_WINDOW_MS + WAIT_MS

// Opt-in trace of every fetch (phoenix.js LongPoll uses the global fetch):
// FAWKES_TRACE_HTTP=1 prints each request and answer on stderr.
if (process.env.FAWKES_TRACE_HTTP) {
  const original = globalThis.fetch
  let n = 0
  globalThis.fetch = async (input, init = {}) => {
    const id = ++n
    const t0 = Date.now()
    const body = typeof init.body === "string" ? init.body : init.body == null ? "" : "(non-string body)"
    process.stderr.write(`[fetch ${id}] → ${init.method ?? "GET"} ${input} ${JSON.stringify(init.headers ?? {})} ${body}\n`)
    try {
      const res = await original(input, init)
      const text = await res.clone().text()
      process.stderr.write(`[fetch ${id}] ← ${res.status} after ${Date.now() - t0} ms ${text}\n`)
      return res
    } catch (err) {
      process.stderr.write(`[fetch ${id}] ✗ ${err.name}: ${err.message} after ${Date.now() - t0} ms\n`)
      throw err
    }
  }
}

// ---------------------------------------------------------------------------
// Server process

const running = new Set()
function killRunning() {
  for (const child of running) {
    try { child.kill("SIGKILL") } catch { /* already gone */ }
  }
}
process.on("exit", killRunning)
// the test runner cancels a file by signalling it: take the servers along
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) {
  process.once(signal, () => {
    killRunning()
    process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 })[signal])
  })
}

const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g
const LISTENING = /listening on http:\/\/(\[[^\]]+\]|[^\s:/]+):(\d+)/

/**
 * Start the conformance server on a free port.
 *
 * @param {object} [opts]
 * @param {string} [opts.nodeName] passed as --node-name
 * @param {string[]} [opts.args] extra CLI arguments
 * @param {number} [opts.startTimeoutMs]
 * @returns {Promise<{url: string, httpUrl: string, port: number, nodeName?: string,
 *   logs: () => string, stop: () => Promise<void>, child: import("node:child_process").ChildProcess}>}
 */
export async function startServer(opts = {}) {
  const bin = process.env.FAWKES_CONFORMANCE_BIN
    ? path.resolve(INTEROP_DIR, process.env.FAWKES_CONFORMANCE_BIN)
    : DEFAULT_BIN
  if (!existsSync(bin)) {
    throw new Error(`conformance server binary not found at ${bin}; build it with ` +
      "`cargo build --bin fawkes-conformance` or set FAWKES_CONFORMANCE_BIN")
  }
  const args = ["--port", "0", "--host", "127.0.0.1"]
  if (opts.nodeName) args.push("--node-name", opts.nodeName)
  if (opts.args) args.push(...opts.args)

  // PORT/HOST/NODE_NAME/PUBSUB_URL from the caller's environment must not
  // override the CLI (they should not, but keep the test hermetic).
  const env = { ...process.env }
  for (const k of ["PORT", "HOST", "NODE_NAME", "PUBSUB_URL"]) delete env[k]
  env.RUST_LOG ??= "info"
  env.NO_COLOR ??= "1"

  const child = spawn(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] })
  running.add(child)
  let output = ""
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => {
    running.delete(child)
    resolve({ code, signal })
  }))

  const startTimeoutMs = opts.startTimeoutMs ?? 15000
  const port = await new Promise((resolve, reject) => {
    let buffered = ""
    const timer = setTimeout(() => {
      reject(new Error(`server did not print "listening on http://HOST:PORT" within ${startTimeoutMs} ms; output:\n${output}`))
    }, startTimeoutMs)
    const onData = (chunk) => {
      const text = chunk.toString("utf8")
      output += text
      buffered += text.replace(ANSI, "")
      const m = LISTENING.exec(buffered)
      if (m) {
        clearTimeout(timer)
        resolve(Number(m[2]))
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("error", (err) => { clearTimeout(timer); reject(err) })
    exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`server exited before listening (code ${code}, signal ${signal}); output:\n${output}`))
    })
  }).catch(async (err) => {
    child.kill("SIGKILL")
    await exited
    throw err
  })

  let stopped = false
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    nodeName: opts.nodeName,
    child,
    logs: () => output,
    exited,
    async stop() {
      if (stopped) return exited
      stopped = true
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
      const t = setTimeout(() => child.kill("SIGKILL"), 5000)
      await exited
      clearTimeout(t)
    },
  }
}

/**
 * An HTTP proxy in front of conformance nodes: each plain request goes to
 * the node `route(req)` returns, answered as it answers. WebSocket upgrades
 * go to `onUpgrade(req, socket)` (by default they are dropped). Resolves
 * with `{port, url, httpUrl, close()}`.
 */
export async function startHttpProxy(route, { onUpgrade = (_req, socket) => socket.destroy() } = {}) {
  const proxy = http.createServer((req, res) => {
    const target = route(req)
    const upstream = http.request({
      host: "127.0.0.1", port: target.port, method: req.method, path: req.url, headers: req.headers,
    }, (upRes) => {
      res.writeHead(upRes.statusCode, upRes.headers)
      upRes.pipe(res)
    })
    upstream.on("error", () => res.destroy())
    res.on("close", () => upstream.destroy())
    req.pipe(upstream)
  })
  proxy.on("upgrade", onUpgrade)
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve))
  const { port } = proxy.address()
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => { proxy.closeAllConnections(); proxy.close(() => resolve()) }),
  }
}

// ---------------------------------------------------------------------------
// Generic waiting

/** Reject after `ms` with `what` in the message, unless `promise` settles first. */
export function withTimeout(promise, ms, what) {
  let timer
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

/**
 * Resolve with the arguments of the first call of a callback registered by
 * `register(cb)` (e.g. `cb => socket.onClose(cb)`); fail after `ms`.
 * Register it BEFORE triggering the action.
 */
export function nextCall(register, what, ms = WAIT_MS) {
  return withTimeout(new Promise((resolve) => {
    let done = false
    register((...args) => {
      if (done) return
      done = true
      resolve(args.length <= 1 ? args[0] : args)
    })
  }), ms, what)
}

/** Poll `check` (sync or async) until it returns a truthy value; fail after `ms`. */
export async function waitUntil(check, what, { ms = WAIT_MS, every = 25 } = {}) {
  const deadline = Date.now() + ms
  let last
  for (;;) {
    try {
      last = await check()
      if (last) return last
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}; last value: ${describe(last)}`)
    }
    await new Promise((r) => setTimeout(r, every))
  }
}

/**
 * A short settle window, used ONLY to assert that something does NOT happen,
 * and only after a round-trip barrier made it very unlikely to still come.
 */
export function settle(ms = 100) {
  return new Promise((r) => setTimeout(r, ms))
}

export function describe(value) {
  try {
    return JSON.stringify(value, (_k, v) => {
      if (v instanceof ArrayBuffer) return `ArrayBuffer(${JSON.stringify(Buffer.from(v).toString("latin1"))})`
      if (Buffer.isBuffer(v)) return `Buffer(${v.toString("hex")})`
      return v
    })
  } catch {
    return String(value)
  }
}

/**
 * An append-only log of items (frames) with "wait for the first item matching
 * a predicate" semantics. Items already received count, so there is no race
 * between the action and the wait.
 */
export class Inbox {
  constructor(name) {
    this.name = name
    this.items = []
    this.waiters = []
  }

  add(item) {
    this.items.push(item)
    for (const w of [...this.waiters]) {
      if (w.from <= this.items.length - 1 && w.pred(item)) {
        this.waiters = this.waiters.filter((x) => x !== w)
        clearTimeout(w.timer)
        w.resolve(item)
      }
    }
  }

  /** Index the next item will get; pass as `from` to wait only for later items. */
  mark() { return this.items.length }

  find(pred, from = 0) { return this.items.slice(from).find(pred) }
  filter(pred, from = 0) { return this.items.slice(from).filter(pred) }
  indexOf(pred, from = 0) {
    for (let i = from; i < this.items.length; i++) if (pred(this.items[i])) return i
    return -1
  }

  /** Wait for the first item (at index >= from) matching `pred`. */
  waitFor(pred, what, { ms = WAIT_MS, from = 0 } = {}) {
    const found = this.find(pred, from)
    if (found !== undefined) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const w = { pred, from, resolve }
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w)
        reject(new Error(`${this.name}: timed out after ${ms} ms waiting for ${what}; ` +
          `received since index ${from}:\n  ${this.items.slice(from).map(describe).join("\n  ") || "(nothing)"}`))
      }, ms)
      this.waiters.push(w)
    })
  }

  dump(from = 0) { return this.items.slice(from).map(describe).join("\n  ") }
}

// ---------------------------------------------------------------------------
// Cleanup registry

const live = new Set()

function track(closer) {
  live.add(closer)
  return () => live.delete(closer)
}

/** Register `closer` (sync or async) to run at the next `closeAll()`. */
export const onCleanup = (closer) => track(closer)

/** Disconnect every phoenix socket and raw client created since the last call. */
export async function closeAll() {
  const closers = [...live]
  live.clear()
  await Promise.allSettled(closers.map((c) => c()))
}

// ---------------------------------------------------------------------------
// phoenix.js sockets

/**
 * Build (not connect) a phoenix.js Socket against the server, with raw frame
 * capture through `socket.onMessage` (`socket.frames`, an Inbox of decoded
 * messages `{join_ref, ref, topic, event, payload}`), and state flags.
 *
 * `opts.transport` is `"websocket"` (default) or `"longpoll"` (phoenix.js
 * `LongPoll`); a transport class is passed through as is (for the
 * `longPollFallbackMs` tests). `socket.transportKind` is the name (not
 * `transportName`: phoenix.js has a method of that name).
 *
 * Socket events (`socket.events`): `{type: "open"}`, `{type: "close", code,
 * reason, wasClean}`, `{type: "error", message, value}` (`value` is the error
 * itself when it is not an object: phoenix.js LongPoll reports the poll
 * status, e.g. 403 or 410).
 *
 * @param {{url: string}} server
 * @param {object} [opts] Socket options; overrides the defaults below.
 */
export function makeSocket(server, opts = {}) {
  const { transport = "websocket", ...socketOpts } = opts
  const transportName = typeof transport === "string" ? transport : (transport === LongPoll ? "longpoll" : "websocket")
  const socket = new Socket(`${server.url}/socket`, {
    transport: typeof transport === "string" ? transportClass(transport) : transport,
    timeout: PUSH_TIMEOUT_MS,
    // fast, deterministic recovery in tests
    rejoinAfterMs: () => 100,
    reconnectAfterMs: (tries) => [10, 50, 100, 150, 200][tries - 1] || 250,
    ...socketOpts,
  })
  socket.transportKind = transportName
  socket.frames = new Inbox(`frames(${transportName} ${JSON.stringify(opts.params ?? {})})`)
  socket.events = new Inbox(`socket events (${transportName})`)
  socket.onMessage((msg) => socket.frames.add(msg))
  socket.onOpen(() => socket.events.add({ type: "open" }))
  socket.onClose((ev) => socket.events.add({ type: "close", code: ev?.code, reason: ev?.reason, wasClean: ev?.wasClean }))
  socket.onError((err) => socket.events.add({ type: "error", message: err?.message,
    value: err === null || typeof err !== "object" ? err : undefined }))
  // Remember every channel and push, so the cleanup can cancel their timers
  // (a pending rejoin or push timeout would keep node alive after the test).
  const channels = []
  const pushes = []
  const makeChannel = socket.channel.bind(socket)
  socket.channel = (topic, params) => {
    const channel = makeChannel(topic, params)
    channels.push(channel)
    const push = channel.push.bind(channel)
    channel.push = (...args) => {
      const p = push(...args)
      pushes.push(p)
      return p
    }
    return channel
  }
  track(async () => {
    await disconnectSocket(socket)
    for (const channel of channels) {
      channel.rejoinTimer.reset()
      channel.joinPush.cancelTimeout()
    }
    for (const p of pushes) p.cancelTimeout()
  })
  return socket
}

/** `socket.disconnect()` as a promise (bounded). */
export function disconnectSocket(socket, ms = 3000) {
  return withTimeout(new Promise((resolve) => socket.disconnect(() => resolve())), ms, "socket.disconnect()")
    .catch(() => { /* the socket is torn down anyway */ })
}

/** Make a socket, connect it and wait until it is open. */
export async function connectSocket(server, opts = {}) {
  const socket = makeSocket(server, opts)
  const opened = socket.events.waitFor((e) => e.type === "open" || e.type === "error",
    "socket open", { ms: WAIT_MS })
  socket.connect()
  const first = await opened
  if (first.type !== "open") {
    throw new Error(`socket with opts ${describe(opts)} did not open; got ${describe(socket.events.items)}`)
  }
  if (socket.transportKind === "longpoll" && !(socket.conn instanceof LongPoll)) {
    throw new Error(`socket with opts ${describe(opts)} opened, but not over LongPoll`)
  }
  return socket
}

/**
 * Resolve with `{status, response}` once a phoenix.js Push gets its reply
 * ("ok", "error", any other status) or times out ("timeout"). Never rejects.
 */
export function replyOf(push, statuses = []) {
  return new Promise((resolve) => {
    for (const status of ["ok", "error", "timeout", ...statuses]) {
      push.receive(status, (response) => resolve({ status, response }))
    }
  })
}

/** `channel.join()` as a promise of `{status, response}`. */
export function joinChannel(channel, timeout) {
  return replyOf(timeout === undefined ? channel.join() : channel.join(timeout))
}

/** `channel.push()` as a promise of `{status, response}`. */
export function pushChannel(channel, event, payload, timeout) {
  return replyOf(timeout === undefined ? channel.push(event, payload) : channel.push(event, payload, timeout))
}

/**
 * Create a channel, record every event it sees (`channel.seen`, an Inbox of
 * `{event, payload, ref, joinRef}` including phx_* and local events), join
 * and return `{channel, join}`.
 */
export async function join(socket, topic, params = {}, timeout) {
  const channel = recordChannel(socket.channel(topic, params))
  const reply = await joinChannel(channel, timeout)
  return { channel, join: reply }
}

/** Same as `join` but asserts an ok reply. */
export async function joinOk(socket, topic, params = {}) {
  const { channel, join: reply } = await join(socket, topic, params)
  if (reply.status !== "ok") {
    throw new Error(`join ${topic} expected ok, got ${describe(reply)}`)
  }
  return channel
}

/** Attach an Inbox `channel.seen` fed by the channel's onMessage hook. */
export function recordChannel(channel) {
  channel.seen = new Inbox(`channel ${channel.topic}`)
  const original = channel.onMessage.bind(channel)
  channel.onMessage = (event, payload, ref, joinRef) => {
    if (!event.startsWith("chan_reply_")) channel.seen.add({ event, payload, ref, joinRef })
    return original(event, payload, ref, joinRef)
  }
  return channel
}

/** Frames of a socket on one topic (predicate helper). */
export const onTopic = (topic, event) => (f) => f.topic === topic && (event === undefined || f.event === event)

// ---------------------------------------------------------------------------
// Raw `ws` clients

/**
 * Open a raw client with the given query params and wait until it is open.
 * Frames are recorded in `client.frames` (Inbox): text messages are
 * JSON-parsed (`{text, json}`), binary frames kept as Buffers (`{binary}`).
 * Both kinds of client have `sendJson`, `waitForMsg`, `waitForReply`, `close`.
 *
 * - `transport: "websocket"` (default): a `ws` WebSocket to /socket/websocket
 *   (options `protocols`, `wsOptions`), see `rawClient`;
 * - `transport: "longpoll"`: plain HTTP requests to /socket/longpoll
 *   (options `headers`, `tokenVia`), see `rawLongPoll`.
 *
 * @returns {Promise<RawClient>}
 */
export async function rawConnect(server, { transport = "websocket", params = {}, vsn = "2.0.0", protocols, wsOptions = {}, headers, tokenVia } = {}) {
  if (transport === "longpoll") {
    const client = rawLongPoll(server, { params, vsn, headers, tokenVia })
    const res = await client.open()
    if (!client.token) {
      throw new Error(`raw LongPoll session did not open: ${describe({ status: res.status, body: res.text })}`)
    }
    return client
  }
  if (transport !== "websocket") throw new Error(`unknown transport ${JSON.stringify(transport)}`)
  const client = rawClient(server, { params, vsn, protocols, wsOptions })
  await client.opened
  return client
}

/** Like rawConnect but does not wait for the open (for refusal tests). */
export function rawClient(server, { params = {}, vsn = "2.0.0", protocols, wsOptions = {} } = {}) {
  const qs = new URLSearchParams(params)
  if (vsn !== null) qs.set("vsn", vsn)
  const query = qs.toString()
  const url = `${server.url}/socket/websocket${query ? `?${query}` : ""}`
  const ws = new WebSocket(url, protocols, wsOptions)
  const frames = new Inbox(`raw ${url}`)
  const client = { ws, url, frames, transport: "websocket" }

  client.unexpectedResponse = new Promise((resolve) => {
    ws.on("unexpected-response", (_req, res) => {
      let body = ""
      res.on("data", (c) => { body += c })
      const done = () => {
        resolve({ status: res.statusCode, headers: res.headers, body })
        // with an `unexpected-response` listener ws leaves the handshake
        // pending; abort it so `opened` rejects and `closed` resolves
        ws.terminate()
      }
      res.on("end", done)
      res.on("error", done)
    })
  })
  client.opened = new Promise((resolve, reject) => {
    ws.once("open", () => resolve(client))
    ws.once("error", reject)
    ws.once("close", (code) => reject(new Error(`raw client closed before open (code ${code})`)))
  })
  client.opened.catch(() => { /* observed by callers that care */ })
  client.closed = new Promise((resolve) => {
    ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  ws.on("error", () => { /* surfaced through `opened` / `closed` */ })
  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      frames.add({ binary: Buffer.from(data) })
    } else {
      const text = data.toString("utf8")
      let json
      try { json = JSON.parse(text) } catch { json = undefined }
      frames.add({ text, json })
    }
  })

  /** Send a JS value as a JSON text frame. */
  client.sendJson = (value) => ws.send(JSON.stringify(value))
  /** Send raw bytes/string with explicit opcode. */
  client.sendRaw = (data, { binary } = {}) => ws.send(data, { binary })
  /** Wait for the first V2 frame `[join_ref, ref, topic, event, payload]` matching pred. */
  client.waitForMsg = (pred, what, opts) =>
    frames.waitFor((f) => Array.isArray(f.json) && pred(toMsg(f.json)), what, opts).then((f) => toMsg(f.json))
  /** Wait for the reply to `ref`. */
  client.waitForReply = (ref, opts) =>
    client.waitForMsg((m) => m.event === "phx_reply" && m.ref === ref, `phx_reply for ref ${ref}`, opts)
  client.close = () => {
    if (ws.readyState === WebSocket.CLOSED) return Promise.resolve()
    ws.terminate()
    return withTimeout(client.closed, 2000, "raw client close").catch(() => {})
  }
  track(() => client.close())
  return client
}

/** A text message as the raw clients record it: `{text, json}`. */
function textFrame(text) {
  let json
  try { json = JSON.parse(text) } catch { json = undefined }
  return { text, json }
}

/**
 * A raw LongPoll client (PROTOCOL.md §6) on top of fetch, with the interface
 * of the raw ws client: `frames` (one `{text, json}` per message string of the
 * GET answers), `sendJson`, `waitForMsg`, `waitForReply`, `close`. Not opened:
 * call `open()` (or use `rawConnect(server, {transport: "longpoll"})`).
 *
 * - `open()` sends the GET without token and resolves with the exchange; when
 *   the answer is `{"status":410,"token":T}` it keeps T and starts polling
 *   like phoenix.js: one GET at a time, the next one as soon as the previous
 *   answer (200/204) is in, the answer's token kept. Any other answer ends the
 *   loop and is recorded in `events` as `{type: "poll_end", status, json}`.
 * - POSTs go one at a time, in order (phoenix.js waits for each answer too).
 *   `sendJson` sends one message: for V2 as an `application/x-ndjson` line,
 *   otherwise (V1) as the whole body with type `application/json`.
 *   `sendLines` sends several ndjson lines in one POST. Answers are recorded in
 *   `posts`; the promise they return resolves with the exchange.
 * - `http` is an Inbox of every exchange `{method, url, reqHeaders, reqBody,
 *   status, headers, text, json}` (or `error`), dumped when a wait fails.
 * - `tokenVia`: `"query"` (phoenix.js 1.8: `&token=T`) or `"header"`
 *   (`X-Phoenix-Longpoll-Token: T`, phoenix.js 1.9-dev).
 * - `close()` stops polling and aborts pending requests. The server session
 *   lives on until it expires (LongPoll has no close signal).
 */
export function rawLongPoll(server, { params = {}, vsn = "2.0.0", headers = {}, tokenVia = "query" } = {}) {
  const qs = new URLSearchParams(params)
  if (vsn !== null) qs.set("vsn", vsn)
  const base = `${server.httpUrl}/socket/longpoll`
  const isV2 = typeof vsn === "string" && vsn.startsWith("2.")
  const frames = new Inbox(`raw longpoll ${base}?${qs}`)
  const httpLog = new Inbox(`http exchanges of ${base}?${qs}`)
  const events = new Inbox(`raw longpoll events ${base}?${qs}`)
  const posts = new Inbox(`POST answers ${base}?${qs}`)
  const controllers = new Set()
  let closed = false
  let polling = Promise.resolve()
  let postChain = Promise.resolve()
  const client = { transport: "longpoll", frames, http: httpLog, events, posts, token: null, vsn }

  client.urlFor = (token) => {
    const q = new URLSearchParams(qs)
    if (token && tokenVia === "query") q.set("token", token)
    const query = q.toString()
    return `${base}${query ? `?${query}` : ""}`
  }

  /** One HTTP request against the LongPoll path (token: the session's unless given). */
  client.request = async (method, { body, contentType, token = client.token, extraHeaders = {}, timeoutMs = WAIT_MS } = {}) => {
    const reqHeaders = { ...headers, ...extraHeaders }
    if (method === "GET" && !Object.keys(reqHeaders).some((k) => k.toLowerCase() === "accept")) reqHeaders.accept = "application/json"
    if (contentType) reqHeaders["content-type"] = contentType
    if (token && tokenVia === "header") reqHeaders["x-phoenix-longpoll-token"] = token
    const url = client.urlFor(token)
    const entry = { method, url, reqHeaders, reqBody: body }
    const controller = new AbortController()
    controllers.add(controller)
    let timedOut = false
    const timer = setTimeout(() => { timedOut = true; controller.abort() }, timeoutMs)
    try {
      const res = await fetch(url, { method, headers: reqHeaders, body, signal: controller.signal })
      const text = await res.text()
      Object.assign(entry, { status: res.status, headers: Object.fromEntries(res.headers), text, json: textFrame(text).json })
      httpLog.add(entry)
      return entry
    } catch (err) {
      entry.error = timedOut ? `no answer within ${timeoutMs} ms` : closed ? "aborted by close()" : `${err.name}: ${err.message}`
      httpLog.add(entry)
      throw new Error(`${method} ${url}: ${entry.error}`)
    } finally {
      clearTimeout(timer)
      controllers.delete(controller)
    }
  }

  async function pollLoop() {
    while (!closed) {
      let res
      try {
        // the server holds an idle GET for its poll window; phoenix.js gives up after 20 s
        res = await client.request("GET", { timeoutMs: 20000 })
      } catch (err) {
        if (!closed) events.add({ type: "poll_error", error: err.message })
        return
      }
      if (closed) return
      const status = res.json?.status
      if (res.status === 200 && (status === 200 || status === 204)) {
        if (typeof res.json.token === "string") client.token = res.json.token
        if (status === 200) for (const m of res.json.messages ?? []) frames.add(textFrame(m))
        continue
      }
      events.add({ type: "poll_end", status: res.status, json: res.json, text: res.text })
      return
    }
  }

  /** GET without a token; on `{"status":410,"token":T}` keep T and start polling. */
  client.open = async () => {
    const res = await client.request("GET", { token: null })
    if (res.status === 200 && res.json?.status === 410 && typeof res.json.token === "string") {
      client.token = res.json.token
      polling = pollLoop()
    }
    return res
  }

  /** POST `body` with `contentType`, after the previous POSTs were answered. */
  client.post = (body, contentType) => {
    const p = postChain.then(() => client.request("POST", { body, contentType }))
    postChain = p.catch(() => {})
    p.then((res) => posts.add(res), (err) => posts.add({ error: err.message }))
    return p
  }
  client.sendJson = (value) => client.post(JSON.stringify(value), isV2 ? "application/x-ndjson" : "application/json")
  client.sendLines = (lines) => client.post(lines.join("\n"), "application/x-ndjson")

  const withExchanges = (err) => {
    throw new Error(`${err.message}\nHTTP exchanges:\n  ${httpLog.dump()}`)
  }
  client.waitForMsg = (pred, what, opts) =>
    frames.waitFor((f) => Array.isArray(f.json) && pred(toMsg(f.json)), what, opts).then((f) => toMsg(f.json), withExchanges)
  client.waitForReply = (ref, opts) =>
    client.waitForMsg((m) => m.event === "phx_reply" && m.ref === ref, `phx_reply for ref ${ref}`, opts)
  /** Wait for a frame matching `pred` (any shape, e.g. V1 objects). */
  client.waitForFrame = (pred, what, opts) => frames.waitFor(pred, what, opts).catch(withExchanges)
  client.close = async () => {
    closed = true
    for (const c of controllers) c.abort()
    await withTimeout(polling, 2000, "raw LongPoll poll loop to stop").catch(() => {})
  }
  track(() => client.close())
  return client
}

/** V2 array → message object. */
export function toMsg([join_ref, ref, topic, event, payload]) {
  return { join_ref, ref, topic, event, payload }
}

// ---------------------------------------------------------------------------
// HTTP API

export async function httpJson(server, method, urlPath, body, { rawBody, headers = {} } = {}) {
  const init = { method, headers: { ...headers } }
  if (rawBody !== undefined) {
    init.body = rawBody
    init.headers["content-type"] ??= "application/json"
  } else if (body !== undefined) {
    init.body = JSON.stringify(body)
    init.headers["content-type"] = "application/json"
  }
  const res = await withTimeout(fetch(`${server.httpUrl}${urlPath}`, init), WAIT_MS, `${method} ${urlPath}`)
  const text = await res.text()
  let json
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: res.status, headers: res.headers, text, json }
}

export const apiBroadcast = (server, topic, event, payload) =>
  httpJson(server, "POST", "/api/broadcast", { topic, event, payload })
export const apiDisconnect = (server, socketId) =>
  httpJson(server, "POST", "/api/disconnect", { socket_id: socketId })
export const apiStats = (server) => httpJson(server, "GET", "/api/stats")
export const healthz = (server) => httpJson(server, "GET", "/healthz")

// ---------------------------------------------------------------------------
// misc

let counter = 0
/** A topic name unique within this process, e.g. uniq("room:echo"). */
export function uniq(prefix) {
  counter += 1
  return `${prefix}-${process.pid}-${counter}`
}

export const ab = (text) => new TextEncoder().encode(text).buffer
export const abText = (buf) => new TextDecoder().decode(buf)

/**
 * Join a `room:*` topic and wait until its post-join frames (the
 * `user_entered` broadcast and the `joined` push) have arrived, so that later
 * frame marks only see what the test itself causes.
 */
export async function joinRoom(socket, topic, params = {}) {
  const channel = await joinOk(socket, topic, params)
  const joinRef = channel.joinRef()
  await channel.seen.waitFor((e) => e.event === "joined" && (e.joinRef == null || e.joinRef === joinRef), `joined push on ${topic}`)
  await channel.seen.waitFor((e) => e.event === "user_entered", `user_entered broadcast on ${topic}`)
  return channel
}
