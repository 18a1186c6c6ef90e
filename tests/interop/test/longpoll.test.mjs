// LongPoll-specific behaviour (PROTOCOL.md §6; CONFORMANCE_APP.md): binary
// pushes over LongPoll, clients of both transports in one room, phoenix.js's
// `longPollFallbackMs` behind a proxy that strips WebSocket upgrades, and the
// HTTP exchange itself (answer format, token in the query or a header, ndjson
// batches, stale tokens, pre-flight, other methods, the idle poll window).
// The channel scenarios themselves run over LongPoll in the other files.
import { test, describe, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

/** Record the requests phoenix.js makes (it calls the global fetch) until the next closeAll. */
function spyFetch() {
  const log = []
  const original = globalThis.fetch
  globalThis.fetch = (input, init = {}) => {
    log.push({ method: init.method ?? "GET", url: String(input), headers: { ...init.headers }, body: init.body })
    return original(input, init)
  }
  h.onCleanup(() => { globalThis.fetch = original })
  return log
}

/**
 * A tiny HTTP proxy in front of the server that forwards plain HTTP requests
 * and refuses WebSocket upgrades, like a proxy that strips them:
 * `mode` "400" answers the upgrade request with 400, "destroy" drops the TCP
 * connection. `seen` records `{method, path, upgrade}` of every request.
 */
async function startUpgradeStrippingProxy(target, mode) {
  const seen = new h.Inbox(`proxy (${mode}) requests`)
  const proxy = await h.startHttpProxy((req) => {
    seen.add({ method: req.method, path: req.url.split("?")[0], upgrade: false })
    return target
  }, {
    onUpgrade: (req, socket) => {
      seen.add({ method: req.method, path: req.url.split("?")[0], upgrade: true })
      if (mode === "400") {
        socket.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
      } else {
        socket.destroy()
      }
    },
  })
  h.onCleanup(proxy.close)
  return { ...proxy, seen }
}

describe("longpoll", { skip: !h.hasTransport("longpoll") && "FAWKES_TRANSPORTS excludes longpoll" }, () => {
  test("binary push (ArrayBuffer, sent as a base64 x-ndjson line) is answered error {reason: binary not supported on longpoll}", async () => {
    const requests = spyFetch()
    const socket = await h.connectSocket(server, { transport: "longpoll" })
    const topic = h.uniq("room:lpbin")
    const channel = await h.joinRoom(socket, topic)
    const push = channel.push("binary", h.ab("hello"))
    const ref = push.ref
    assert.deepEqual(await h.replyOf(push), { status: "error", response: { reason: "binary not supported on longpoll" } })
    const reply = socket.frames.find((m) => m.ref === ref)
    assert.deepEqual(reply, { join_ref: channel.joinRef(), ref, topic, event: "phx_reply",
      payload: { status: "error", response: { reason: "binary not supported on longpoll" } } })

    // what phoenix.js sent: a POST whose x-ndjson line is the base64 of a V2 binary push (kind 0)
    const lines = requests.filter((r) => r.method === "POST").flatMap((r) => {
      assert.equal(r.headers["Content-Type"], "application/x-ndjson")
      return r.body.split("\n")
    })
    const binaryLines = lines.filter((l) => !l.startsWith("["))
    assert.equal(binaryLines.length, 1, `one base64 line expected among the POSTed lines: ${h.describe(lines)}`)
    const bytes = Buffer.from(binaryLines[0], "base64")
    assert.equal(bytes[0], 0, "kind 0 (push)")
    assert.ok(bytes.subarray(bytes.length - "binaryhello".length).equals(Buffer.from("binaryhello")),
      `event + payload at the end: ${bytes.toString("latin1")}`)

    // the channel and the socket carry on
    assert.deepEqual(await h.pushChannel(channel, "echo", { after: "binary" }), { status: "ok", response: { after: "binary" } })
    assert.deepEqual(socket.events.filter((e) => e.type !== "open"), [], "no socket close/error")
  })

  test("mixed room: broadcasts reach a WebSocket and a LongPoll client, each with its own transport in new_msg", async () => {
    const topic = h.uniq("room:mixed")
    const ws = await h.connectSocket(server, { transport: "websocket", params: { user_id: "mx-ws" } })
    const lp = await h.connectSocket(server, { transport: "longpoll", params: { user_id: "mx-lp" } })
    const clients = [
      { name: "websocket", socket: ws, channel: await h.joinRoom(ws, topic) },
      { name: "longpoll", socket: lp, channel: await h.joinRoom(lp, topic) },
    ]

    const expectNewMsg = async (from, body, extra = {}) => {
      for (const { name, socket, channel } of clients) {
        const m = await socket.frames.waitFor((x) => x.topic === topic && x.event === "new_msg" && x.payload?.body === body,
          `new_msg ${JSON.stringify(body)} on the ${name} client`)
        assert.deepEqual(m, { join_ref: channel.joinRef(), ref: null, topic, event: "new_msg",
          payload: { body, ...extra, transport: name } }, `${name} client (sent by ${from})`)
      }
    }
    // from each transport, the sender included
    for (const { name, channel } of clients) {
      assert.deepEqual(await h.pushChannel(channel, "new_msg", { body: `from ${name}` }), { status: "ok", response: {} })
      await expectNewMsg(name, `from ${name}`)
    }
    // server-side broadcast
    assert.equal((await h.apiBroadcast(server, topic, "new_msg", { body: "from http" })).status, 200)
    await expectNewMsg("http", "from http")

    // broadcast_from (LongPoll sender) and `to` filtering reach only the other transport
    const marks = clients.map((c) => c.socket.frames.mark())
    assert.equal((await h.pushChannel(clients[1].channel, "new_msg_from", { body: "lp to others" })).status, "ok")
    assert.equal((await h.pushChannel(clients[1].channel, "new_msg", { body: "dm", to: "mx-ws" })).status, "ok")
    const others = await ws.frames.waitFor((x) => x.event === "new_msg" && x.payload.body === "lp to others",
      "broadcast_from on the websocket client", { from: marks[0] })
    assert.deepEqual(others.payload, { body: "lp to others", transport: "websocket" })
    const dm = await ws.frames.waitFor((x) => x.event === "new_msg" && x.payload.body === "dm", "dm on the websocket client", { from: marks[0] })
    assert.deepEqual(dm.payload, { body: "dm", to: "mx-ws", transport: "websocket" })
    // barrier on the LongPoll client, then it must have seen neither
    assert.equal((await h.pushChannel(clients[1].channel, "echo", {})).status, "ok")
    await h.settle(50)
    assert.deepEqual(lp.frames.filter((x) => x.event === "new_msg", marks[1]), [],
      "the LongPoll sender gets neither its broadcast_from nor a new_msg addressed to mx-ws")
  })

  for (const mode of ["400", "destroy"]) {
    test(`longPollFallbackMs: behind a proxy that ${mode === "400" ? "answers upgrades with 400" : "drops upgrade connections"}, phoenix.js falls back to LongPoll, joins and echoes`, async () => {
      const proxy = await startUpgradeStrippingProxy(server, mode)
      const socket = h.makeSocket(proxy, { transport: h.WebSocket, longPollFallbackMs: 500 })
      const opened = socket.events.waitFor((e) => e.type === "open", "socket open after the fallback", { ms: h.WAIT_MS + 500 })
      socket.connect()
      await opened
      assert.equal(socket.transport, h.LongPoll, "phoenix.js replaced its transport with LongPoll")
      assert.ok(socket.conn instanceof h.LongPoll, "the open connection is a LongPoll one")
      assert.deepEqual(proxy.seen.items[0], { method: "GET", path: "/socket/websocket", upgrade: true },
        `the WebSocket upgrade was tried first; proxy saw: ${proxy.seen.dump()}`)
      assert.ok(proxy.seen.find((r) => !r.upgrade && r.method === "GET" && r.path === "/socket/longpoll"),
        `LongPoll GETs went through the proxy: ${proxy.seen.dump()}`)

      const topic = h.uniq("room:fallback")
      const channel = await h.joinRoom(socket, topic)
      assert.deepEqual(await h.pushChannel(channel, "echo", { via: "fallback" }), { status: "ok", response: { via: "fallback" } })
      assert.equal((await h.pushChannel(channel, "new_msg", { body: "fb" })).status, "ok")
      const own = await channel.seen.waitFor((e) => e.event === "new_msg", "own new_msg after the fallback")
      assert.deepEqual(own.payload, { body: "fb", transport: "longpoll" }, "the server sees a LongPoll socket")
      assert.ok(proxy.seen.find((r) => r.method === "POST" && r.path === "/socket/longpoll"),
        `LongPoll POSTs went through the proxy: ${proxy.seen.dump()}`)
      assert.equal(proxy.seen.filter((r) => r.upgrade).length, 1, "no further WebSocket attempts once on LongPoll")
    })
  }

  test("raw: opening a session answers HTTP 200 JSON {status: 410, token, messages: []} with the common headers", async () => {
    const client = h.rawLongPoll(server)
    const res = await client.open()
    assert.equal(res.status, 200)
    assert.match(res.headers["content-type"] ?? "", /^application\/json/)
    assert.equal(res.headers["access-control-allow-origin"], "*")
    assert.equal(res.headers["cache-control"], "no-store")
    assert.equal(res.json?.status, 410, `body: ${res.text}`)
    assert.equal(typeof res.json.token, "string")
    assert.ok(res.json.token.length > 0)
    assert.deepEqual(res.json.messages, [])

    // the session works with that token (query parameter, like phoenix.js 1.8)
    const topic = h.uniq("room:lpraw")
    const post = await client.sendJson(["1", "1", topic, "phx_join", {}])
    assert.equal(post.status, 200)
    assert.deepEqual(post.json, { status: 200 }, `POST answer: ${post.text}`)
    assert.deepEqual(await client.waitForReply("1"),
      { join_ref: "1", ref: "1", topic, event: "phx_reply", payload: { status: "ok", response: {} } })
    const polled = client.http.find((e) => e.method === "GET" && e.json?.status === 200)
    assert.equal(polled.json.token, res.json.token, "poll answers echo the session token")
  })

  test("raw: the session token is also accepted in the X-Phoenix-Longpoll-Token header", async () => {
    const client = await h.rawConnect(server, { transport: "longpoll", tokenVia: "header", params: { user_id: "hdr" } })
    const topic = h.uniq("room:lphdr")
    client.sendJson(["1", "1", topic, "phx_join", {}])
    assert.equal((await client.waitForReply("1")).payload.status, "ok")
    const joined = await client.waitForMsg((m) => m.event === "joined", "joined push")
    assert.deepEqual(joined.payload, { status: "connected", user_id: "hdr" })
    client.sendJson(["1", "2", topic, "echo", { h: 1 }])
    assert.deepEqual((await client.waitForReply("2")).payload, { status: "ok", response: { h: 1 } })
    assert.ok(client.http.items.every((e) => !e.url.includes("token=")), "no token in any URL")
  })

  test("raw: several x-ndjson lines in one POST are processed in order", async () => {
    const client = await h.rawConnect(server, { transport: "longpoll" })
    const topic = h.uniq("room:lpbatch")
    const post = await client.sendLines([
      JSON.stringify(["1", "1", topic, "phx_join", {}]),
      JSON.stringify(["1", "2", topic, "echo", { n: 2 }]),
      JSON.stringify(["1", "3", topic, "error", {}]),
      JSON.stringify(["1", "4", topic, "echo", { n: 4 }]),
    ])
    assert.deepEqual(post.json, { status: 200 }, `POST answer: ${post.text}`)
    await client.waitForReply("4")
    const replies = client.frames.items.map((f) => h.toMsg(f.json)).filter((m) => m.event === "phx_reply")
    assert.deepEqual(replies.map((m) => [m.ref, m.payload]), [
      ["1", { status: "ok", response: {} }],
      ["2", { status: "ok", response: { n: 2 } }],
      ["3", { status: "error", response: { reason: "requested" } }],
      ["4", { status: "ok", response: { n: 4 } }],
    ])
  })

  test("raw: a POST with an unknown token gets {status: 410}; a GET with one opens a new session", async () => {
    const client = await h.rawConnect(server, { transport: "longpoll" })
    const bogus = `${client.token}x`
    const post = await client.request("POST", { token: bogus, body: JSON.stringify([null, "1", "phoenix", "heartbeat", {}]),
      contentType: "application/x-ndjson" })
    assert.equal(post.status, 200)
    assert.deepEqual(post.json, { status: 410 }, `POST answer: ${post.text}`)
    const get = await client.request("GET", { token: bogus })
    assert.equal(get.status, 200)
    assert.equal(get.json?.status, 410, `GET answer: ${get.text}`)
    assert.equal(typeof get.json.token, "string")
    assert.notEqual(get.json.token, client.token, "a new session, with its own token")
    assert.notEqual(get.json.token, bogus)
  })

  test("raw: a refused origin is {status: 403}; an allowed one opens a session", async () => {
    const bad = h.rawLongPoll(server, { headers: { origin: "http://evil.example" } })
    const res = await bad.open()
    assert.equal(res.status, 200)
    assert.deepEqual(res.json, { status: 403 }, `answer: ${res.text}`)
    const good = h.rawLongPoll(server, { headers: { origin: "http://localhost:8080" } })
    assert.equal((await good.open()).json?.status, 410)
  })

  test("raw: OPTIONS pre-flight answers 200 with the CORS headers; other methods get HTTP 400", async () => {
    const client = h.rawLongPoll(server)
    const pre = await client.request("OPTIONS", { extraHeaders: {
      origin: "http://localhost:3000",
      "access-control-request-method": "POST",
      "access-control-request-headers": "content-type,x-phoenix-authtoken",
    } })
    assert.equal(pre.status, 200)
    assert.equal(pre.text, "")
    assert.equal(pre.headers["access-control-allow-origin"], "*")
    assert.equal(pre.headers["access-control-allow-headers"], "content-type,x-phoenix-authtoken")
    assert.match(pre.headers["access-control-allow-methods"] ?? "", /get, post, options/i)
    assert.equal(pre.headers["access-control-max-age"], "3600")

    const put = await client.request("PUT", { body: "x", contentType: "text/plain" })
    assert.equal(put.status, 400, `PUT answer: ${put.status} ${put.text}`)
  })

  test("raw: an idle poll is answered {status: 204, token, messages: []} at the end of the poll window", async () => {
    const client = h.rawLongPoll(server)
    const open = await client.request("GET", { token: null }) // open the session without the poll loop
    assert.equal(open.json?.status, 410, `answer: ${open.text}`)
    const t0 = Date.now()
    const res = await client.request("GET", { token: open.json.token, timeoutMs: h.SESSION_END_MS })
    const elapsed = Date.now() - t0
    assert.equal(res.status, 200)
    assert.deepEqual(res.json, { status: 204, token: open.json.token, messages: [] }, `answer after ${elapsed} ms: ${res.text}`)
    assert.ok(elapsed >= h.LONGPOLL_WINDOW_MS / 2, `the poll was held for the window (answered after ${elapsed} ms)`)
  })
})
