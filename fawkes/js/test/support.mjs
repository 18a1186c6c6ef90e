// Helpers for the client's own tests: start the conformance app, wait for
// things with deadlines, clean up sockets.

import { spawn } from "node:child_process"
import { existsSync } from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"

const HERE = path.dirname(fileURLToPath(import.meta.url))
/** fawkes/js */
export const PKG_DIR = path.resolve(HERE, "..")
export const WAIT_MS = Number(process.env.FAWKES_WAIT_MS || 3000)

const LISTENING = /listening on http:\/\/(\[[^\]]+\]|[^\s:/]+):(\d+)/
const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g

export function conformanceBin() {
  const bin = path.resolve(PKG_DIR, process.env.FAWKES_CONFORMANCE_BIN || "../../target/debug/fawkes-conformance")
  if (!existsSync(bin)) {
    throw new Error(`conformance server binary not found at ${bin}; build it with ` +
      "`cargo build --bin fawkes-conformance` or set FAWKES_CONFORMANCE_BIN")
  }
  return bin
}

const running = new Set()
process.on("exit", () => { for (const c of running) { try { c.kill("SIGKILL") } catch { /* gone */ } } })

/**
 * Start the conformance app (`--port 0` unless `port` is given) and resolve
 * once it printed its `listening on http://HOST:PORT` line.
 */
export async function startServer({ port = 0, startTimeoutMs = 15000 } = {}) {
  const env = { ...process.env }
  for (const k of ["PORT", "HOST", "NODE_NAME", "PUBSUB_URL"]) delete env[k]
  env.RUST_LOG ??= "info"
  env.NO_COLOR ??= "1"
  const child = spawn(conformanceBin(), ["--port", String(port), "--host", "127.0.0.1"], { env, stdio: ["ignore", "pipe", "pipe"] })
  running.add(child)
  let output = ""
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => { running.delete(child); resolve({ code, signal }) }))
  const actualPort = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not listen within ${startTimeoutMs} ms:\n${output}`)), startTimeoutMs)
    const onData = (chunk) => {
      output += chunk.toString("utf8")
      const m = LISTENING.exec(output.replace(ANSI, ""))
      if (m) { clearTimeout(timer); resolve(Number(m[2])) }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    exited.then(({ code, signal }) => { clearTimeout(timer); reject(new Error(`server exited (code ${code}, signal ${signal}):\n${output}`)) })
  })
  return {
    port: actualPort,
    url: `ws://127.0.0.1:${actualPort}`,
    httpUrl: `http://127.0.0.1:${actualPort}`,
    logs: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
      const t = setTimeout(() => child.kill("SIGKILL"), 5000)
      await exited
      clearTimeout(t)
    },
  }
}

export function withTimeout(promise, ms, what) {
  let timer
  const deadline = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms) })
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

/** An append-only log with "wait for the first matching item" (items already seen count). */
export class Inbox {
  constructor(name) { this.name = name; this.items = []; this.waiters = [] }
  add(item) {
    this.items.push(item)
    for (const w of [...this.waiters]) {
      if (this.items.length - 1 >= w.from && w.pred(item)) {
        this.waiters.splice(this.waiters.indexOf(w), 1)
        clearTimeout(w.timer)
        w.resolve(item)
      }
    }
  }
  mark() { return this.items.length }
  filter(pred, from = 0) { return this.items.slice(from).filter(pred) }
  waitFor(pred, what, { ms = WAIT_MS, from = 0 } = {}) {
    const found = this.items.slice(from).find(pred)
    if (found !== undefined) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const w = { pred, from, resolve }
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1)
        reject(new Error(`${this.name}: timed out after ${ms} ms waiting for ${what}; got:\n  ${this.items.slice(from).map((i) => JSON.stringify(i)).join("\n  ")}`))
      }, ms)
      this.waiters.push(w)
    })
  }
}

const live = new Set()
/** Register a cleanup for `closeAll()`. */
export const onCleanup = (fn) => live.add(fn)
export async function closeAll() {
  const fns = [...live]
  live.clear()
  await Promise.allSettled(fns.map((fn) => fn()))
}

/** Socket events and decoded frames of a Socket, as Inboxes; the socket is disconnected by closeAll(). */
export function instrument(socket) {
  socket.events = new Inbox("socket events")
  socket.frames = new Inbox("frames")
  socket.onOpen(() => socket.events.add({ type: "open" }))
  socket.onClose((e) => socket.events.add({ type: "close", code: e?.code, reason: e?.reason }))
  socket.onError((e) => socket.events.add({ type: "error", value: typeof e === "object" ? e?.message : e }))
  socket.onMessage((m) => socket.frames.add(m))
  const channels = []
  const make = socket.channel.bind(socket)
  socket.channel = (topic, params) => { const c = make(topic, params); channels.push(c); return c }
  onCleanup(async () => {
    await withTimeout(new Promise((r) => socket.disconnect(r)), 3000, "disconnect").catch(() => {})
    for (const c of channels) { c.rejoinTimer.reset(); c.joinPush.cancelTimeout(); for (const p of c.pushBuffer) p.cancelTimeout() }
  })
  return socket
}

/** A Push's outcome as a promise of {status, response}. */
export function replyOf(push) {
  return new Promise((resolve) => {
    for (const status of ["ok", "error", "timeout"]) push.receive(status, (response) => resolve({ status, response }))
  })
}

export async function httpJson(server, method, urlPath, body) {
  const res = await withTimeout(fetch(`${server.httpUrl}${urlPath}`, {
    method, headers: body === undefined ? {} : { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body),
  }), WAIT_MS, `${method} ${urlPath}`)
  return { status: res.status, json: await res.json().catch(() => undefined) }
}
export const apiDisconnect = (server, socketId) => httpJson(server, "POST", "/api/disconnect", { socket_id: socketId })

let n = 0
export const uniq = (prefix) => `${prefix}-${process.pid}-${++n}`
export const hex = (buf) => Buffer.from(buf).toString("hex")
export const fromHex = (s) => { const b = Buffer.from(s.replace(/\s+/g, ""), "hex"); return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) }

/**
 * An HTTP proxy to `target` ({port}) that passes plain requests through and
 * handles WebSocket upgrades with `onUpgrade(req, socket)` (default: drop
 * them, as a proxy without WebSocket support would). `seen` logs requests.
 */
export async function startProxy(target, { onUpgrade = (_req, sock) => sock.destroy() } = {}) {
  const http = await import("node:http")
  const seen = new Inbox("proxied requests")
  const proxy = http.createServer((req, res) => {
    seen.add({ method: req.method, url: req.url })
    const up = http.request({ host: "127.0.0.1", port: target.port, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
      res.writeHead(upRes.statusCode, upRes.headers)
      upRes.pipe(res)
    })
    up.on("error", () => res.destroy())
    res.on("close", () => up.destroy())
    req.pipe(up)
  })
  proxy.on("upgrade", (req, sock) => { seen.add({ upgrade: true, url: req.url }); onUpgrade(req, sock) })
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r))
  const { port } = proxy.address()
  const handle = {
    port, seen, url: `ws://127.0.0.1:${port}`, httpUrl: `http://127.0.0.1:${port}`,
    close: () => new Promise((r) => { proxy.closeAllConnections(); proxy.close(() => r()) }),
  }
  onCleanup(() => handle.close())
  return handle
}

/** A Storage stand-in (sessionStorage) for the fallback memory. */
export class MemoryStorage {
  constructor() { this.data = new Map() }
  getItem(k) { return this.data.has(k) ? this.data.get(k) : null }
  setItem(k, v) { this.data.set(k, String(v)) }
  removeItem(k) { this.data.delete(k) }
}

/** Poll `check` until truthy, failing after `ms` (for state that has no event). */
export async function waitUntil(check, what, { ms = WAIT_MS, every = 10 } = {}) {
  const deadline = Date.now() + ms
  for (;;) {
    const v = check()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, every))
  }
}
