#!/usr/bin/env node
// Benchmark of the two JavaScript clients, phoenix.js (the official `phoenix`
// npm package) and fawkes.js (fawkes/js/fawkes.js), against the conformance
// app, in one run, alternating which client goes first from round to round.
//
//   node bench/clients.mjs [--rounds 5] [--json FILE] [...]   (from fawkes/js)
//   node bench/clients.mjs --aggregate FILE...                 (tables from saved rounds)
//
// Every round runs each client in a fresh Node process (a worker of this
// script, over IPC), so that neither client's JIT state, garbage or timers
// can touch the other's figures, and `process.cpuUsage()` of the worker is
// that client's CPU alone (the client, the shared `ws` package and Node's
// socket code: everything a client process spends). Both clients use the
// same `ws` (fawkes/js/node_modules/ws) as their transport. A third "client",
// `ws`, is no library at all (RawSocket below): the baseline that shows what
// of each figure any client pays and what a library adds.
//
// Phases of a worker, each after a warm-up of its own:
// - seq: sequential `echo` round trips on `room:*`, one at a time: latency
//   p50 / p99 (from just before `channel.push` to the `receive("ok")`
//   callback), and CPU per round trip;
// - pipe: `echo` with --in-flight pushes outstanding (a new push from each
//   reply's callback): pushes/s and CPU per push;
// - recv: this script's parent, as a raw `ws` client (the same for both
//   clients, outside the measured process), broadcasts `msg` through the
//   `bench:*` fast lane (`broadcast` event) to the worker's channel, paced by
//   the worker's acknowledgements so that the server never holds more than
//   --recv-ahead of them: broadcasts dispatched to a `channel.on("msg")`
//   callback per second, and CPU per broadcast;
// - local: no network at all. A fake transport (a WebSocket look-alike whose
//   `send` drops the frame) and frames handed to its `onmessage`: the cost of
//   the client's own code, push + reply at 1 and at --in-flight in flight,
//   and broadcast decode + dispatch, in µs per message (the best of 3
//   repetitions: the least disturbed by the machine's other work).
// The module sizes (raw and gzipped with node:zlib, level 9 and default 6)
// are read in the parent.
//
// Options are flags (`--seq 2000` or `--seq=2000`) or environment variables
// (`BENCH_SEQ=2000`); `--help` lists them. With the defaults a run takes about
// a minute on a 2-core machine.

import { fork, spawn } from "node:child_process"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import zlib from "node:zlib"
import WebSocket from "ws"

const HERE = path.dirname(fileURLToPath(import.meta.url))
const JS_DIR = path.resolve(HERE, "..")
const REPO = path.resolve(JS_DIR, "../..")
const FAWKES_JS = path.join(JS_DIR, "fawkes.js")
const PHOENIX_DIR = process.env.PHOENIX_DIR || path.join(REPO, "tests/interop/node_modules/phoenix")
const PHOENIX_MJS = path.join(PHOENIX_DIR, "priv/static/phoenix.mjs")
const PHOENIX_MIN = path.join(PHOENIX_DIR, "priv/static/phoenix.min.js")
// "ws": no client library, a baseline (see RawSocket)
const CLIENTS = { phoenix: PHOENIX_MJS, fawkes: FAWKES_JS, ws: null }
const LABEL = { phoenix: "phoenix.js", fawkes: "fawkes.js", ws: "bare ws" }

// ---------------------------------------------------------------------------
// Options

const OPTIONS = {
  rounds: [5, "rounds; each runs every client once, the first client alternating"],
  clients: ["phoenix,fawkes,ws", "clients to run: phoenix, fawkes, and ws (the baseline: no client library)"],
  payload: [64, "bytes of the `body` string in every payload ({\"seq\":N,\"body\":\"xxx…\"})"],
  seq: [2000, "sequential echo round trips measured"],
  seqWarmup: [500, "sequential round trips before measuring"],
  pipe: [20000, "pipelined echo pushes measured"],
  pipeWarmup: [4000, "pipelined pushes before measuring"],
  inFlight: [100, "pushes in flight in the pipelined phases (network and local)"],
  recv: [20000, "broadcasts received, measured"],
  recvWarmup: [4000, "broadcasts received before measuring"],
  recvAhead: [2000, "at most this many broadcasts sent ahead of what the client acknowledged"],
  local: [50000, "messages per in-process (fake transport) measure; the best of 3 measures counts"],
  localWarmup: [20000, "in-process messages before measuring, per phase"],
  workerTimeout: [60, "seconds a worker may take before the run fails"],
  json: ["", "append one JSON line per client and round to this file"],
}
const kebab = (k) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
const envName = (k) => `BENCH_${k.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`

function usage() {
  const lines = ["usage: node bench/clients.mjs [options]", "       node bench/clients.mjs --aggregate FILE.jsonl...", ""]
  for (const [k, [def, help]] of Object.entries(OPTIONS)) {
    lines.push(`  --${kebab(k)} (${envName(k)}, default ${JSON.stringify(def)}): ${help}`)
  }
  lines.push("", "  FAWKES_CONFORMANCE_BIN: the server binary (default target/release/fawkes-conformance)",
    "  PHOENIX_DIR: the phoenix package (default tests/interop/node_modules/phoenix)")
  return lines.join("\n")
}

function parseOptions(argv) {
  const o = {}
  for (const [k, [def]] of Object.entries(OPTIONS)) {
    const env = process.env[envName(k)]
    o[k] = env === undefined ? def : (typeof def === "number" ? Number(env) : env)
  }
  const rest = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === "--help" || arg === "-h") { console.log(usage()); process.exit(0) }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg)
    const key = m && Object.keys(OPTIONS).find((k) => kebab(k) === m[1])
    if (!key) { rest.push(arg); continue }
    const value = m[2] !== undefined ? m[2] : argv[++i]
    if (value === undefined) throw new Error(`${arg}: missing value`)
    o[key] = typeof OPTIONS[key][0] === "number" ? Number(value) : value
  }
  for (const [k, [def]] of Object.entries(OPTIONS)) {
    if (typeof def === "number" && !(Number.isFinite(o[k]) && o[k] >= 0)) throw new Error(`--${kebab(k)}: not a number >= 0`)
  }
  for (const k of ["rounds", "seq", "pipe", "inFlight", "recv", "local"]) {
    if (o[k] < 1) throw new Error(`--${kebab(k)}: must be at least 1`)
  }
  o.clients = String(o.clients).split(",").map((c) => c.trim()).filter(Boolean)
  for (const c of o.clients) if (!(c in CLIENTS)) throw new Error(`--clients: unknown client ${JSON.stringify(c)}`)
  return { o, rest }
}

// ---------------------------------------------------------------------------
// Small helpers

const cpuUs = (since) => { const d = process.cpuUsage(since); return d.user + d.system }
const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (s.length === 0) return NaN
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]
const makeBody = (n) => "x".repeat(n)

// ---------------------------------------------------------------------------
// Worker: one client, all phases

async function joinChannel(channel) {
  await new Promise((resolve, reject) => {
    channel.join()
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`join ${channel.topic}: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error(`join ${channel.topic}: timeout`)))
  })
}

function phaseSeq(channel, o) {
  const body = makeBody(o.payload)
  const total = o.seqWarmup + o.seq
  const lat = new Float64Array(o.seq)
  let i = 0
  let failures = 0
  let cpu0
  let t0
  return new Promise((resolve) => {
    const next = () => {
      if (i === total) {
        const wall = performance.now() - t0
        const cpu = cpuUs(cpu0)
        const sorted = Array.from(lat).sort((a, b) => a - b)
        resolve({
          p50_ms: quantile(sorted, 0.5), p99_ms: quantile(sorted, 0.99), max_ms: sorted[sorted.length - 1],
          cpu_us_per_msg: cpu / o.seq, cpu_share: cpu / 1000 / wall, failures,
        })
        return
      }
      if (i === o.seqWarmup) { cpu0 = process.cpuUsage(); t0 = performance.now() }
      const n = i++
      const start = performance.now()
      channel.push("echo", { seq: n, body })
        .receive("ok", (resp) => {
          const dt = performance.now() - start
          if (n >= o.seqWarmup) lat[n - o.seqWarmup] = dt
          if (!resp || resp.seq !== n) failures++
          next()
        })
        .receive("error", () => { failures++; next() })
        .receive("timeout", () => { failures++; next() })
    }
    next()
  })
}

function pipelineRun(channel, total, inFlight, body) {
  return new Promise((resolve) => {
    let sent = 0
    let done = 0
    let failures = 0
    const settle = () => {
      done++
      if (sent < total) send()
      else if (done === total) resolve(failures)
    }
    const fail = () => { failures++; settle() }
    const send = () => {
      const n = sent++
      channel.push("echo", { seq: n, body }).receive("ok", settle).receive("error", fail).receive("timeout", fail)
    }
    for (let k = 0; k < Math.min(inFlight, total); k++) send()
  })
}

async function phasePipe(channel, o) {
  const body = makeBody(o.payload)
  let failures = 0
  if (o.pipeWarmup > 0) failures += await pipelineRun(channel, o.pipeWarmup, o.inFlight, body)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  failures += await pipelineRun(channel, o.pipe, o.inFlight, body)
  const wall = performance.now() - t0
  const cpu = cpuUs(cpu0)
  return { per_s: o.pipe / (wall / 1000), cpu_us_per_msg: cpu / o.pipe, cpu_share: cpu / 1000 / wall, failures }
}

const ACK_EVERY = 500

function phaseRecv(channel, o) {
  const total = o.recvWarmup + o.recv
  let count = 0
  let bad = 0
  let cpu0
  let t0
  return new Promise((resolve) => {
    const start = () => { cpu0 = process.cpuUsage(); t0 = performance.now() }
    channel.on("msg", (payload) => {
      count++
      if (!payload || payload.seq !== count) bad++
      if (count === o.recvWarmup) start()
      if (count % ACK_EVERY === 0) process.send({ type: "ack", count })
      if (count === total) {
        const wall = performance.now() - t0
        const cpu = cpuUs(cpu0)
        resolve({ per_s: o.recv / (wall / 1000), cpu_us_per_msg: cpu / o.recv, cpu_share: cpu / 1000 / wall, out_of_order: bad })
      }
    })
    if (o.recvWarmup === 0) start()
    process.send({ type: "recv-ready", topic: channel.topic, total })
  })
}

// A WebSocket look-alike for the in-process phases: opens on the next turn,
// drops what the client sends, and lets the bench hand frames to onmessage.
class FakeTransport {
  constructor(url) {
    this.url = url
    this.readyState = 0
    this.bufferedAmount = 0
    this.binaryType = "arraybuffer"
    this.sent = 0
    this.onopen = null
    this.onmessage = null
    this.onclose = null
    this.onerror = null
    FakeTransport.last = this
    setTimeout(() => { this.readyState = 1; if (this.onopen) this.onopen({}) }, 0)
  }

  send(_data) { this.sent++ }

  close(code = 1000, reason = "") {
    this.readyState = 3
    setTimeout(() => { if (this.onclose) this.onclose({ code, reason, wasClean: true }) }, 0)
  }
}

const LOCAL_REPS = 3

async function phaseLocal(Socket, o) {
  const socket = new Socket("ws://fake.invalid/socket", { transport: FakeTransport })
  socket.connect()
  const fake = FakeTransport.last
  await new Promise((r) => setTimeout(r, 5))
  if (fake.readyState !== 1) throw new Error("fake transport did not open")
  const topic = "room:local"
  const channel = socket.channel(topic, {})
  let joined = false
  channel.join().receive("ok", () => { joined = true })
  const jr = channel.joinRef()
  fake.onmessage({ data: JSON.stringify([jr, jr, topic, "phx_reply", { status: "ok", response: {} }]) })
  if (!joined) throw new Error("local join: no ok")

  const body = makeBody(o.payload)
  const prefix = `["${jr}","`
  const out = {}

  // push + reply, k in flight: k pushes, then their k replies, in order
  const pushReply = (count, k) => {
    let got = 0
    const onOk = () => { got++ }
    const refs = new Array(k)
    let n = 0
    while (n < count) {
      const batch = Math.min(k, count - n)
      for (let j = 0; j < batch; j++) refs[j] = channel.push("echo", { seq: n + j, body }).receive("ok", onOk).ref
      for (let j = 0; j < batch; j++) {
        fake.onmessage({ data: `${prefix}${refs[j]}","${topic}","phx_reply",{"status":"ok","response":{"seq":${n + j},"body":"${body}"}}]` })
      }
      n += batch
    }
    if (got !== count) throw new Error(`local push+reply: ${got} replies of ${count}`)
  }
  // best of LOCAL_REPS: on a shared machine the least disturbed repetition
  const best = (fn) => {
    let res = null
    for (let rep = 0; rep < LOCAL_REPS; rep++) {
      const cpu0 = process.cpuUsage()
      const t0 = performance.now()
      fn()
      const wall = performance.now() - t0
      const r = { us_per_msg: (wall * 1000) / o.local, cpu_us_per_msg: cpuUs(cpu0) / o.local }
      if (!res || r.us_per_msg < res.us_per_msg) res = r
    }
    return res
  }
  for (const [name, k] of [["push_reply_1", 1], ["push_reply_pipe", o.inFlight]]) {
    pushReply(o.localWarmup, k)
    out[name] = best(() => pushReply(o.local, k))
  }

  // broadcasts: frames built beforehand, decoded and dispatched to one binding
  const frames = new Array(o.localWarmup + o.local)
  for (let i = 0; i < frames.length; i++) frames[i] = `[null,null,"${topic}","msg",{"seq":${i + 1},"body":"${body}"}]`
  let got = 0
  channel.on("msg", () => { got++ })
  for (let i = 0; i < o.localWarmup; i++) fake.onmessage({ data: frames[i] })
  out.broadcast = best(() => { for (let i = o.localWarmup; i < frames.length; i++) fake.onmessage({ data: frames[i] }) })
  if (got !== o.localWarmup + LOCAL_REPS * o.local) throw new Error(`local broadcast: ${got} dispatched`)
  if (fake.sent !== 1 + 2 * (o.localWarmup + LOCAL_REPS * o.local)) throw new Error(`local: the client sent ${fake.sent} frames`)
  socket.disconnect()
  return out
}

// The baseline: what any client must spend over `ws` (its onmessage event, a
// JSON.parse per frame, a JSON.stringify and a send per push), with nothing a
// library adds (no Push objects, bindings, timers or reconnect bookkeeping).
// It offers the few calls the network phases make: channel(topic),
// join() / push(event, payload) → receive(status, cb), on(event, cb).
class RawSocket {
  constructor(url) {
    this.ws = new WebSocket(`${url}/websocket?vsn=2.0.0`)
    this.ref = 0
    this.channels = new Map()
    this.pending = new Map()
    this.ws.onmessage = (e) => {
      const [, ref, topic, event, payload] = JSON.parse(e.data)
      if (event === "phx_reply") {
        const hooks = this.pending.get(ref)
        if (hooks) {
          this.pending.delete(ref)
          const cb = hooks[payload.status]
          if (cb) cb(payload.response)
        }
        return
      }
      const ch = this.channels.get(topic)
      const cb = ch && ch.bindings[event]
      if (cb) cb(payload)
    }
  }

  onOpen(cb) { this.ws.onopen = () => cb() }
  onError(cb) { this.ws.onerror = (e) => cb(e) }
  connect() {}
  disconnect(cb) { this.ws.onclose = () => cb(); this.ws.close() }

  channel(topic) {
    const socket = this
    const ch = {
      topic, joinRef: null, bindings: Object.create(null),
      on(event, cb) { ch.bindings[event] = cb },
      join() { const p = ch.push("phx_join", {}); ch.joinRef = p.ref; return p },
      push(event, payload) {
        const ref = String(++socket.ref)
        const hooks = Object.create(null)
        socket.pending.set(ref, hooks)
        socket.ws.send(JSON.stringify([ch.joinRef || ref, ref, topic, event, payload]))
        const push = { ref, receive(status, cb) { hooks[status] = cb; return push } }
        return push
      },
    }
    this.channels.set(topic, ch)
    return ch
  }
}

async function worker(client, port, o) {
  const { Socket } = client === "ws" ? { Socket: RawSocket } : await import(pathToFileURL(CLIENTS[client]).href)
  const result = { client }
  const socket = new Socket(`ws://127.0.0.1:${port}/socket`, { transport: WebSocket })
  await new Promise((resolve, reject) => {
    socket.onOpen(resolve)
    socket.onError((e) => reject(new Error(`socket error: ${e && e.message ? e.message : e}`)))
    socket.connect()
  })
  const room = socket.channel(`room:bench-${process.pid}`, {})
  await joinChannel(room)
  result.seq = await phaseSeq(room, o)
  result.pipe = await phasePipe(room, o)
  const rx = socket.channel(`bench:rx-${process.pid}`, {})
  await joinChannel(rx)
  result.recv = await phaseRecv(rx, o)
  await new Promise((r) => socket.disconnect(r))
  result.local = client === "ws" ? null : await phaseLocal(Socket, o)
  process.send({ type: "result", result }, () => process.exit(0))
}

// ---------------------------------------------------------------------------
// Parent: the server, the broadcaster, the rounds

const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g
const LISTENING = /listening on http:\/\/(\[[^\]]+\]|[^\s:/]+):(\d+)/

function serverBin() {
  if (process.env.FAWKES_CONFORMANCE_BIN) return process.env.FAWKES_CONFORMANCE_BIN
  for (const p of [path.join(REPO, "target/release/fawkes-conformance"), path.join(REPO, "target/debug/fawkes-conformance")]) {
    if (fs.existsSync(p)) {
      if (p.includes("/debug/")) process.stderr.write(`warning: ${p} is a debug build; the server may be the bottleneck\n`)
      return p
    }
  }
  throw new Error("no fawkes-conformance binary: set FAWKES_CONFORMANCE_BIN, or run `cargo build --release --bin fawkes-conformance`")
}

function startServer(bin) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ["--port", "0", "--host", "127.0.0.1"], { stdio: ["ignore", "pipe", "pipe"] })
    let seen = ""
    let done = false
    const timer = setTimeout(() => { if (!done) { done = true; child.kill("SIGKILL"); reject(new Error(`server did not log its port in 20 s:\n${seen}`)) } }, 20000)
    const onData = (chunk) => {
      if (done) return // keep draining
      seen += chunk.toString().replace(ANSI, "")
      const m = LISTENING.exec(seen)
      if (m) { done = true; clearTimeout(timer); resolve({ child, port: Number(m[2]) }) }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code, sig) => { if (!done) { done = true; clearTimeout(timer); reject(new Error(`server exited (${code ?? sig}):\n${seen}`)) } })
  })
}

/** A raw `ws` client that broadcasts `total` msgs to `topic`, paced by `acked()` and its own replies. */
async function broadcaster(port, topic, total, o, acked) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/socket/websocket?vsn=2.0.0`, { perMessageDeflate: false })
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject) })
  await new Promise((resolve, reject) => {
    ws.once("message", (data) => {
      const [, , , event, payload] = JSON.parse(data.toString())
      if (event === "phx_reply" && payload.status === "ok") resolve()
      else reject(new Error(`broadcaster join: ${data}`))
    })
    ws.send(JSON.stringify(["1", "1", topic, "phx_join", {}]))
  })
  const body = makeBody(o.payload)
  const WINDOW = 200
  let sent = 0
  let replies = 0
  const pump = () => {
    while (sent < total && sent - replies < WINDOW && sent - acked() < o.recvAhead) {
      sent++
      ws.send(`["1","${sent + 1}","${topic}","broadcast",{"seq":${sent},"body":"${body}"}]`)
    }
  }
  ws.on("message", (data) => { if (data.includes("\"phx_reply\"")) { replies++; pump() } })
  return { pump, close: () => ws.close() }
}

function runWorker(client, port, o) {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(import.meta.url), ["--worker", client, "--port", String(port)], {
      env: { ...process.env, BENCH_WORKER_OPTS: JSON.stringify(o) },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    })
    let acked = 0
    let sender = null
    let result = null
    const timer = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`${client}: worker timed out`)) }, o.workerTimeout * 1000)
    child.on("message", async (m) => {
      try {
        if (m.type === "recv-ready") {
          sender = await broadcaster(port, m.topic, m.total, o, () => acked)
          sender.pump()
        } else if (m.type === "ack") {
          acked = m.count
          if (sender) sender.pump()
        } else if (m.type === "result") {
          result = m.result
        }
      } catch (e) { child.kill("SIGKILL"); reject(e) }
    })
    child.once("exit", (code, sig) => {
      clearTimeout(timer)
      if (sender) sender.close()
      if (result && code === 0) resolve(result)
      else reject(new Error(`${client}: worker exited (${code ?? sig}) without a result`))
    })
  })
}

function moduleSizes() {
  const files = [
    ["fawkes.js", FAWKES_JS, "fawkes/js/fawkes.js, not minified"],
    ["phoenix.js", PHOENIX_MJS, "phoenix/priv/static/phoenix.mjs, not minified"],
    ["phoenix.min.js", PHOENIX_MIN, "phoenix/priv/static/phoenix.min.js, minified (IIFE)"],
  ]
  const out = []
  for (const [name, file, what] of files) {
    if (!fs.existsSync(file)) continue
    const raw = fs.readFileSync(file)
    out.push({
      name, what, raw: raw.length,
      gzip9: zlib.gzipSync(raw, { level: 9 }).length,
      gzip6: zlib.gzipSync(raw).length,
    })
  }
  return out
}

// ---------------------------------------------------------------------------
// Tables

const METRICS = [
  ["seq echo p50 (ms)", (r) => r.seq.p50_ms, 3, "lower"],
  ["seq echo p99 (ms)", (r) => r.seq.p99_ms, 3, "lower"],
  ["seq: client CPU per round trip (µs)", (r) => r.seq.cpu_us_per_msg, 1, "lower"],
  ["pipelined echo (pushes/s)", (r) => r.pipe.per_s, 0, "higher"],
  ["pipelined: client CPU per push (µs)", (r) => r.pipe.cpu_us_per_msg, 1, "lower"],
  ["pipelined: client CPU / wall", (r) => r.pipe.cpu_share, 2, ""],
  ["receive (broadcasts/s)", (r) => r.recv.per_s, 0, "higher"],
  ["receive: client CPU per broadcast (µs)", (r) => r.recv.cpu_us_per_msg, 1, "lower"],
  ["receive: client CPU / wall", (r) => r.recv.cpu_share, 2, ""],
  ["in-process push + reply, 1 in flight (µs)", (r) => (r.local ? r.local.push_reply_1.us_per_msg : NaN), 2, "lower"],
  ["in-process push + reply, N in flight (µs)", (r) => (r.local ? r.local.push_reply_pipe.us_per_msg : NaN), 2, "lower"],
  ["in-process broadcast decode + dispatch (µs)", (r) => (r.local ? r.local.broadcast.us_per_msg : NaN), 2, "lower"],
]

const fmt = (x, digits) => (Number.isFinite(x)
  ? x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })
  : "—")

function summaryTable(rows, clients, inFlight) {
  const byClient = Object.fromEntries(clients.map((c) => [c, rows.filter((r) => r.client === c)]))
  const n = Math.min(...clients.map((c) => byClient[c].length))
  const head = ["figure", ...clients.map((c) => `${LABEL[c]} (median of ${byClient[c].length})`)]
  const both = clients.includes("phoenix") && clients.includes("fawkes")
  // rounds where both ran: the ratio of the two within a round (seconds
  // apart, under the same load), then the median of those ratios
  const pairs = []
  if (both) {
    const key = (r) => `${r.run} ${r.round}`
    const ph = new Map(byClient.phoenix.map((r) => [key(r), r]))
    for (const f of byClient.fawkes) if (ph.has(key(f))) pairs.push([f, ph.get(key(f))])
    head.push("fawkes.js ÷ phoenix.js (of the medians)", `median of the ${pairs.length} per-round ratios`, "fawkes.js better in", "better")
  }
  const lines = [`| ${head.join(" | ")} |`, `| ${head.map(() => "---").join(" | ")} |`]
  for (const [name, get, digits, better] of METRICS) {
    const meds = Object.fromEntries(clients.map((c) => [c, median(byClient[c].map(get))]))
    const label = name.replace("N in flight", `${inFlight} in flight`)
    const cells = [label, ...clients.map((c) => fmt(meds[c], digits))]
    if (both) {
      const ratios = pairs.map(([f, p]) => get(f) / get(p))
      const wins = better ? ratios.filter((x) => (better === "lower" ? x < 1 : x > 1)).length : NaN
      cells.push(fmt(meds.fawkes / meds.phoenix, 2), fmt(median(ratios), 2),
        better ? `${wins} of ${ratios.length}` : "", better ? `${better}` : "")
    }
    lines.push(`| ${cells.join(" | ")} |`)
  }
  const failures = rows.reduce((s, r) => s + r.seq.failures + r.pipe.failures + r.recv.out_of_order, 0)
  return { table: lines.join("\n"), failures, rounds: n }
}

function roundsTable(rows) {
  const runs = [...new Set(rows.map((r) => r.run))]
  const head = ["run", "round", "client", "seq p50 / p99 (ms)", "seq CPU (µs)", "pipelined (pushes/s)", "pipe CPU (µs)",
    "receive (msgs/s)", "recv CPU (µs)", "in-process 1 / N / broadcast (µs)"]
  const lines = [`| ${head.join(" | ")} |`, `| ${head.map(() => "---").join(" | ")} |`]
  for (const r of rows) {
    lines.push(`| ${[runs.indexOf(r.run) + 1, r.round, `${LABEL[r.client]}${r.order === 0 ? " (first)" : ""}`,
      `${fmt(r.seq.p50_ms, 3)} / ${fmt(r.seq.p99_ms, 3)}`, fmt(r.seq.cpu_us_per_msg, 1),
      fmt(r.pipe.per_s, 0), fmt(r.pipe.cpu_us_per_msg, 1),
      fmt(r.recv.per_s, 0), fmt(r.recv.cpu_us_per_msg, 1),
      r.local ? `${fmt(r.local.push_reply_1.us_per_msg, 2)} / ${fmt(r.local.push_reply_pipe.us_per_msg, 2)} / ${fmt(r.local.broadcast.us_per_msg, 2)}` : "—",
    ].join(" | ")} |`)
  }
  return lines.join("\n")
}

function sizesTable(sizes) {
  const lines = ["| module | file | bytes | gzip -9 | gzip -6 |", "| --- | --- | --- | --- | --- |"]
  for (const s of sizes) lines.push(`| ${s.name} | ${s.what} | ${fmt(s.raw, 0)} | ${fmt(s.gzip9, 0)} | ${fmt(s.gzip6, 0)} |`)
  return lines.join("\n")
}

function printReport(rows, clients, inFlight, meta) {
  const { table, failures } = summaryTable(rows, clients, inFlight)
  console.log(table)
  console.log("")
  console.log(sizesTable(moduleSizes()))
  console.log("")
  console.log(roundsTable(rows))
  console.log("")
  if (meta) console.log(meta)
  console.log(`failed or mismatched replies and out-of-order broadcasts, all rounds: ${failures}`)
}

// ---------------------------------------------------------------------------
// Main

async function main() {
  const argv = process.argv.slice(2)
  if (argv[0] === "--worker") {
    const o = JSON.parse(process.env.BENCH_WORKER_OPTS)
    const port = Number(argv[argv.indexOf("--port") + 1])
    await worker(argv[1], port, o)
    return
  }
  if (argv[0] === "--aggregate") {
    const rows = []
    for (const file of argv.slice(1)) {
      for (const line of fs.readFileSync(file, "utf8").split("\n")) if (line.trim()) rows.push(JSON.parse(line))
    }
    const seen = new Set(rows.map((r) => r.client))
    const clients = Object.keys(CLIENTS).filter((c) => seen.has(c))
    printReport(rows, clients, rows[0] ? rows[0].inFlight : 0, `${rows.length} rows from ${argv.length - 1} file(s)`)
    return
  }
  const { o, rest } = parseOptions(argv)
  if (rest.length) throw new Error(`unknown arguments: ${rest.join(" ")}\n${usage()}`)
  for (const c of o.clients) if (CLIENTS[c] && !fs.existsSync(CLIENTS[c])) throw new Error(`${CLIENTS[c]} is missing (npm ci in tests/interop?)`)

  const bin = serverBin()
  const { child: server, port } = await startServer(bin)
  process.on("exit", () => { try { server.kill("SIGKILL") } catch { /* gone */ } })
  const load0 = os.loadavg()[0]
  const t0 = Date.now()
  const rows = []
  const runId = new Date().toISOString()
  try {
    for (let round = 1; round <= o.rounds; round++) {
      const order = round % 2 === 1 ? o.clients : [...o.clients].reverse()
      for (let k = 0; k < order.length; k++) {
        const client = order[k]
        const r = await runWorker(client, port, o)
        const row = { run: runId, round, order: k, inFlight: o.inFlight, payload: o.payload, load1: os.loadavg()[0], ...r }
        rows.push(row)
        process.stderr.write(`round ${round} ${LABEL[client]}: seq p50 ${fmt(r.seq.p50_ms, 3)} ms, pipelined ${fmt(r.pipe.per_s, 0)}/s, receive ${fmt(r.recv.per_s, 0)}/s, in-process broadcast ${r.local ? fmt(r.local.broadcast.us_per_msg, 2) : "—"} µs\n`)
        if (o.json) fs.appendFileSync(o.json, `${JSON.stringify(row)}\n`)
      }
    }
  } finally {
    server.kill("SIGTERM")
  }
  const meta = [
    `${o.rounds} rounds in ${((Date.now() - t0) / 1000).toFixed(0)} s; server ${bin} on 127.0.0.1:${port};`,
    `node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0] ? os.cpus()[0].model.trim() : "?"}), load average (1 min) ${load0.toFixed(2)} → ${os.loadavg()[0].toFixed(2)};`,
    `payload {"seq":N,"body":<${o.payload} bytes>}; seq ${o.seq} (+${o.seqWarmup} warm-up), pipelined ${o.pipe} (+${o.pipeWarmup}) at ${o.inFlight} in flight,`,
    `receive ${o.recv} (+${o.recvWarmup}), in-process ${o.local} (+${o.localWarmup}) per phase.`,
  ].join("\n")
  printReport(rows, o.clients, o.inFlight, meta)
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(1)
})
