// Type declarations for fawkes.js, Fawkes's JavaScript client for Phoenix
// Channels (same API as phoenix.js 1.8, plus setParams / setAuthToken and the
// jittered back-off helpers).

export type Params = Record<string, unknown>
export type ParamsOrFn = Params | (() => Params)
export type TokenOrFn = string | (() => string | null | undefined)

export type ChannelState = "closed" | "errored" | "joined" | "joining" | "leaving"
export type ConnectionState = "connecting" | "open" | "closing" | "closed"
/** Reply statuses: "ok", "error", "timeout" (local) or any status an application replies with. */
export type PushStatus = "ok" | "error" | "timeout" | (string & {})

/** A decoded message. `payload` is an ArrayBuffer for binary (V2) pushes and broadcasts. */
export interface Message<P = any> {
  join_ref: string | null
  ref: string | null
  topic: string
  event: string
  payload: P
}

/** The local error a channel sees when its connection fails. */
export interface TransportError {
  source: "transport"
  reason: "connection_closed" | "connection_error" | "heartbeat_timeout"
}

export type Encode = (msg: Message, callback: (encoded: string | ArrayBuffer) => void) => void
export type Decode = (raw: string | ArrayBuffer, callback: (msg: Message) => void) => void

/** The WebSocket-like interface a transport class must implement (WebSocket, `ws`, LongPoll). */
export interface TransportInstance {
  readyState: number
  binaryType?: string
  timeout?: number
  skipHeartbeat?: boolean
  bufferedAmount?: number
  onopen: ((event?: any) => void) | null
  onerror: ((error: any) => void) | null
  onmessage: ((event: { data: any }) => void) | null
  onclose: ((event: any) => void) | null
  send(data: any): void
  close(code?: number, reason?: string): void
}
/** Called as `new Transport(url, protocols)`; protocols is ["phoenix", bearer] when an authToken is set. */
export type TransportConstructor = new (url: string, protocols?: string[]) => any

/** A sessionStorage-compatible store (used to remember a LongPoll fallback). */
export interface StorageLike {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
  removeItem?(key: string): void
}

export interface SocketOptions {
  /** WebSocket (default: the global one, else LongPoll), `WebSocket` from `ws`, or LongPoll. */
  transport?: TransportConstructor
  /** Fall back to LongPoll when WebSocket does not work within this many ms (off by default). */
  longPollFallbackMs?: number
  /** Deadline of a LongPoll request, ms (default 20000). */
  longpollerTimeout?: number
  /** Default push and join timeout, ms (default 10000). */
  timeout?: number
  /** Heartbeat interval, ms (default 30000); a heartbeat unanswered for as long closes the connection. */
  heartbeatIntervalMs?: number
  /** Reconnect delay for attempt `tries` (default: jittered exponential, see defaultReconnectAfterMs). */
  reconnectAfterMs?: (tries: number) => number
  /** Rejoin delay for attempt `tries` (default: jittered exponential, see defaultRejoinAfterMs). */
  rejoinAfterMs?: (tries: number) => number
  logger?: (kind: string, msg: string, data?: any) => void
  /** Connect params, re-evaluated on every (re)connect when a function. */
  params?: ParamsOrFn
  /** Bearer token: `Sec-WebSocket-Protocol` on WebSocket, `X-Phoenix-AuthToken` on LongPoll. */
  authToken?: TokenOrFn
  /** Serializer version: "2.0.0" (default) or "1.0.0". */
  vsn?: string
  encode?: Encode
  decode?: Decode
  /** Default "arraybuffer". */
  binaryType?: string
  sessionStorage?: StorageLike
  /** Log to the console when no logger is given. */
  debug?: boolean
}

export declare const DEFAULT_VSN: "2.0.0"
export declare const DEFAULT_TIMEOUT: 10000
export declare const WS_CLOSE_NORMAL: 1000
export declare const AUTH_TOKEN_PREFIX: "base64url.bearer.phx."
export declare const SOCKET_STATES: Readonly<{ connecting: 0; open: 1; closing: 2; closed: 3 }>
export declare const CHANNEL_STATES: Readonly<{ closed: "closed"; errored: "errored"; joined: "joined"; joining: "joining"; leaving: "leaving" }>
export declare const CHANNEL_EVENTS: Readonly<{ close: "phx_close"; error: "phx_error"; join: "phx_join"; reply: "phx_reply"; leave: "phx_leave" }>
export declare const TRANSPORTS: Readonly<{ longpoll: "longpoll"; websocket: "websocket" }>

/** Delay in [d/2, d] for d = min(capMs, baseMs · 2^(tries-1)). */
export declare function jitteredBackoff(tries: number, baseMs: number, capMs: number, random?: () => number): number
/** Default reconnect delays: 100–200 ms, doubling, capped at 5–10 s. */
export declare function defaultReconnectAfterMs(tries: number): number
/** Default rejoin delays: 0.5–1 s, doubling, capped at 5–10 s. */
export declare function defaultRejoinAfterMs(tries: number): number

export declare class Timer {
  constructor(callback: () => void, timerCalc: (tries: number) => number)
  callback: () => void
  timerCalc: (tries: number) => number
  timer: ReturnType<typeof setTimeout> | null
  tries: number
  reset(): void
  scheduleTimeout(): void
}

export declare const Serializer: {
  HEADER_LENGTH: number
  META_LENGTH: number
  KINDS: { push: 0; reply: 1; broadcast: 2 }
  encode: Encode
  decode: Decode
  binaryEncode(msg: Message<ArrayBuffer | ArrayBufferView>): ArrayBuffer
  binaryDecode(raw: ArrayBuffer | ArrayBufferView): Message
  V1: { encode: Encode; decode: Decode }
}

export declare class Push {
  constructor(channel: Channel, event: string, payload: () => any, timeout: number)
  channel: Channel
  event: string
  payload: () => any
  receivedResp: { status: PushStatus; response: any } | null
  timeout: number
  timeoutTimer: ReturnType<typeof setTimeout> | null
  recHooks: Array<{ status: PushStatus; callback: (response: any) => void }>
  sent: boolean
  ref: string | null
  refEvent: string | null
  resend(timeout: number): void
  send(): void
  receive(status: PushStatus, callback: (response?: any) => any): this
  reset(): void
  cancelTimeout(): void
  startTimeout(): void
  hasReceived(status: PushStatus): boolean
  trigger(status: PushStatus, response: any): void
}

export declare class Channel {
  constructor(topic: string, params: ParamsOrFn | undefined, socket: Socket)
  state: ChannelState
  topic: string
  params: () => Params
  socket: Socket
  timeout: number
  joinedOnce: boolean
  joinPush: Push
  pushBuffer: Push[]
  rejoinTimer: Timer
  stateChangeRefs: string[]
  /** Every binding, in the order they were added (a copy: use `on` / `off` to change them). */
  readonly bindings: Array<{ event: string; ref: number; callback: (payload: any, ref?: string | null, joinRef?: string | null) => void }>
  join(timeout?: number): Push
  leave(timeout?: number): Push
  onClose(callback: (payload: any, ref?: string | null, joinRef?: string | null) => void): number
  onError(callback: (reason?: TransportError | any) => void): number
  on(event: string, callback: (payload: any, ref?: string | null, joinRef?: string | null) => void): number
  off(event: string, ref?: number): void
  /** Sends `event`; an ArrayBuffer (or typed array) payload is sent as a V2 binary frame. */
  push(event: string, payload?: object | ArrayBuffer | ArrayBufferView, timeout?: number): Push
  /** Overridable hook run on every message; must return the payload. */
  onMessage(event: string, payload: any, ref?: string | null, joinRef?: string | null): any
  joinRef(): string | null
  canPush(): boolean
  rejoin(timeout?: number): void
  trigger(event: string, payload?: any, ref?: string | null, joinRef?: string | null): void
  isMember(topic: string, event: string, payload: any, joinRef: string | null): boolean
  replyEventName(ref: string | null): string
  isClosed(): boolean
  isErrored(): boolean
  isJoined(): boolean
  isJoining(): boolean
  isLeaving(): boolean
}

export declare class LongPoll implements TransportInstance {
  constructor(endPoint: string, protocols?: string[])
  authToken?: string
  endPoint: string | null
  pollEndpoint: string
  token: string | null
  skipHeartbeat: true
  timeout: number
  readyState: number
  onopen: (event?: any) => void
  onerror: (error: any) => void
  onmessage: (event: { data: any }) => void
  onclose: (event: { code: number; reason?: string; wasClean: boolean }) => void
  normalizeEndpoint(endPoint: string): string
  endpointURL(): string
  isActive(): boolean
  poll(): void
  send(body: string | ArrayBuffer | ArrayBufferView): void
  close(code?: number, reason?: string, wasClean?: boolean): void
}

export declare class Socket {
  constructor(endPoint: string, opts?: SocketOptions)
  channels: Channel[]
  sendBuffer: Array<() => void>
  ref: number
  timeout: number
  /** The transport class in use (replaced by LongPoll after a fallback). */
  transport: TransportConstructor
  heartbeatIntervalMs: number
  longpollerTimeout: number
  longPollFallbackMs?: number
  vsn: string
  binaryType: string
  endPoint: string
  params: () => Params
  authToken?: () => string | null | undefined
  encode: Encode
  decode: Decode
  logger: ((kind: string, msg: string, data?: any) => void) | null
  reconnectTimer: Timer
  reconnectAfterMs: (tries: number) => number
  rejoinAfterMs: (tries: number) => number
  primaryPassedHealthCheck: boolean
  establishedConnections: number
  stateChangeCallbacks: {
    open: Array<[string, () => void]>
    close: Array<[string, (event: any) => void]>
    error: Array<[string, (error: any, transport: TransportConstructor, establishedConnections: number) => void]>
    message: Array<[string, (msg: Message) => void]>
  }
  /** The transport instance of the current connection (e.g. a WebSocket or a LongPoll), or null. */
  readonly conn: TransportInstance | any | null

  /** Connects; `params` replaces the connect params (as `setParams`). */
  connect(params?: ParamsOrFn): void
  /** Closes for good (no reconnect); `callback` once closed. */
  disconnect(callback?: () => void, code?: number, reason?: string): void
  channel(topic: string, params?: ParamsOrFn): Channel
  /** Fawkes: replaces the params sent by the next (re)connect. */
  setParams(params: ParamsOrFn): void
  /** Fawkes: replaces (or removes, with null) the bearer token of the next (re)connect. */
  setAuthToken(token: TokenOrFn | null | undefined): void
  onOpen(callback: () => void): string
  onClose(callback: (event: any) => void): string
  onError(callback: (error: any, transport: TransportConstructor, establishedConnections: number) => void): string
  onMessage(callback: (msg: Message) => void): string
  off(refs: string[]): void
  isConnected(): boolean
  connectionState(): ConnectionState
  endPointURL(): string
  protocol(): "ws" | "wss"
  makeRef(): string
  push(data: Message, channel?: Channel): void
  remove(channel: Channel): void
  log(kind: string, msg: string, data?: any): void
  hasLogger(): boolean
  /** Closes the current connection; the next connect uses `newTransport`. Returns a clock value. */
  replaceTransport(newTransport: TransportConstructor): number
  /** Heartbeat round trip; false when not connected. */
  ping(callback: (rttMs: number) => void): boolean
  getLongPollTransport(): typeof LongPoll
  transportName(transport: TransportConstructor): string
  leaveOpenTopic(topic: string): void
}

export interface PresenceMeta {
  phx_ref: string
  phx_ref_prev?: string
  [key: string]: any
}
export interface PresenceEntry<M extends PresenceMeta = PresenceMeta> {
  metas: M[]
  [key: string]: any
}
export type PresenceState<M extends PresenceMeta = PresenceMeta> = Record<string, PresenceEntry<M>>
export interface PresenceDiff<M extends PresenceMeta = PresenceMeta> {
  joins: PresenceState<M>
  leaves: PresenceState<M>
}
export type PresenceOnJoin<M extends PresenceMeta = PresenceMeta> =
  (key: string, currentPresence: PresenceEntry<M> | undefined, newPresence: PresenceEntry<M>) => void
export type PresenceOnLeave<M extends PresenceMeta = PresenceMeta> =
  (key: string, currentPresence: PresenceEntry<M>, leftPresence: PresenceEntry<M>) => void

export interface PresenceOptions {
  events?: { state: string; diff: string }
}

export declare class Presence<M extends PresenceMeta = PresenceMeta> {
  constructor(channel: Channel, opts?: PresenceOptions)
  state: PresenceState<M>
  pendingDiffs: PresenceDiff<M>[]
  channel: Channel
  joinRef: string | null
  onJoin(callback: PresenceOnJoin<M>): void
  onLeave(callback: PresenceOnLeave<M>): void
  onSync(callback: () => void): void
  list(): PresenceEntry<M>[]
  list<T>(by: (key: string, presence: PresenceEntry<M>) => T): T[]
  inPendingSyncState(): boolean
  static syncState<M extends PresenceMeta = PresenceMeta>(currentState: PresenceState<M>, newState: PresenceState<M>,
    onJoin?: PresenceOnJoin<M> | null, onLeave?: PresenceOnLeave<M> | null): PresenceState<M>
  static syncDiff<M extends PresenceMeta = PresenceMeta>(state: PresenceState<M>, diff: PresenceDiff<M>,
    onJoin?: PresenceOnJoin<M> | null, onLeave?: PresenceOnLeave<M> | null): PresenceState<M>
  static list<M extends PresenceMeta = PresenceMeta>(presences: PresenceState<M>): PresenceEntry<M>[]
  static list<M extends PresenceMeta, T>(presences: PresenceState<M>, chooser: (key: string, presence: PresenceEntry<M>) => T): T[]
}
