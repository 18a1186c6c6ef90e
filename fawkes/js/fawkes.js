// Fawkes's JavaScript client for Phoenix Channels.
//
// One dependency-free ES module that speaks the Phoenix socket protocol
// (V2 JSON, V2 binary frames, V1 JSON; WebSocket and LongPoll transports) and
// exposes the same API as phoenix.js 1.8 (`Socket`, `Channel`, `Push`,
// `Presence`, `LongPoll`, `Serializer`), so code written for one runs on the
// other. It runs in browsers and in Node >= 20 (pass `transport: WebSocket`
// from the `ws` package where there is no global WebSocket).
//
// Differences from phoenix.js, all opt-out or additive:
// - the default reconnect and rejoin back-offs are exponential with a cap and
//   randomised ("jitter"), so that clients dropped together by a server
//   restart do not all come back in the same millisecond (`jitteredBackoff`);
//   a user-given `reconnectAfterMs` / `rejoinAfterMs` still wins;
// - `socket.setParams(paramsOrFn)` and `socket.setAuthToken(tokenOrFn)`
//   replace what the next (re)connect presents, e.g. a refreshed token;
// - `vsn: "1.0.0"` without custom `encode`/`decode` uses a built-in V1
//   serializer (phoenix.js would send V2 arrays to a V1 server), over
//   WebSocket and LongPoll;
// - auth tokens are base64-encoded from UTF-8, so non-Latin-1 tokens work;
// - a frame that does not decode is dropped and logged, not thrown;
// - a channel's bindings are kept by event, so a reply does not scan
//   every push in flight.

const globalRef = typeof self !== "undefined" ? self : (typeof window !== "undefined" ? window : globalThis)
const pageWindow = typeof window !== "undefined" ? window : null

export const DEFAULT_VSN = "2.0.0"
export const DEFAULT_TIMEOUT = 10000
export const WS_CLOSE_NORMAL = 1000
export const SOCKET_STATES = Object.freeze({ connecting: 0, open: 1, closing: 2, closed: 3 })
export const CHANNEL_STATES = Object.freeze({
  closed: "closed", errored: "errored", joined: "joined", joining: "joining", leaving: "leaving",
})
export const CHANNEL_EVENTS = Object.freeze({
  close: "phx_close", error: "phx_error", join: "phx_join", reply: "phx_reply", leave: "phx_leave",
})
export const TRANSPORTS = Object.freeze({ longpoll: "longpoll", websocket: "websocket" })
export const AUTH_TOKEN_PREFIX = "base64url.bearer.phx."
// the server processes at most this many ndjson lines per POST (PROTOCOL.md §6)
const MAX_LONGPOLL_BATCH = 100

const isMessage = (m) => m !== null && typeof m === "object" && typeof m.topic === "string" && typeof m.event === "string"
const toFn = (value) => (typeof value === "function" ? value : () => value)
const noop = () => {}

/**
 * Exponential back-off with a cap and "equal jitter": the delay for attempt
 * `tries` (1-based) is drawn uniformly from [d/2, d] where d = min(cap,
 * base * 2^(tries-1)). Never zero, so a retry loop cannot spin, and spread
 * over a window that doubles each time, so a crowd of clients thins out.
 */
export function jitteredBackoff(tries, baseMs, capMs, random = Math.random) {
  const n = Math.max(1, tries | 0)
  const d = Math.min(capMs, baseMs * 2 ** Math.min(n - 1, 30))
  return Math.round(d / 2 + random() * (d / 2))
}

/** Default socket reconnect delays: 100–200 ms first, doubling up to 5–10 s. */
export const defaultReconnectAfterMs = (tries) => jitteredBackoff(tries, 200, 10000)
/** Default channel rejoin delays: 0.5–1 s first, doubling up to 5–10 s. */
export const defaultRejoinAfterMs = (tries) => jitteredBackoff(tries, 1000, 10000)

// base64 of the UTF-8 bytes (btoa alone rejects characters above U+00FF)
function utf8ToBase64(text) {
  const bytes = new TextEncoder().encode(text)
  let bin = ""
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i])
  return btoa(bin)
}
function base64ToUtf8(b64) {
  const bin = atob(b64.replace(/-/g, "+").replace(/_/g, "/"))
  const bytes = new Uint8Array(bin.length)
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i)
  return new TextDecoder().decode(bytes)
}
function bytesToBase64(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer)
  let bin = ""
  // chunked, as String.fromCharCode(...huge) overflows the stack
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000))
  return btoa(bin)
}

const isBinary = (v) => v instanceof ArrayBuffer || ArrayBuffer.isView(v) ||
  (v != null && typeof v === "object" && Object.prototype.toString.call(v) === "[object ArrayBuffer]")
const asBytes = (v) => (ArrayBuffer.isView(v) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : new Uint8Array(v))

// ---------------------------------------------------------------------------
// Query strings (phoenix.js encoding: nested objects in bracket notation)

function serializeParams(obj, parentKey) {
  const parts = []
  for (const key of Object.keys(obj)) {
    const name = parentKey ? `${parentKey}[${key}]` : key
    const value = obj[key]
    // null and undefined are left out (phoenix.js also sends nothing for them)
    if (value === null || value === undefined) continue
    if (typeof value === "object") {
      const nested = serializeParams(value, name)
      if (nested) parts.push(nested)
    } else {
      parts.push(`${encodeURIComponent(name)}=${encodeURIComponent(value)}`)
    }
  }
  return parts.join("&")
}

function appendParams(url, params) {
  if (!params || Object.keys(params).length === 0) return url
  const query = serializeParams(params)
  if (!query) return url
  return `${url}${url.includes("?") ? "&" : "?"}${query}`
}

// ---------------------------------------------------------------------------
// Timer

/** A retry timer whose delay depends on how many times it already fired. */
export class Timer {
  constructor(callback, timerCalc) {
    this.callback = callback
    this.timerCalc = timerCalc
    this.timer = null
    this.tries = 0
  }

  reset() {
    this.tries = 0
    clearTimeout(this.timer)
    this.timer = null
  }

  /** Replaces any pending schedule; fires after timerCalc(tries + 1). */
  scheduleTimeout() {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.timer = null
      this.tries += 1
      this.callback()
    }, this.timerCalc(this.tries + 1))
  }
}

// ---------------------------------------------------------------------------
// Serializer

const KIND_PUSH = 0
const KIND_REPLY = 1
const KIND_BROADCAST = 2

function checkField(bytes, name) {
  if (bytes.byteLength > 255) {
    throw new Error(`unable to convert ${name} to binary: must be less than or equal to 255 bytes, but is ${bytes.byteLength} bytes`)
  }
  return bytes
}

/**
 * The default (V2) serializer: JSON arrays `[join_ref, ref, topic, event,
 * payload]` in text frames, and binary frames (PROTOCOL.md §2.3) when the
 * payload is binary. `Serializer.V1` is the V1 object form.
 */
export const Serializer = {
  HEADER_LENGTH: 1,
  META_LENGTH: 4,
  KINDS: { push: KIND_PUSH, reply: KIND_REPLY, broadcast: KIND_BROADCAST },

  encode(msg, callback) {
    if (isBinary(msg.payload)) return callback(this.binaryEncode(msg))
    return callback(JSON.stringify([msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload]))
  },

  decode(raw, callback) {
    if (typeof raw !== "string") return callback(this.binaryDecode(raw))
    const [join_ref, ref, topic, event, payload] = JSON.parse(raw)
    return callback({ join_ref, ref, topic, event, payload })
  },

  /** Kind 0 client push: 5 header bytes, then join_ref, ref, topic, event, payload. */
  binaryEncode({ join_ref, ref, topic, event, payload }) {
    const enc = new TextEncoder()
    const fields = [
      checkField(enc.encode(join_ref == null ? "" : String(join_ref)), "join_ref"),
      checkField(enc.encode(ref == null ? "" : String(ref)), "ref"),
      checkField(enc.encode(topic), "topic"),
      checkField(enc.encode(event), "event"),
    ]
    const body = asBytes(payload)
    const headerLen = 5 + fields.reduce((n, f) => n + f.byteLength, 0)
    const out = new Uint8Array(headerLen + body.byteLength)
    out[0] = KIND_PUSH
    let offset = 1
    for (const f of fields) out[offset++] = f.byteLength
    for (const f of fields) { out.set(f, offset); offset += f.byteLength }
    out.set(body, offset)
    return out.buffer
  },

  /** Decodes kinds 0 (server push), 1 (reply) and 2 (broadcast). */
  binaryDecode(raw) {
    const bytes = asBytes(raw)
    const dec = new TextDecoder()
    const need = (n) => { if (n > bytes.byteLength) throw new Error("binary frame: header longer than the frame") }
    need(1)
    const kind = bytes[0]
    const readFields = (lengths, start) => {
      let offset = start
      const out = lengths.map((len) => {
        need(offset + len)
        const s = dec.decode(bytes.subarray(offset, offset + len))
        offset += len
        return s
      })
      // a copy, so the payload owns exactly its bytes
      out.push(bytes.slice(offset).buffer)
      return out
    }
    switch (kind) {
      case KIND_PUSH: {
        need(4)
        const [join_ref, topic, event, payload] = readFields([bytes[1], bytes[2], bytes[3]], 4)
        return { join_ref, ref: null, topic, event, payload }
      }
      case KIND_REPLY: {
        need(5)
        const [join_ref, ref, topic, status, response] = readFields([bytes[1], bytes[2], bytes[3], bytes[4]], 5)
        return { join_ref, ref, topic, event: CHANNEL_EVENTS.reply, payload: { status, response } }
      }
      case KIND_BROADCAST: {
        need(3)
        const [topic, event, payload] = readFields([bytes[1], bytes[2]], 3)
        return { join_ref: null, ref: null, topic, event, payload }
      }
      default:
        throw new Error(`binary frame: unknown kind ${kind}`)
    }
  },

  /** V1: one JSON object per frame; no binary form. */
  V1: {
    encode(msg, callback) {
      if (isBinary(msg.payload)) throw new Error("the V1 serializer (vsn 1.0.0) cannot send binary payloads")
      const { topic, event, payload, ref, join_ref } = msg
      return callback(JSON.stringify({ topic, event, payload, ref, join_ref }))
    },
    decode(raw, callback) {
      const { topic, event, payload, ref, join_ref = null } = JSON.parse(raw)
      return callback({ join_ref, ref, topic, event, payload })
    },
  },
}

// ---------------------------------------------------------------------------
// Push

/** One message to the server, with callbacks for its reply or timeout. */
export class Push {
  constructor(channel, event, payload, timeout) {
    this.channel = channel
    this.event = event
    this.payload = payload || (() => ({}))
    this.receivedResp = null
    this.timeout = timeout
    this.timeoutTimer = null
    this.recHooks = []
    this.sent = false
    this.ref = null
    this.refEvent = null
  }

  resend(timeout) {
    this.timeout = timeout
    this.reset()
    this.send()
  }

  send() {
    // a timed-out push stays timed out; resend() starts over
    if (this.hasReceived("timeout")) return
    this.startTimeout()
    this.sent = true
    this.channel.socket.push({
      topic: this.channel.topic,
      event: this.event,
      payload: this.payload(),
      ref: this.ref,
      join_ref: this.channel.joinRef(),
    }, this.channel)
  }

  /** Calls `callback(response)` when the reply has `status` (also if it already came). */
  receive(status, callback) {
    if (this.hasReceived(status)) callback(this.receivedResp.response)
    this.recHooks.push({ status, callback })
    return this
  }

  reset() {
    this.cancelRefEvent()
    this.ref = null
    this.refEvent = null
    this.receivedResp = null
    this.sent = false
  }

  matchReceive({ status, response }) {
    for (const hook of this.recHooks.filter((h) => h.status === status)) hook.callback(response)
  }

  cancelRefEvent() {
    if (this.refEvent) this.channel.off(this.refEvent)
  }

  cancelTimeout() {
    clearTimeout(this.timeoutTimer)
    this.timeoutTimer = null
  }

  startTimeout() {
    if (this.timeoutTimer) this.cancelTimeout()
    this.cancelRefEvent()
    this.ref = this.channel.socket.makeRef()
    this.refEvent = this.channel.replyEventName(this.ref)
    this.channel.on(this.refEvent, (payload) => {
      this.cancelRefEvent()
      this.cancelTimeout()
      this.receivedResp = payload
      this.matchReceive(payload)
    })
    this.timeoutTimer = setTimeout(() => this.trigger("timeout", {}), this.timeout)
  }

  hasReceived(status) {
    return !!this.receivedResp && this.receivedResp.status === status
  }

  trigger(status, response) {
    this.channel.trigger(this.refEvent, { status, response })
  }
}

// ---------------------------------------------------------------------------
// Channel

/** One topic joined over a socket; rejoins by itself after errors. */
export class Channel {
  constructor(topic, params, socket) {
    this.state = CHANNEL_STATES.closed
    this.topic = topic
    this.params = toFn(params || {})
    this.socket = socket
    // event -> its bindings, so a message (a reply above all) reaches its
    // callbacks without a scan of every binding of the channel
    this.bindingsByEvent = new Map()
    this.bindingRef = 0
    this.timeout = socket.timeout
    this.joinedOnce = false
    this.joinPush = new Push(this, CHANNEL_EVENTS.join, this.params, this.timeout)
    this.pushBuffer = []
    this.stateChangeRefs = []

    this.rejoinTimer = new Timer(() => {
      if (this.socket.isConnected()) this.rejoin()
    }, (tries) => this.socket.rejoinAfterMs(tries))
    this.stateChangeRefs.push(this.socket.onError(() => this.rejoinTimer.reset()))
    this.stateChangeRefs.push(this.socket.onOpen(() => {
      this.rejoinTimer.reset()
      if (this.isErrored()) this.rejoin()
    }))

    this.joinPush.receive("ok", () => {
      this.state = CHANNEL_STATES.joined
      this.rejoinTimer.reset()
      const buffered = this.pushBuffer
      this.pushBuffer = []
      for (const p of buffered) p.send()
    })
    this.joinPush.receive("error", () => {
      this.state = CHANNEL_STATES.errored
      if (this.socket.isConnected()) this.rejoinTimer.scheduleTimeout()
    })
    this.joinPush.receive("timeout", () => {
      this.log(`timeout ${this.topic} (${this.joinRef()})`, this.joinPush.timeout)
      // the server may still have joined: tell it to leave before retrying
      new Push(this, CHANNEL_EVENTS.leave, () => ({}), this.timeout).send()
      this.state = CHANNEL_STATES.errored
      this.joinPush.reset()
      if (this.socket.isConnected()) this.rejoinTimer.scheduleTimeout()
    })
    this.onClose(() => {
      this.rejoinTimer.reset()
      this.log(`close ${this.topic} ${this.joinRef()}`)
      this.state = CHANNEL_STATES.closed
      this.socket.remove(this)
    })
    this.onError((reason) => {
      this.log(`error ${this.topic}`, reason)
      if (this.isJoining()) this.joinPush.reset()
      this.state = CHANNEL_STATES.errored
      if (this.socket.isConnected()) this.rejoinTimer.scheduleTimeout()
    })
    this.on(CHANNEL_EVENTS.reply, (payload, ref) => this.trigger(this.replyEventName(ref), payload))
  }

  log(msg, data) {
    if (this.socket.hasLogger()) this.socket.log("channel", msg, data)
  }

  /** Joins once per Channel object; returns the join Push. */
  join(timeout = this.timeout) {
    if (this.joinedOnce) {
      throw new Error("tried to join multiple times. 'join' can only be called a single time per channel instance")
    }
    this.timeout = timeout
    this.joinedOnce = true
    this.rejoin()
    return this.joinPush
  }

  onClose(callback) { return this.on(CHANNEL_EVENTS.close, callback) }

  onError(callback) { return this.on(CHANNEL_EVENTS.error, (reason) => callback(reason)) }

  /** Subscribes to `event`; returns a ref for `off`. */
  on(event, callback) {
    const ref = this.bindingRef++
    const binding = { event, ref, callback }
    const list = this.bindingsByEvent.get(event)
    // copy on write (here and in off): a trigger in progress keeps its list
    this.bindingsByEvent.set(event, list ? [...list, binding] : [binding])
    return ref
  }

  /** Removes the binding `ref` of `event`, or all bindings of `event`. */
  off(event, ref) {
    const list = this.bindingsByEvent.get(event)
    if (!list) return
    const rest = ref === undefined ? [] : list.filter((b) => b.ref !== ref)
    if (rest.length > 0) this.bindingsByEvent.set(event, rest)
    else this.bindingsByEvent.delete(event)
  }

  /** Every binding, in the order of `on` (phoenix.js's `bindings` array; read only). */
  get bindings() {
    return [...this.bindingsByEvent.values()].flat().sort((a, b) => a.ref - b.ref)
  }

  canPush() { return this.socket.isConnected() && this.isJoined() }

  /** Sends `event`; buffered until joined. A binary payload (ArrayBuffer) goes as a binary frame. */
  push(event, payload, timeout = this.timeout) {
    payload = payload || {}
    if (!this.joinedOnce) {
      throw new Error(`tried to push '${event}' to '${this.topic}' before joining. Use channel.join() before pushing events`)
    }
    const push = new Push(this, event, () => payload, timeout)
    if (this.canPush()) {
      push.send()
    } else {
      // the timeout runs while buffered, so a push never waits forever
      push.startTimeout()
      this.pushBuffer.push(push)
    }
    return push
  }

  /** Leaves the topic; the channel is closed (and removed from the socket). */
  leave(timeout = this.timeout) {
    this.rejoinTimer.reset()
    this.joinPush.cancelTimeout()
    this.state = CHANNEL_STATES.leaving
    const onClose = () => {
      this.log(`leave ${this.topic}`)
      this.trigger(CHANNEL_EVENTS.close, "leave")
    }
    const leavePush = new Push(this, CHANNEL_EVENTS.leave, () => ({}), timeout)
    leavePush.receive("ok", onClose).receive("timeout", onClose)
    leavePush.send()
    // as phoenix.js: the channel closes locally right away, the server's
    // answer only matters to the raw frames
    if (!this.canPush()) leavePush.trigger("ok", {})
    return leavePush
  }

  /** Overridable hook run on every message before the bindings; must return the payload. */
  onMessage(_event, payload, _ref, _joinRef) { return payload }

  isMember(topic, event, payload, joinRef) {
    if (this.topic !== topic) return false
    // messages of an earlier join of this topic are not ours
    if (joinRef && joinRef !== this.joinRef()) {
      this.log("dropping outdated message", { topic, event, payload, joinRef })
      return false
    }
    return true
  }

  joinRef() { return this.joinPush.ref }

  rejoin(timeout = this.timeout) {
    if (this.isLeaving()) return
    this.socket.leaveOpenTopic(this.topic)
    this.state = CHANNEL_STATES.joining
    this.joinPush.resend(timeout)
  }

  trigger(event, payload, ref, joinRef) {
    const handled = this.onMessage(event, payload, ref, joinRef)
    if (payload && !handled) throw new Error("channel onMessage callbacks must return the payload, modified or unmodified")
    const list = this.bindingsByEvent.get(event)
    if (!list) return
    // a snapshot: callbacks that add or remove bindings replace the list
    for (const b of list) {
      b.callback(handled, ref, joinRef || this.joinRef())
    }
  }

  replyEventName(ref) { return `chan_reply_${ref}` }

  isClosed() { return this.state === CHANNEL_STATES.closed }
  isErrored() { return this.state === CHANNEL_STATES.errored }
  isJoined() { return this.state === CHANNEL_STATES.joined }
  isJoining() { return this.state === CHANNEL_STATES.joining }
  isLeaving() { return this.state === CHANNEL_STATES.leaving }
}

// ---------------------------------------------------------------------------
// LongPoll

/**
 * The LongPoll transport: a WebSocket look-alike (readyState, onopen,
 * onmessage, onerror, onclose, send, close) over HTTP GET polls and batched
 * `application/x-ndjson` POSTs (PROTOCOL.md §6).
 */
export class LongPoll {
  constructor(endPoint, protocols) {
    // the only sub-protocol use is the bearer token: ["phoenix", "base64url.bearer.phx.<B>"]
    if (protocols && protocols.length === 2 && String(protocols[1]).startsWith(AUTH_TOKEN_PREFIX)) {
      this.authToken = base64ToUtf8(protocols[1].slice(AUTH_TOKEN_PREFIX.length))
    }
    this.endPoint = null
    this.token = null
    this.skipHeartbeat = true
    this.timeout = 20000
    this.reqs = new Set()
    this.messageTimers = new Set()
    this.awaitingBatchAck = false
    this.currentBatch = null
    this.currentBatchTimer = null
    this.batchBuffer = []
    this.onopen = noop
    this.onerror = noop
    this.onmessage = noop
    this.onclose = noop
    this.pollEndpoint = this.normalizeEndpoint(endPoint)
    this.readyState = SOCKET_STATES.connecting
    // deferred, so the caller can set callbacks and timeout (or close us) first
    setTimeout(() => this.poll(), 0)
  }

  normalizeEndpoint(endPoint) {
    return endPoint
      .replace("ws://", "http://")
      .replace("wss://", "https://")
      .replace(new RegExp(`(.*)/${TRANSPORTS.websocket}`), `$1/${TRANSPORTS.longpoll}`)
  }

  endpointURL() { return appendParams(this.pollEndpoint, { token: this.token }) }

  isActive() { return this.readyState === SOCKET_STATES.open || this.readyState === SOCKET_STATES.connecting }

  /** Like a failed WebSocket: error, then close; we are "connecting" again meanwhile. */
  closeAndRetry(error, code, reason, wasClean) {
    if (!this.isActive()) return
    this.stop(SOCKET_STATES.connecting)
    this.onerror(error)
    if (this.isActive()) this.emitClose(code, reason, wasClean)
  }

  ontimeout() { this.closeAndRetry("timeout", 1005, "timeout", false) }

  poll() {
    if (!this.isActive()) return
    const headers = { Accept: "application/json" }
    if (this.authToken) headers["X-Phoenix-AuthToken"] = this.authToken
    this.request("GET", headers, null, (resp) => {
      let status = 0
      let messages = []
      if (resp) {
        status = resp.status
        messages = resp.messages || []
        if (status === 410 && this.token !== null) {
          // our session is gone on the server: fail so the channels rejoin
          this.closeAndRetry(410, 3410, "session_gone", false)
          return
        }
        this.token = resp.token
      }
      switch (status) {
        case 200:
          // one macrotask per message, as WebSocket messages are separate events
          for (const msg of messages) {
            const timer = setTimeout(() => {
              this.messageTimers.delete(timer)
              this.onmessage({ data: msg })
            }, 0)
            this.messageTimers.add(timer)
          }
          this.poll()
          break
        case 204:
          this.poll()
          break
        case 410:
          this.readyState = SOCKET_STATES.open
          this.onopen({})
          this.poll()
          break
        case 403:
          this.onerror(403)
          this.close(1008, "forbidden", false)
          break
        default:
          // no answer, 500, or a status the protocol does not define
          this.closeAndRetry(status === 0 ? 500 : status, 1011, "internal server error", false)
      }
    })
  }

  /** Queues one encoded message; messages of one event-loop turn go in one POST. */
  send(body) {
    if (typeof body !== "string") body = bytesToBase64(asBytes(body))
    if (this.currentBatch) {
      this.currentBatch.push(body)
    } else if (this.awaitingBatchAck) {
      this.batchBuffer.push(body)
    } else {
      this.currentBatch = [body]
      this.currentBatchTimer = setTimeout(() => {
        const batch = this.currentBatch
        this.currentBatch = null
        this.currentBatchTimer = null
        this.batchSend(batch)
      }, 0)
    }
  }

  batchSend(messages, offset = 0) {
    this.awaitingBatchAck = true
    // ndjson lines are V2 arrays or base64 binary; a V1 object ("{…}") has
    // to be a POST of its own, which the server reads as one message
    const v1 = messages[offset].charAt(0) === "{"
    const next = v1 ? offset + 1 : offset + MAX_LONGPOLL_BATCH
    const body = v1 ? messages[offset] : messages.slice(offset, next).join("\n")
    const contentType = v1 ? "application/json" : "application/x-ndjson"
    this.request("POST", { "Content-Type": contentType }, body, (resp) => {
      if (!resp || resp.status !== 200) {
        this.closeAndRetry(resp && resp.status, 1011, "internal server error", false)
      } else if (next < messages.length) {
        this.batchSend(messages, next)
      } else if (this.batchBuffer.length > 0) {
        const buffered = this.batchBuffer
        this.batchBuffer = []
        this.batchSend(buffered)
      } else {
        this.awaitingBatchAck = false
      }
    })
  }

  close(code, reason, wasClean) {
    this.stop(SOCKET_STATES.closed)
    this.emitClose(code, reason, wasClean)
  }

  /** Cancels pending requests, queued messages and outgoing batches. */
  stop(readyState) {
    this.readyState = readyState
    const reqs = this.reqs
    this.reqs = new Set()
    for (const r of reqs) r.controller.abort()
    for (const t of this.messageTimers) clearTimeout(t)
    this.messageTimers.clear()
    this.batchBuffer = []
    this.awaitingBatchAck = false
    clearTimeout(this.currentBatchTimer)
    this.currentBatchTimer = null
    this.currentBatch = null
  }

  // 1005 (no status) by default: 1000 would look like a normal server close
  emitClose(code = 1005, reason, wasClean = true) {
    const init = { code, reason, wasClean }
    this.onclose(typeof CloseEvent !== "undefined" ? new CloseEvent("close", init) : init)
  }

  /** One request; its callbacks only run while it is still ours (not stopped). */
  request(method, headers, body, callback) {
    const entry = { controller: new AbortController() }
    this.reqs.add(entry)
    const url = this.endpointURL()
    const timeout = this.timeout
    const timer = timeout ? setTimeout(() => entry.controller.abort(), timeout) : null
    globalRef.fetch(url, { method, headers, body, signal: entry.controller.signal })
      .then((res) => res.text())
      .then((text) => {
        if (!text) return null
        try { return JSON.parse(text) } catch { return null }
      })
      .then((resp) => {
        clearTimeout(timer)
        if (this.reqs.delete(entry)) callback(resp)
      }, (err) => {
        clearTimeout(timer)
        if (!this.reqs.delete(entry)) return
        if (err && err.name === "AbortError") this.ontimeout()
        else callback(null)
      })
  }
}

// ---------------------------------------------------------------------------
// Socket

/**
 * One transport instance of the socket and what belongs to it: the joins it
 * carried and the pings sent over it. Events of a replaced connection are
 * ignored, so nothing about an old connection can touch a newer one.
 */
class Connection {
  constructor(socket, transport) {
    this.socket = socket
    this.transport = transport
    this.joins = new WeakMap()
    this.pings = new Map()
    this.closing = false // we closed it (as opposed to the server or the network)
    this.ended = false // the socket gave up on it (disconnect, replaceTransport)
    this.channelsErrored = false
    this.closeHandled = false
    this.closedWaiters = []
    transport.onopen = () => { if (this.isCurrent()) socket.onConnOpen() }
    transport.onerror = (error) => { if (this.isCurrent()) socket.onConnError(error) }
    transport.onmessage = (event) => { if (this.isCurrent()) socket.onConnMessage(event) }
    transport.onclose = (event) => {
      // LongPoll may emit close more than once
      if (this.isCurrent() && !this.closeHandled) {
        this.closeHandled = true
        socket.onConnClose(event)
      }
      if (this.transport.readyState === SOCKET_STATES.closed) this.notifyClosed()
    }
  }

  isCurrent() { return this.socket.connection === this }
  isOpen() { return this.transport.readyState === SOCKET_STATES.open }
  isConnecting() { return this.transport.readyState === SOCKET_STATES.connecting }
  carried(channel, joinRef = channel.joinRef()) { return this.joins.has(channel) && this.joins.get(channel) === joinRef }

  close(code, reason) {
    this.closing = true
    // closing a connecting transport makes it emit an error we caused ourselves
    this.transport.onerror = noop
    if (code) this.transport.close(code, reason || "")
    else this.transport.close()
  }

  /** Calls `callback` once the transport is closed, or after `ms` at the latest. */
  whenClosed(ms, callback) {
    if (this.transport.readyState === SOCKET_STATES.closed) return callback()
    let done = false
    const finish = () => { if (!done) { done = true; clearTimeout(timer); callback() } }
    const timer = setTimeout(finish, ms)
    this.closedWaiters.push(finish)
  }

  notifyClosed() {
    const waiters = this.closedWaiters
    this.closedWaiters = []
    for (const w of waiters) w()
  }
}

/**
 * A socket to a Phoenix-protocol server, multiplexing channels over one
 * WebSocket (or LongPoll) connection, with heartbeats and reconnects.
 */
export class Socket {
  constructor(endPoint, opts = {}) {
    this.stateChangeCallbacks = { open: [], close: [], error: [], message: [] }
    this.channels = []
    this.sendBuffer = []
    this.ref = 0
    this.fallbackRef = null
    this.fallbackErrorRef = null
    this.timeout = opts.timeout || DEFAULT_TIMEOUT
    this.transport = opts.transport || globalRef.WebSocket || LongPoll
    this.primaryPassedHealthCheck = false
    this.longPollFallbackMs = opts.longPollFallbackMs
    this.fallbackTimer = null
    this.sessionStore = opts.sessionStorage || (globalRef && globalRef.sessionStorage)
    this.establishedConnections = 0
    this.vsn = opts.vsn || DEFAULT_VSN
    const base = this.vsn.startsWith("1.") ? Serializer.V1 : Serializer
    this.defaultEncoder = base.encode.bind(base)
    this.defaultDecoder = base.decode.bind(base)
    // nothing to reconnect until the first connect
    this.closeWasClean = true
    this.binaryType = opts.binaryType || "arraybuffer"
    this.connection = null
    // bumped on connect, disconnect and transport replacement, so that
    // deferred work can tell whether the socket moved on in the meantime
    this.connectClock = 1
    this.visibilityConnection = null
    if (this.transport !== LongPoll) {
      this.encode = opts.encode || this.defaultEncoder
      this.decode = opts.decode || this.defaultDecoder
    } else {
      // as phoenix.js: no custom serializer over LongPoll, whose POST bodies
      // must be V2 ndjson lines (or whole V1 objects, see LongPoll.batchSend)
      this.encode = this.defaultEncoder
      this.decode = this.defaultDecoder
    }
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs || 30000
    this.rejoinAfterMs = (tries) => (opts.rejoinAfterMs ? opts.rejoinAfterMs(tries) : defaultRejoinAfterMs(tries))
    this.reconnectAfterMs = (tries) => (opts.reconnectAfterMs ? opts.reconnectAfterMs(tries) : defaultReconnectAfterMs(tries))
    this.logger = opts.logger || null
    if (!this.logger && opts.debug) {
      this.logger = (kind, msg, data) => { console.log(`${kind}: ${msg}`, data) }
    }
    this.longpollerTimeout = opts.longpollerTimeout || 20000
    this.params = toFn(opts.params || {})
    this.endPoint = `${endPoint}/${TRANSPORTS.websocket}`
    this.heartbeatTimeoutTimer = null
    this.heartbeatTimer = null
    this.pendingHeartbeatRef = null
    this.reconnectTimer = new Timer(() => {
      if (this.pageHidden) {
        this.log("transport", "Not reconnecting as page is hidden!")
        this.teardown()
        return
      }
      this.teardownAndReconnect(() => this.connect())
    }, (tries) => this.reconnectAfterMs(tries))
    this.authToken = opts.authToken ? toFn(opts.authToken) : undefined
    this.installPageListeners()
  }

  installPageListeners() {
    if (!pageWindow || !pageWindow.addEventListener) return
    let reconnectOnShow = null
    // bfcache: close on pagehide, come back on pageshow
    pageWindow.addEventListener("pagehide", () => {
      if (this.connection && !this.connection.ended) {
        this.disconnect()
        reconnectOnShow = this.connectClock
      }
    })
    pageWindow.addEventListener("pageshow", () => {
      if (reconnectOnShow === this.connectClock) {
        reconnectOnShow = null
        this.connect()
      }
    })
    pageWindow.addEventListener("visibilitychange", () => this.handleVisibilityChange())
    if (pageWindow.document) pageWindow.document.addEventListener("resume", () => this.handleVisibilityChange())
  }

  /** The transport instance of the current connection (e.g. a WebSocket). */
  get conn() { return this.connection && this.connection.transport }

  get pageHidden() {
    return !!(pageWindow && pageWindow.document && pageWindow.document.visibilityState === "hidden")
  }

  handleVisibilityChange() {
    if (this.pageHidden) {
      this.visibilityConnection = null
      return
    }
    const connection = this.connection
    // visibilitychange and resume can both fire: keep the first reconnect
    if (connection && connection === this.visibilityConnection && connection.isConnecting()) return
    if (!this.isConnected() && !this.closeWasClean) {
      this.reconnectTimer.reset()
      this.teardownAndReconnect(() => {
        this.connect()
        this.visibilityConnection = this.connection
      })
    }
  }

  getLongPollTransport() { return LongPoll }

  /** Replaces the params (object or function) sent by the next (re)connect. */
  setParams(params) {
    this.params = toFn(params || {})
  }

  /** Replaces the bearer token (string, function, or null for none) of the next (re)connect. */
  setAuthToken(token) {
    this.authToken = token ? toFn(token) : undefined
  }

  /** Closes the current connection and uses `newTransport` from the next connect on. */
  replaceTransport(newTransport) {
    const clock = ++this.connectClock
    this.closeWasClean = true
    clearTimeout(this.fallbackTimer)
    this.reconnectTimer.reset()
    // first, as channel error callbacks below may already connect again
    this.transport = newTransport
    const connection = this.connection
    if (connection) {
      const wasOpen = connection.isOpen()
      this.connection = null
      connection.ended = true
      connection.close()
      this.clearHeartbeats()
      if (wasOpen) this.triggerChanError("connection_closed", connection)
    }
    return clock
  }

  protocol() { return globalRef.location && /^https/.test(globalRef.location.protocol) ? "wss" : "ws" }

  endPointURL() {
    const uri = appendParams(appendParams(this.endPoint, this.params()), { vsn: this.vsn })
    if (uri.charAt(0) !== "/") return uri
    if (uri.charAt(1) === "/") return `${this.protocol()}:${uri}`
    return `${this.protocol()}://${globalRef.location.host}${uri}`
  }

  /** Closes the connection for good (no reconnect); `callback` once it is closed. */
  disconnect(callback, code, reason) {
    this.connectClock++
    this.closeWasClean = true
    clearTimeout(this.fallbackTimer)
    this.reconnectTimer.reset()
    // a connect() right after makes a new connection instead of waiting for this one
    if (this.connection) this.connection.ended = true
    this.teardown(callback, code, reason)
  }

  /** Connects (no-op while connected or reconnecting). `params` replaces the connect params. */
  connect(params) {
    if (params) this.setParams(params)
    if (this.connection && !this.connection.ended) return
    if (this.longPollFallbackMs && this.transport !== LongPoll) {
      this.connectWithFallback(LongPoll, this.longPollFallbackMs)
    } else {
      this.transportConnect()
    }
  }

  log(kind, msg, data) { if (this.logger) this.logger(kind, msg, data) }

  hasLogger() { return this.logger !== null }

  onOpen(callback) { return this.addCallback("open", callback) }
  onClose(callback) { return this.addCallback("close", callback) }
  onError(callback) { return this.addCallback("error", callback) }
  onMessage(callback) { return this.addCallback("message", callback) }

  addCallback(kind, callback) {
    const ref = this.makeRef()
    this.stateChangeCallbacks[kind].push([ref, callback])
    return ref
  }

  /** Sends a heartbeat and calls `callback(rttMs)` on its reply; false when not connected. */
  ping(callback) {
    if (!this.isConnected()) return false
    const ref = this.makeRef()
    const start = Date.now()
    this.connection.pings.set(ref, () => callback(Date.now() - start))
    this.push({ topic: "phoenix", event: "heartbeat", payload: {}, ref })
    return true
  }

  // minifiers rename classes, so LongPoll is recognised by identity
  transportName(transport) { return transport === LongPoll ? "LongPoll" : transport.name }

  transportConnect() {
    const previous = this.connection
    this.connectClock++
    this.closeWasClean = false
    // keep the reconnect tries: they reset only once a connection opens
    clearTimeout(this.reconnectTimer.timer)
    let protocols
    if (this.authToken) {
      const token = this.authToken()
      if (token) protocols = ["phoenix", `${AUTH_TOKEN_PREFIX}${utf8ToBase64(String(token)).replace(/=/g, "")}`]
    }
    const transport = new this.transport(this.endPointURL(), protocols)
    transport.binaryType = this.binaryType
    transport.timeout = this.longpollerTimeout
    this.connection = new Connection(this, transport)
    // channels joined over a still-draining previous connection rejoin on this one
    if (previous && previous.isOpen()) this.triggerChanError("connection_closed", previous)
  }

  getSession(key) { return this.sessionStore ? this.sessionStore.getItem(key) : null }

  storeSession(key, val) { if (this.sessionStore) this.sessionStore.setItem(key, val) }

  /**
   * Connects with the primary transport, switching to `fallbackTransport` if
   * it errors before opening, or if it opened but did not answer a ping
   * within `fallbackThreshold` ms. A successful fallback is remembered in
   * sessionStorage, so later page loads go straight to it.
   */
  connectWithFallback(fallbackTransport, fallbackThreshold = 2500) {
    this.cancelFallback()
    let established = false
    let onPrimary = true
    let clock
    let errorRef
    const isCurrent = () => clock === this.connectClock && !this.closeWasClean
    const name = this.transportName(fallbackTransport)
    const fallback = (reason) => {
      this.log("transport", `falling back to ${name}...`, reason)
      this.off([errorRef])
      onPrimary = false
      const replaced = this.replaceTransport(fallbackTransport)
      if (replaced !== this.connectClock) return
      this.transportConnect()
    }
    if (this.getSession(`phx:fallback:${name}`)) return fallback("memorized")

    this.fallbackTimer = setTimeout(fallback, fallbackThreshold)
    errorRef = this.fallbackErrorRef = this.onError((reason) => {
      if (!isCurrent()) return
      this.log("transport", "error", reason)
      if (onPrimary && !established) {
        clearTimeout(this.fallbackTimer)
        fallback(reason)
      }
    })
    this.fallbackRef = this.onOpen(() => {
      if (!onPrimary) {
        if (this.transport !== fallbackTransport || this.closeWasClean) return
        if (!this.primaryPassedHealthCheck) this.storeSession(`phx:fallback:${name}`, "true")
        this.log("transport", `established ${name} fallback`)
        return
      }
      if (!isCurrent()) return
      established = true
      // the primary opened: it must also answer a ping in time
      clearTimeout(this.fallbackTimer)
      this.fallbackTimer = setTimeout(fallback, fallbackThreshold)
      this.ping((rtt) => {
        this.log("transport", "connected to primary after", rtt)
        this.primaryPassedHealthCheck = true
        clearTimeout(this.fallbackTimer)
      })
    })
    this.transportConnect()
    clock = this.connectClock
  }

  cancelFallback() {
    clearTimeout(this.fallbackTimer)
    this.off([this.fallbackRef, this.fallbackErrorRef])
  }

  clearHeartbeats() {
    clearTimeout(this.heartbeatTimer)
    clearTimeout(this.heartbeatTimeoutTimer)
    // a late reply must not restart the heartbeats
    this.pendingHeartbeatRef = null
  }

  onConnOpen() {
    if (this.hasLogger()) this.log("transport", `${this.transportName(this.transport)} connected to ${this.endPointURL()}`)
    this.closeWasClean = false
    this.establishedConnections++
    this.flushSendBuffer()
    this.reconnectTimer.reset()
    this.resetHeartbeat()
    for (const [, cb] of this.stateChangeCallbacks.open) cb()
  }

  heartbeatTimeout() {
    if (!this.pendingHeartbeatRef) return
    const connection = this.connection
    this.pendingHeartbeatRef = null
    this.log("transport", "heartbeat timeout. Attempting to re-establish connection")
    this.closeWasClean = false
    // presumed dead: close now rather than wait for its buffer to drain
    if (connection) connection.close(WS_CLOSE_NORMAL, "heartbeat timeout")
    // callbacks may disconnect or connect, which takes precedence
    if (!this.stillUses(connection)) return
    this.triggerChanError("heartbeat_timeout")
    if (!this.stillUses(connection)) return
    this.teardownAndReconnect(() => this.reconnectTimer.scheduleTimeout())
  }

  resetHeartbeat() {
    if (this.conn && this.conn.skipHeartbeat) return
    this.clearHeartbeats()
    this.heartbeatTimer = setTimeout(() => this.sendHeartbeat(), this.heartbeatIntervalMs)
  }

  /** Tears the connection down, then `reconnect()` unless the socket moved on meanwhile. */
  teardownAndReconnect(reconnect) {
    const connection = this.connection
    const clock = this.connectClock
    this.teardown(() => {
      if (clock !== this.connectClock || (connection && connection.ended)) return
      reconnect()
    })
  }

  stillUses(connection) {
    return this.connection === connection && !(connection && connection.ended)
  }

  teardown(callback, code, reason) {
    const connection = this.connection
    if (!connection) return callback && callback()
    // a late close event would not stop them, and a heartbeat timeout would reconnect
    this.clearHeartbeats()
    this.waitForBufferDone(connection.transport, () => {
      if (!connection.closing) {
        const wasOpened = !connection.isConnecting()
        connection.close(code, reason)
        // the close event may come late or never: error the channels now
        if (wasOpened) this.triggerChanError("connection_closed", connection)
      }
      connection.whenClosed(1500, () => {
        if (this.connection === connection) this.connection = null
        if (callback) callback()
      })
    })
  }

  waitForBufferDone(conn, callback, tries = 1) {
    if (tries === 5 || !conn.bufferedAmount || conn.readyState !== SOCKET_STATES.open) {
      callback()
      return
    }
    setTimeout(() => this.waitForBufferDone(conn, callback, tries + 1), 150 * tries)
  }

  onConnClose(event) {
    const connection = this.connection
    if (this.hasLogger()) this.log("transport", "close", event)
    this.clearHeartbeats()
    // our own closes are followed up by the code that closed; any other close
    // (whatever its code: proxies close with 1000 too) is reconnected
    const closedByUs = !!(connection && connection.closing)
    this.triggerChanError("connection_closed", connection)
    if (this.stillUses(connection) && !closedByUs && !this.closeWasClean) {
      this.reconnectTimer.scheduleTimeout()
    }
    for (const [, cb] of this.stateChangeCallbacks.close) cb(event)
  }

  onConnError(error) {
    const connection = this.connection
    if (this.hasLogger()) this.log("transport", "error", error)
    const transportBefore = this.transport
    const establishedBefore = this.establishedConnections
    for (const [, cb] of this.stateChangeCallbacks.error) cb(error, transportBefore, establishedBefore)
    this.triggerChanError("connection_error", connection)
  }

  /** Errors the channels, which rejoin once a connection is open again. */
  triggerChanError(reason, connection = this.connection) {
    // the first notice of a dead connection errors every channel; later
    // notices only the channels whose current join it carried, as callbacks
    // may meanwhile have joined channels over another connection
    let erroredBefore = false
    if (connection && !connection.isOpen()) {
      erroredBefore = connection.channelsErrored
      connection.channelsErrored = true
    }
    const joins = this.channels.map((c) => [c, c.joinRef()])
    for (const [channel, joinRef] of joins) {
      if (channel.joinRef() !== joinRef) continue
      if (connection && (erroredBefore || !connection.isCurrent()) && !connection.carried(channel, joinRef)) continue
      if (!(channel.isErrored() || channel.isLeaving() || channel.isClosed())) {
        channel.trigger(CHANNEL_EVENTS.error, { source: "transport", reason })
      }
    }
  }

  connectionState() {
    switch (this.conn && this.conn.readyState) {
      case SOCKET_STATES.connecting: return "connecting"
      case SOCKET_STATES.open: return "open"
      case SOCKET_STATES.closing: return "closing"
      default: return "closed"
    }
  }

  isConnected() { return this.connectionState() === "open" }

  remove(channel) {
    this.off(channel.stateChangeRefs)
    this.channels = this.channels.filter((c) => c !== channel)
  }

  /** Removes onOpen/onClose/onError/onMessage registrations by ref. */
  off(refs) {
    for (const kind of Object.keys(this.stateChangeCallbacks)) {
      this.stateChangeCallbacks[kind] = this.stateChangeCallbacks[kind].filter(([ref]) => !refs.includes(ref))
    }
  }

  channel(topic, chanParams = {}) {
    const chan = new Channel(topic, chanParams, this)
    this.channels.push(chan)
    return chan
  }

  /** Sends `data` ({topic, event, payload, ref, join_ref}) now, or once connected. */
  push(data, channel) {
    if (this.hasLogger()) {
      const { topic, event, payload, ref, join_ref } = data
      this.log("push", `${topic} ${event} (${join_ref}, ${ref})`, payload)
    }
    if (this.isConnected()) {
      this.send(data, channel)
    } else {
      // a rejoin since buffering supersedes a buffered message of the old join
      this.sendBuffer.push(() => { if (!this.isOutdated(data, channel)) this.send(data, channel) })
    }
  }

  send(data, channel) {
    const connection = this.connection
    // recorded before encoding, so a teardown during the encode still rejoins
    if (channel && data.event === CHANNEL_EVENTS.join) connection.joins.set(channel, data.join_ref)
    this.encode(data, (result) => {
      if (!connection.isCurrent() || !connection.isOpen()) return
      // a leave must still reach the server after its channel closed locally
      if (data.event !== CHANNEL_EVENTS.leave && this.isOutdated(data, channel)) return
      connection.transport.send(result)
    })
  }

  isOutdated(data, channel) {
    return !!channel && (data.join_ref !== channel.joinRef() || channel.isClosed())
  }

  /** The next message ref, as a decimal string; wraps to "0" after MAX_SAFE_INTEGER. */
  makeRef() {
    this.ref = this.ref >= Number.MAX_SAFE_INTEGER ? 0 : this.ref + 1
    return this.ref.toString()
  }

  sendHeartbeat() {
    if (this.pendingHeartbeatRef && !this.isConnected()) return
    this.pendingHeartbeatRef = this.makeRef()
    this.push({ topic: "phoenix", event: "heartbeat", payload: {}, ref: this.pendingHeartbeatRef })
    this.heartbeatTimeoutTimer = setTimeout(() => this.heartbeatTimeout(), this.heartbeatIntervalMs)
  }

  flushSendBuffer() {
    if (this.isConnected() && this.sendBuffer.length > 0) {
      const buffered = this.sendBuffer
      this.sendBuffer = []
      for (const cb of buffered) cb()
    }
  }

  onConnMessage(rawMessage) {
    const connection = this.connection
    const wasOpen = connection && connection.isOpen()
    // A frame that does not decode to a message is dropped and logged: it
    // must not take the page or the Node process down (phoenix.js lets the
    // exception escape). Callbacks run outside the guard: their exceptions
    // are the app's.
    let sync = true
    let answered = false
    let early
    try {
      this.decode(rawMessage.data, (msg) => {
        if (sync) { answered = true; early = msg }
        else this.dispatchDecoded(msg, connection, wasOpen)
      })
    } catch (err) {
      this.log("transport", "dropped a frame that does not decode", err)
      return
    }
    sync = false
    // not answered yet: a custom decoder that answers later
    if (answered) this.dispatchDecoded(early, connection, wasOpen)
  }

  dispatchDecoded(msg, connection, wasOpen) {
    if (isMessage(msg)) this.dispatchMessage(msg, connection, wasOpen)
    else this.log("transport", "dropped a frame that does not decode", "not a message")
  }

  /** Hands a decoded message to its channels and the message callbacks. */
  dispatchMessage(msg, connection, wasOpen) {
    // a decode may finish after the connection was replaced or closed
    if (connection !== this.connection || (wasOpen && !connection.isOpen())) return
    const { topic, event, payload, ref, join_ref } = msg
    if (ref && ref === this.pendingHeartbeatRef) {
      this.clearHeartbeats()
      this.heartbeatTimer = setTimeout(() => this.sendHeartbeat(), this.heartbeatIntervalMs)
    }
    if (this.hasLogger()) {
      this.log("receive", `${(payload && payload.status) || ""} ${topic} ${event} ${(ref && `(${ref})`) || ""}`, payload)
    }
    // snapshots: callbacks may remove channels or callbacks
    for (const channel of this.channels) {
      if (channel.isMember(topic, event, payload, join_ref)) channel.trigger(event, payload, ref, join_ref)
    }
    for (const [, cb] of this.stateChangeCallbacks.message) cb(msg)
    const ping = ref && connection.pings.get(ref)
    if (ping) {
      connection.pings.delete(ref)
      ping()
    }
  }

  /** Leaves another channel object of `topic` that is joined or joining (one join per topic). */
  leaveOpenTopic(topic) {
    const dup = this.channels.find((c) => c.topic === topic && (c.isJoined() || c.isJoining()))
    if (dup) {
      this.log("transport", `leaving duplicate topic "${topic}"`)
      dup.leave()
    }
  }
}

// ---------------------------------------------------------------------------
// Presence

// presence keys come from the server and may be "__proto__" or "constructor":
// every object indexed by key has no prototype
function nullProto(obj) {
  if (Object.getPrototypeOf(obj) === null) return obj
  const out = Object.create(null)
  for (const key of Object.getOwnPropertyNames(obj)) out[key] = obj[key]
  return out
}
const clone = (obj) => JSON.parse(JSON.stringify(obj))
const eachKey = (obj, fn) => Object.getOwnPropertyNames(obj).map((key) => fn(key, obj[key]))

/**
 * Client-side view of a Phoenix.Presence topic: applies `presence_state` and
 * `presence_diff`, holding diffs back until the state of the current join.
 */
export class Presence {
  constructor(channel, opts = {}) {
    const events = opts.events || { state: "presence_state", diff: "presence_diff" }
    this.state = Object.create(null)
    this.pendingDiffs = []
    this.channel = channel
    this.joinRef = null
    this.caller = { onJoin: noop, onLeave: noop, onSync: noop }

    this.channel.on(events.state, (newState) => {
      const { onJoin, onLeave, onSync } = this.caller
      this.joinRef = this.channel.joinRef()
      this.state = Presence.syncState(this.state, newState, onJoin, onLeave)
      for (const diff of this.pendingDiffs) this.state = Presence.syncDiff(this.state, diff, onJoin, onLeave)
      this.pendingDiffs = []
      onSync()
    })
    this.channel.on(events.diff, (diff) => {
      const { onJoin, onLeave, onSync } = this.caller
      if (this.inPendingSyncState()) {
        this.pendingDiffs.push(diff)
      } else {
        this.state = Presence.syncDiff(this.state, diff, onJoin, onLeave)
        onSync()
      }
    })
  }

  onJoin(callback) { this.caller.onJoin = callback }
  onLeave(callback) { this.caller.onLeave = callback }
  onSync(callback) { this.caller.onSync = callback }

  list(by) { return Presence.list(this.state, by) }

  /** True until the `presence_state` of the channel's current join arrived. */
  inPendingSyncState() { return !this.joinRef || this.joinRef !== this.channel.joinRef() }

  /** Replaces `currentState` by `newState`, reporting the differences as joins and leaves. */
  static syncState(currentState, newState, onJoin, onLeave) {
    const state = nullProto(clone(currentState))
    newState = nullProto(newState)
    const joins = Object.create(null)
    const leaves = Object.create(null)
    eachKey(state, (key, presence) => { if (!newState[key]) leaves[key] = presence })
    eachKey(newState, (key, newPresence) => {
      const current = state[key]
      if (!current) {
        joins[key] = newPresence
        return
      }
      const newRefs = newPresence.metas.map((m) => m.phx_ref)
      const curRefs = current.metas.map((m) => m.phx_ref)
      const joined = newPresence.metas.filter((m) => !curRefs.includes(m.phx_ref))
      const left = current.metas.filter((m) => !newRefs.includes(m.phx_ref))
      if (joined.length > 0) {
        joins[key] = newPresence
        joins[key].metas = joined
      }
      if (left.length > 0) {
        leaves[key] = clone(current)
        leaves[key].metas = left
      }
    })
    return Presence.syncDiff(state, { joins, leaves }, onJoin, onLeave)
  }

  /** Applies a `{joins, leaves}` diff to `state`. */
  static syncDiff(state, diff, onJoin = noop, onLeave = noop) {
    state = nullProto(state)
    const { joins, leaves } = clone(diff)
    onJoin = onJoin || noop
    onLeave = onLeave || noop
    eachKey(joins || {}, (key, newPresence) => {
      const current = state[key]
      state[key] = clone(newPresence)
      if (current) {
        const joinedRefs = state[key].metas.map((m) => m.phx_ref)
        const kept = current.metas.filter((m) => !joinedRefs.includes(m.phx_ref))
        state[key].metas.unshift(...kept)
      }
      onJoin(key, current, newPresence)
    })
    eachKey(leaves || {}, (key, leftPresence) => {
      const current = state[key]
      if (!current) return
      const gone = leftPresence.metas.map((m) => m.phx_ref)
      current.metas = current.metas.filter((m) => !gone.includes(m.phx_ref))
      onLeave(key, current, leftPresence)
      if (current.metas.length === 0) delete state[key]
    })
    return state
  }

  /** The presences as an array, each mapped by `chooser(key, presence)`. */
  static list(presences, chooser = (_key, pres) => pres) {
    return eachKey(presences, (key, presence) => chooser(key, presence))
  }
}

