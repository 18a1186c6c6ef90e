// The client in a real browser (headless Chromium, when one is installed):
// global WebSocket and fetch, V2 JSON and binary frames, Presence, LongPoll.
// Skipped when no Chromium is found (CHROMIUM_PATH or CHROMIUM_BIN point at one).
import { test, before, after } from "node:test"
import assert from "node:assert/strict"
import { spawn } from "node:child_process"
import { existsSync, readFileSync, mkdtempSync, rmSync } from "node:fs"
import http from "node:http"
import os from "node:os"
import path from "node:path"
import * as h from "./support.mjs"

const CANDIDATES = [process.env.CHROMIUM_PATH, process.env.CHROMIUM_BIN, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].filter(Boolean)
const chromium = CANDIDATES.find((p) => existsSync(p))

// runs in the page; reports {name: result} to POST /result
const PAGE_SCRIPT = (wsUrl) => `
import { Socket, LongPoll, Presence } from "/fawkes.js"
const results = {}
const report = () => fetch("/result", { method: "POST", body: JSON.stringify(results) })
const reply = (push) => new Promise((resolve) => {
  for (const s of ["ok", "error", "timeout"]) push.receive(s, (response) => resolve({ status: s, response }))
})
try {
  const socket = new Socket(${JSON.stringify(wsUrl)}, { params: { user_id: "browser" }, timeout: 3000 })
  socket.connect()
  const room = socket.channel("room:browser")
  results.join = (await reply(room.join())).status
  results.echo = await reply(room.push("echo", { hello: "browser" }))
  const bin = await reply(room.push("binary", new TextEncoder().encode("hello").buffer))
  results.binary = { status: bin.status, isArrayBuffer: bin.response instanceof ArrayBuffer, text: new TextDecoder().decode(bin.response) }
  results.transport = socket.conn instanceof WebSocket ? "websocket" : "other"

  const pres = socket.channel("presence:browser", { device: "chromium" })
  const presence = new Presence(pres)
  const synced = new Promise((resolve) => presence.onSync(resolve))
  await reply(pres.join())
  await synced
  results.presence = presence.list((key, { metas }) => ({ key, device: metas[0].device }))

  const lp = new Socket(${JSON.stringify(wsUrl)}, { transport: LongPoll, params: { user_id: "browser-lp" }, timeout: 3000 })
  lp.connect()
  const lpRoom = lp.channel("room:browser-lp")
  results.lpJoin = (await reply(lpRoom.join())).status
  results.lpEcho = await reply(lpRoom.push("echo", { via: "longpoll" }))
  results.lpIsLongPoll = lp.conn instanceof LongPoll
  socket.disconnect()
  lp.disconnect()
} catch (err) {
  results.error = String(err && err.stack || err)
}
await report()
`

let server
before(async () => { if (chromium) server = await h.startServer() })
after(async () => { await h.closeAll(); await server?.stop() })

test("in headless Chromium: WebSocket join/echo/binary, Presence, LongPoll", { skip: chromium ? false : "no Chromium found" }, async () => {
  let resolveResult
  const result = new Promise((r) => { resolveResult = r })
  const source = readFileSync(path.join(h.PKG_DIR, "fawkes.js"), "utf8")
  const page = http.createServer((req, res) => {
    if (req.url === "/fawkes.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(source)
    } else if (req.url === "/result" && req.method === "POST") {
      let body = ""
      req.on("data", (c) => { body += c })
      req.on("end", () => { res.writeHead(204).end(); resolveResult(JSON.parse(body)) })
    } else if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html" })
        .end(`<!doctype html><title>fawkes</title><script type="module">${PAGE_SCRIPT(`${server.url}/socket`)}</script>`)
    } else {
      res.writeHead(404).end()
    }
  })
  await new Promise((r) => page.listen(0, "127.0.0.1", r))
  h.onCleanup(() => new Promise((r) => { page.closeAllConnections(); page.close(() => r()) }))
  const profile = mkdtempSync(path.join(os.tmpdir(), "fawkes-chromium-"))
  const browser = spawn(chromium, ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    // no connections to the outside: this machine's network is closed to them
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-breakpad", "--disable-crash-reporter", `--user-data-dir=${profile}`, `http://127.0.0.1:${page.address().port}/`], { stdio: "ignore" })
  const exited = new Promise((r) => browser.once("exit", r))
  h.onCleanup(async () => {
    // SIGTERM lets Chromium take its helper processes down with it
    browser.kill("SIGTERM")
    await h.withTimeout(exited, 3000, "Chromium to exit").catch(async () => { browser.kill("SIGKILL"); await exited })
    rmSync(profile, { recursive: true, force: true })
  })

  const results = await h.withTimeout(result, 20000, "the page's results")
  assert.equal(results.error, undefined, results.error)
  assert.equal(results.join, "ok")
  assert.deepEqual(results.echo, { status: "ok", response: { hello: "browser" } })
  assert.deepEqual(results.binary, { status: "ok", isArrayBuffer: true, text: "hello world" })
  assert.equal(results.transport, "websocket")
  assert.deepEqual(results.presence, [{ key: "browser", device: "chromium" }])
  assert.equal(results.lpJoin, "ok")
  assert.deepEqual(results.lpEcho, { status: "ok", response: { via: "longpoll" } })
  assert.equal(results.lpIsLongPoll, true)
})
