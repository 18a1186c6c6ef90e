// Type check of fawkes.d.ts: code written against the phoenix.js API (and
// the Fawkes additions) must compile. Checked by `npm run test:types`; never run.
import {
  Socket, Channel, Push, Presence, LongPoll, Serializer, Timer,
  jitteredBackoff, defaultReconnectAfterMs, SOCKET_STATES, CHANNEL_EVENTS,
  type Message, type PresenceState, type SocketOptions, type TransportError,
} from "../fawkes.js"
// the package's own name resolves through its `exports` field too
import { Socket as SocketByName } from "@fawkes/client"

declare const WebSocketFromWs: new (url: string, protocols?: string | string[]) => any

const opts: SocketOptions = {
  transport: WebSocketFromWs,
  longPollFallbackMs: 2500,
  longpollerTimeout: 20000,
  timeout: 10000,
  heartbeatIntervalMs: 30000,
  reconnectAfterMs: (tries) => [10, 50, 100][tries - 1] ?? 5000,
  rejoinAfterMs: (tries) => defaultReconnectAfterMs(tries),
  logger: (kind, msg, data) => console.log(kind, msg, data),
  params: () => ({ token: "abc" }),
  authToken: "secret",
  vsn: "2.0.0",
  binaryType: "arraybuffer",
  sessionStorage: { getItem: () => null, setItem: () => {} },
  debug: false,
  encode: (msg, cb) => cb(JSON.stringify(msg)),
  decode: (raw, cb) => cb(JSON.parse(raw as string) as Message),
}

const socket = new Socket("/socket", opts)
const other: Socket = new SocketByName("ws://localhost:4000/socket", { transport: LongPoll })
socket.connect()
socket.connect({ user_id: "1" })
socket.setParams({ user_id: "2" })
socket.setParams(() => ({ user_id: "3" }))
socket.setAuthToken("new-token")
socket.setAuthToken(() => "fn-token")
socket.setAuthToken(null)
const refs: string[] = [socket.onOpen(() => {}), socket.onClose((e) => e.code), socket.onError((err, transport, n) => n + 1), socket.onMessage((m) => m.topic)]
socket.off(refs)
const connected: boolean = socket.isConnected()
const state: "connecting" | "open" | "closing" | "closed" = socket.connectionState()
const url: string = socket.endPointURL()
const proto: "ws" | "wss" = socket.protocol()
const ref: string = socket.makeRef()
socket.push({ topic: "phoenix", event: "heartbeat", payload: {}, ref, join_ref: null })
socket.log("kind", "msg", { x: 1 })
const hasLogger: boolean = socket.hasLogger()
socket.ping((rtt: number) => rtt.toFixed())
socket.replaceTransport(LongPoll)
if (socket.conn instanceof LongPoll) socket.conn.close()
const channels: Channel[] = socket.channels
const transport = socket.transport
socket.disconnect(() => {}, 1000, "bye")
socket.disconnect()

const channel = socket.channel("room:lobby", { user: "ann" })
const joinPush: Push = channel.join(5000)
joinPush
  .receive("ok", (resp) => resp)
  .receive("error", ({ reason }) => reason)
  .receive("timeout", () => {})
  .receive("noop", () => {})
const evRef: number = channel.on("new_msg", (payload, msgRef, joinRef) => payload.body)
channel.off("new_msg", evRef)
channel.off("new_msg")
channel.onClose(() => {})
channel.onError((reason?: TransportError | any) => reason)
channel.onMessage = (event, payload) => payload
const p: Push = channel.push("echo", { x: 1 }, 1000)
channel.push("binary", new ArrayBuffer(4))
channel.push("binary", new Uint8Array([1, 2]))
p.resend(2000)
p.send()
p.cancelTimeout()
const st: "closed" | "errored" | "joined" | "joining" | "leaving" = channel.state
const topic: string = channel.topic
const params = channel.params()
const jr: string | null = channel.joinRef()
const jp: Push = channel.joinPush
channel.rejoinTimer.reset()
channel.rejoinTimer.scheduleTimeout()
channel.leave().receive("ok", () => {})

interface Meta { phx_ref: string; device: string | null; online_at: number }
const presence = new Presence<Meta>(channel)
presence.onJoin((key, current, joined) => joined.metas[0].device)
presence.onLeave((key, current, left) => left.metas.length)
presence.onSync(() => {})
const devices: Array<string | null> = presence.list((key, { metas }) => metas[0].device)
const all = presence.list()
const pending: boolean = presence.inPendingSyncState()
let ps: PresenceState<Meta> = {}
ps = Presence.syncState(ps, {}, (k) => k, null)
ps = Presence.syncDiff(ps, { joins: {}, leaves: {} })
const keys: string[] = Presence.list(ps, (key) => key)
new Presence(channel, { events: { state: "s", diff: "d" } })

Serializer.encode({ join_ref: "1", ref: "2", topic: "t", event: "e", payload: {} }, (out) => out)
Serializer.decode("[null,null,\"t\",\"e\",{}]", (msg) => msg.payload)
const frame: ArrayBuffer = Serializer.binaryEncode({ join_ref: "1", ref: "2", topic: "t", event: "e", payload: new ArrayBuffer(0) })
const decoded: Message = Serializer.binaryDecode(frame)
Serializer.V1.encode({ join_ref: null, ref: "1", topic: "t", event: "e", payload: {} }, () => {})

const delay: number = jitteredBackoff(3, 100, 5000, Math.random)
const timer = new Timer(() => {}, (tries) => tries * 100)
timer.scheduleTimeout()
timer.reset()
const open: 1 = SOCKET_STATES.open
const joinEvent: "phx_join" = CHANNEL_EVENTS.join
const lp = new LongPoll("ws://h/socket/websocket", ["phoenix", "base64url.bearer.phx.MTIzNA"])
lp.onmessage = ({ data }) => data

export { other, connected, state, url, proto, hasLogger, channels, transport, st, topic, params, jr, jp, devices, all, pending, keys, decoded, delay, open, joinEvent }

// the DOM's WebSocket class is a transport too
new Socket("/socket", { transport: WebSocket })
