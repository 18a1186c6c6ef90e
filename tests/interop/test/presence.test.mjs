// Presence (PROTOCOL.md §7, checklist 83–90; CONFORMANCE_APP.md `presence:*`
// and GET /api/presence/TOPIC), driven by the official phoenix.js `Presence`
// class: presence_state after every (re)join, presence_diff for joins, leaves
// (channel leave, socket close, forced disconnect) and updates, several metas
// under one key, anonymous keys, the HTTP view of the same map, clients of
// both transports in one topic, the V1 serializer, and the refusal of an
// oversized `device`.
import { test, describe, before, after, afterEach } from "node:test"
import assert from "node:assert/strict"
import * as h from "./support.mjs"

let server
before(async () => { server = await h.startServer() })
afterEach(() => h.closeAll())
after(async () => { await h.closeAll(); await server?.stop() })

const copy = (v) => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)))
const byRef = (a, b) => (a.phx_ref < b.phx_ref ? -1 : a.phx_ref > b.phx_ref ? 1 : 0)
/** A presence map with each key's metas sorted by phx_ref (their order carries no meaning). */
function normalized(map) {
  return Object.fromEntries(Object.keys(map).sort().map((key) => [key, { ...map[key], metas: [...map[key].metas].sort(byRef) }]))
}
/** key → sorted phx_refs. */
const refsOf = (map) => Object.fromEntries(Object.keys(map).sort().map((key) => [key, map[key].metas.map((m) => m.phx_ref).sort()]))
const keysOf = (map) => Object.keys(map).sort()
const sameKeys = (map, keys) => h.describe(keysOf(map)) === h.describe([...keys].sort())
const has = (map, key) => Object.hasOwn(map, key)
/** The key whose metas contain the meta with this `device`. */
const keyOfDevice = (map, device) => Object.keys(map).find((k) => map[k].metas.some((m) => h.describe(m.device) === h.describe(device)))

const apiDisconnectOk = async (user) =>
  assert.deepEqual((await h.apiDisconnect(server, `user_socket:${user}`)).json, { ok: true }, `POST /api/disconnect ${user}`)
const apiPresence = (topic) => h.httpJson(server, "GET", `/api/presence/${topic}`)
const leaveChannel = async (client) =>
  assert.deepEqual(await h.replyOf(client.channel.leave()), { status: "ok", response: {} }, `${client.name} leaves`)

/**
 * A phoenix.js `Presence` on a (not yet joined) channel of `socket`. Every
 * callback is recorded in `client.calls` (an Inbox): `{type: "join" | "leave",
 * key, current, pres}` with copies of the arguments as they were at the call,
 * and `{type: "sync", state}` with the whole list (key → presence) at onSync.
 */
function watchPresence(socket, topic, joinParams, name) {
  const channel = h.recordChannel(socket.channel(topic, joinParams))
  const presence = new h.Presence(channel)
  const calls = new h.Inbox(`Presence calls of ${name}`)
  const client = { name, socket, channel, presence, calls, topic }
  /** The Presence's list as a map key → presence. */
  client.state = () => Object.fromEntries(presence.list((key, pres) => [key, copy(pres)]))
  presence.onJoin((key, current, pres) => calls.add({ type: "join", key, current: copy(current), pres: copy(pres) }))
  presence.onLeave((key, current, pres) => calls.add({ type: "leave", key, current: copy(current), pres: copy(pres) }))
  presence.onSync(() => calls.add({ type: "sync", state: client.state() }))
  /** Wait for an onSync whose list satisfies `pred`; resolves with that list. */
  client.waitSync = (pred, what, opts) =>
    calls.waitFor((c) => c.type === "sync" && pred(c.state), `onSync with ${what}`, opts).then((c) => c.state)
  client.waitKeys = (keys, opts) => client.waitSync((s) => sameKeys(s, keys), `exactly the keys ${h.describe([...keys].sort())}`, opts)
  /** Wait for an onJoin / onLeave of `key`. */
  client.waitCall = (type, key, opts) =>
    calls.waitFor((c) => c.type === type && c.key === key, `on${type === "join" ? "Join" : "Leave"}(${key})`, opts)
  /** The onJoin / onLeave calls for `key` since `from`. */
  client.callsFor = (key, from = 0) => calls.filter((c) => c.type !== "sync" && c.key === key, from)
  return client
}

/**
 * Connect a phoenix.js socket (`user`: its user_id connect param, none for an
 * anonymous socket), watch `topic` with a Presence, join with `{device}` and
 * wait for the first onSync that lists the client's own meta. `client.key` is
 * its presence key, `client.meta` its meta as its own Presence lists it.
 */
async function presenceClient(transport, topic, { user, device = h.uniq("device"), name, socket: socketOpts = {} } = {}) {
  const params = user === undefined ? {} : { user_id: user }
  const socket = await h.connectSocket(server, { transport, params, ...socketOpts })
  const client = watchPresence(socket, topic, { device }, `${name ?? user ?? "anonymous"} (${transport})`)
  assert.deepEqual(await h.joinChannel(client.channel), { status: "ok", response: {} }, `${client.name} joins ${topic}`)
  const state = await client.waitSync((s) => keyOfDevice(s, device) !== undefined, `${client.name}'s own meta (device ${device})`)
  client.key = keyOfDevice(state, device)
  client.meta = state[client.key].metas.find((m) => h.describe(m.device) === h.describe(device))
  if (user !== undefined) assert.equal(client.key, user, "the presence key is the user_id")
  return client
}

/**
 * A round trip through the topic's diffs: `pinger` updates its meta and every
 * observer waits for that update. Diffs of a topic are emitted in the order of
 * the changes, so by then each observer has received every diff caused before.
 */
async function barrier(pinger, observers) {
  const device = h.uniq("barrier")
  assert.deepEqual(await h.pushChannel(pinger.channel, "update_meta", { device }), { status: "ok", response: {} })
  for (const o of observers) {
    await o.waitSync((s) => has(s, pinger.key) && s[pinger.key].metas.some((m) => m.device === device),
      `${pinger.key}'s barrier update (on ${o.name})`)
  }
  await h.settle(50)
}

/** The presence_diff frames of `topic` received by `client` since `from` that mention `key`. */
const diffsAbout = (client, key, from = 0) => client.socket.frames.filter((m) => m.topic === client.topic &&
  m.event === "presence_diff" && (has(m.payload.joins, key) || has(m.payload.leaves, key)), from)

/** Socket options of a phoenix.js client speaking V1 (as in serializer_v1.test.mjs); raw frames go to `rawV1`. */
function v1SocketOpts(rawV1) {
  return {
    vsn: "1.0.0",
    encode: (msg, callback) => callback(JSON.stringify({
      join_ref: msg.join_ref, ref: msg.ref, topic: msg.topic, event: msg.event, payload: msg.payload,
    })),
    decode: (raw, callback) => {
      rawV1.push(raw)
      callback(JSON.parse(raw))
    },
  }
}

/**
 * What phoenix.js `Presence` makes of a sequence of presence_state /
 * presence_diff payloads (PROTOCOL.md §7.4), through its static API: diffs
 * before the first state wait for it.
 */
function replay(messages) {
  let state = {}
  let synced = false
  let pending = []
  for (const { event, payload } of messages) {
    if (event === "presence_state") {
      state = h.Presence.syncState(state, payload)
      for (const diff of pending) state = h.Presence.syncDiff(state, diff)
      pending = []
      synced = true
    } else if (event === "presence_diff") {
      if (synced) state = h.Presence.syncDiff(state, payload)
      else pending.push(payload)
    }
  }
  return Object.fromEntries(h.Presence.list(state, (key, pres) => [key, copy(pres)]))
}

h.forEachTransport((transport) => {
  test("a joiner's Presence syncs with itself from presence_state: {metas: [{device, online_at, phx_ref}]}", async () => {
    const topic = h.uniq("presence:self")
    const user = h.uniq("solo")
    const t0 = Date.now()
    const a = await presenceClient(transport, topic, { user, device: "web" })
    const t1 = Date.now()

    assert.deepEqual(Object.keys(a.meta).sort(), ["device", "online_at", "phx_ref"], `meta: ${h.describe(a.meta)}`)
    assert.equal(a.meta.device, "web")
    assert.equal(typeof a.meta.phx_ref, "string")
    assert.ok(a.meta.phx_ref.length > 0, "phx_ref is not empty")
    assert.ok(Number.isInteger(a.meta.online_at) && a.meta.online_at >= t0 - 1000 && a.meta.online_at <= t1 + 1000,
      `online_at is the join time in unix ms (${t0}..${t1}): ${a.meta.online_at}`)
    // the first onSync comes from presence_state; its onJoin had no previous presence
    assert.deepEqual(a.calls.find((c) => c.type === "sync").state, { [user]: { metas: [a.meta] } })
    assert.deepEqual(a.calls.find((c) => c.type === "join"), { type: "join", key: user, current: undefined, pres: { metas: [a.meta] } })
    assert.deepEqual(a.presence.list(), [{ metas: [a.meta] }], "list() without a chooser")

    // checklist 83: presence_state is a push for this join
    const state = a.socket.frames.find((m) => m.topic === topic && m.event === "presence_state")
    assert.deepEqual(state, { join_ref: a.channel.joinRef(), ref: null, topic, event: "presence_state",
      payload: { [user]: { metas: [a.meta] } } })
    // checklist 84: the joiner's own track is also a broadcast diff (join_ref null)
    const diff = await a.socket.frames.waitFor((m) => m.topic === topic && m.event === "presence_diff" &&
      has(m.payload.joins, user), "presence_diff of the joiner's own join")
    assert.deepEqual(diff, { join_ref: null, ref: null, topic, event: "presence_diff",
      payload: { joins: { [user]: { metas: [a.meta] } }, leaves: {} } })
    // state and diff in either order leave exactly one meta
    assert.deepEqual(a.state(), { [user]: { metas: [a.meta] } })
  })

  test("a second user joins: the first gets onJoin(key, undefined, presence) and both list both", async () => {
    const topic = h.uniq("presence:two")
    const [ua, ub] = [h.uniq("first"), h.uniq("second")]
    const a = await presenceClient(transport, topic, { user: ua })
    const mark = a.calls.mark()
    const b = await presenceClient(transport, topic, { user: ub })

    const joined = await a.waitCall("join", ub, { from: mark })
    assert.deepEqual(joined, { type: "join", key: ub, current: undefined, pres: { metas: [b.meta] } })
    const both = { [ua]: { metas: [a.meta] }, [ub]: { metas: [b.meta] } }
    assert.deepEqual(await a.waitKeys([ua, ub], { from: mark }), both)
    // the second one's first onSync (its presence_state) already lists both
    assert.deepEqual(b.calls.find((c) => c.type === "sync").state, both)
    assert.deepEqual(b.state(), both)
    assert.equal(b.presence.list().length, 2)
    await barrier(a, [a, b])
    assert.equal(a.callsFor(ub, mark).length, 1, `one onJoin for ${ub} on ${ua}: ${a.calls.dump(mark)}`)
  })

  const LEAVES = {
    "channel leave": { leave: (c) => leaveChannel(c) },
    // LongPoll has no close the server could see (the session would expire
    // 15–30 s later, longer than a test file may run): there the stopped
    // client's session is ended by /api/disconnect, as in stats.test.mjs
    "socket disconnect": {
      leave: async (c) => {
        await h.disconnectSocket(c.socket)
        if (transport === "longpoll") await apiDisconnectOk(c.key)
      },
    },
    // the socket must not come back during the test (rejoin: see below)
    "forced disconnect (/api/disconnect)": {
      socket: { reconnectAfterMs: () => 600000 },
      leave: (c) => apiDisconnectOk(c.key),
    },
  }
  for (const [how, { leave, socket }] of Object.entries(LEAVES)) {
    test(`${how}: the others get onLeave and lose the key, which never comes back`, async () => {
      const topic = h.uniq("presence:leave")
      const o1 = await presenceClient(transport, topic, { user: h.uniq("watcher") })
      const o2 = await presenceClient(transport, topic, { name: "anonymous watcher" })
      const l = await presenceClient(transport, topic, { user: h.uniq("leaver"), socket })
      const observers = [o1, o2]
      for (const o of observers) await o.waitKeys([o1.key, o2.key, l.key])
      const marks = observers.map((o) => ({ calls: o.calls.mark(), frames: o.socket.frames.mark() }))

      await leave(l)
      for (const [i, o] of observers.entries()) {
        const left = await o.waitCall("leave", l.key, { from: marks[i].calls })
        assert.deepEqual(left, { type: "leave", key: l.key, current: { metas: [] }, pres: { metas: [l.meta] } }, o.name)
        await o.waitKeys([o1.key, o2.key], { from: marks[i].calls })
      }
      // checklist 85: the entry is under `leaves`
      for (const [i, o] of observers.entries()) {
        assert.deepEqual(diffsAbout(o, l.key, marks[i].frames).map((m) => m.payload),
          [{ joins: {}, leaves: { [l.key]: { metas: [l.meta] } } }], `${o.name}: one diff with the leave`)
      }

      await barrier(o1, observers)
      for (const [i, o] of observers.entries()) {
        assert.deepEqual(o.callsFor(l.key, marks[i].calls).map((c) => c.type), ["leave"], `${o.name}: ${o.calls.dump(marks[i].calls)}`)
        assert.ok(!has(o.state(), l.key), `${o.name} no longer lists ${l.key}`)
        assert.equal(diffsAbout(o, l.key, marks[i].frames).length, 1, `${o.name}: no later diff about ${l.key}`)
      }
      const api = await apiPresence(topic)
      assert.ok(!has(api.json, l.key), `GET /api/presence has no ${l.key}: ${api.text}`)
    })
  }

  test("update_meta: one diff with the key in joins (phx_ref_prev) and leaves; onJoin then onLeave; the list shows the new meta only", async () => {
    const topic = h.uniq("presence:update")
    const [ua, uo] = [h.uniq("updater"), h.uniq("observer")]
    const a = await presenceClient(transport, topic, { user: ua, device: "web" })
    const o = await presenceClient(transport, topic, { user: uo })
    await a.waitKeys([ua, uo])
    const clients = [o, a]
    const marks = clients.map((c) => ({ calls: c.calls.mark(), frames: c.socket.frames.mark() }))
    const old = a.meta

    assert.deepEqual(await h.pushChannel(a.channel, "update_meta", { device: "ios" }), { status: "ok", response: {} })
    let fresh
    for (const [i, c] of clients.entries()) {
      await c.waitCall("leave", ua, { from: marks[i].calls })
      const [joined, left, ...rest] = c.callsFor(ua, marks[i].calls)
      assert.deepEqual(rest, [], `${c.name}: onJoin then onLeave only: ${c.calls.dump(marks[i].calls)}`)
      assert.equal(joined.type, "join", `${c.name}: onJoin first`)
      fresh ??= joined.pres.metas[0]
      assert.deepEqual(joined, { type: "join", key: ua, current: { metas: [old] }, pres: { metas: [fresh] } }, c.name)
      assert.deepEqual(left, { type: "leave", key: ua, current: { metas: [fresh] }, pres: { metas: [old] } }, c.name)
      assert.deepEqual(c.state()[ua], { metas: [fresh] }, `${c.name} lists the new meta only`)
    }
    assert.deepEqual(Object.keys(fresh).sort(), ["device", "online_at", "phx_ref", "phx_ref_prev"])
    assert.equal(fresh.device, "ios")
    assert.equal(fresh.online_at, old.online_at)
    assert.equal(typeof fresh.phx_ref, "string")
    assert.notEqual(fresh.phx_ref, old.phx_ref, "a new phx_ref")
    assert.equal(fresh.phx_ref_prev, old.phx_ref, "phx_ref_prev is the old phx_ref")

    // checklist 86: exactly one diff, carrying both
    await barrier(o, clients)
    for (const [i, c] of clients.entries()) {
      assert.deepEqual(diffsAbout(c, ua, marks[i].frames).map((m) => m.payload),
        [{ joins: { [ua]: { metas: [fresh] } }, leaves: { [ua]: { metas: [old] } } }], `${c.name}: the update's diff`)
    }
  })

  test("two sockets with one user_id: one key with two metas; each leave removes only its meta", async () => {
    const topic = h.uniq("presence:devices")
    const [user, uo] = [h.uniq("multi"), h.uniq("observer")]
    const o = await presenceClient(transport, topic, { user: uo })
    const phone = await presenceClient(transport, topic, { user, device: "phone" })
    await o.waitKeys([uo, user])
    let mark = o.calls.mark()
    const laptop = await presenceClient(transport, topic, { user, device: "laptop" })
    assert.equal(laptop.key, phone.key)

    const joined = await o.waitCall("join", user, { from: mark })
    assert.deepEqual(joined, { type: "join", key: user, current: { metas: [phone.meta] }, pres: { metas: [laptop.meta] } })
    // phoenix.js puts the metas it had before the joined ones
    assert.deepEqual(o.state()[user], { metas: [phone.meta, laptop.meta] })
    assert.deepEqual(normalized(laptop.state()), normalized(o.state()), "the second device lists both metas too")
    assert.deepEqual(normalized((await apiPresence(topic)).json), normalized(o.state()))

    // the phone leaves: the key stays with the laptop's meta
    const marks = [o, laptop].map((c) => c.calls.mark())
    await leaveChannel(phone)
    for (const [i, c] of [o, laptop].entries()) {
      const left = await c.waitCall("leave", user, { from: marks[i] })
      assert.deepEqual(left, { type: "leave", key: user, current: { metas: [laptop.meta] }, pres: { metas: [phone.meta] } }, c.name)
      assert.deepEqual(c.state()[user], { metas: [laptop.meta] }, `${c.name} keeps the key with the other meta`)
    }
    assert.deepEqual((await apiPresence(topic)).json[user], { metas: [laptop.meta] })

    // the laptop leaves: the key goes
    mark = o.calls.mark()
    await leaveChannel(laptop)
    const left = await o.waitCall("leave", user, { from: mark })
    assert.deepEqual(left, { type: "leave", key: user, current: { metas: [] }, pres: { metas: [laptop.meta] } })
    await o.waitKeys([uo], { from: mark })
    await h.waitUntil(async () => sameKeys((await apiPresence(topic)).json, [uo]), `GET /api/presence lists ${uo} only`)
  })

  test("two anonymous sockets get distinct anon-<n> keys; one socket keeps its key on another topic", async () => {
    const topic = h.uniq("presence:anon")
    const a = await presenceClient(transport, topic, { name: "anonymous a" })
    const b = await presenceClient(transport, topic, { name: "anonymous b" })
    for (const c of [a, b]) assert.match(c.key, /^anon-\d+$/, `${c.name}'s key`)
    assert.notEqual(a.key, b.key, "anonymous sockets have distinct keys")
    const both = { [a.key]: { metas: [a.meta] }, [b.key]: { metas: [b.meta] } }
    assert.deepEqual(await a.waitKeys([a.key, b.key]), both)
    assert.deepEqual(b.state(), both)

    // the key belongs to the socket: the same socket on a second topic
    const other = watchPresence(a.socket, h.uniq("presence:anon2"), { device: "second topic" }, "anonymous a, topic 2")
    assert.deepEqual(await h.joinChannel(other.channel), { status: "ok", response: {} })
    const state = await other.waitSync((s) => keysOf(s).length > 0, "its own presence")
    assert.deepEqual(keysOf(state), [a.key], "same anon key for the same socket")
  })

  test("rejoin after a forced disconnect: fresh presence_state, the right list again; the others saw the leave, then the join", async () => {
    // over LongPoll the client only notices when its pending poll returns
    const ms = transport === "longpoll" ? h.SESSION_END_MS : h.WAIT_MS
    const topic = h.uniq("presence:rejoin")
    const [uk, uo] = [h.uniq("kicked"), h.uniq("observer")]
    const k = await presenceClient(transport, topic, { user: uk, device: "kicked device" })
    const o = await presenceClient(transport, topic, { user: uo })
    await k.waitKeys([uk, uo])
    const oMark = o.calls.mark()
    const kMark = { calls: k.calls.mark(), frames: k.socket.frames.mark() }
    const firstJoinRef = k.channel.joinRef()
    const old = k.meta

    await apiDisconnectOk(uk)
    const left = await o.waitCall("leave", uk, { from: oMark })
    assert.deepEqual(left, { type: "leave", key: uk, current: { metas: [] }, pres: { metas: [old] } })
    const joined = await o.waitCall("join", uk, { from: oMark, ms })
    const fresh = joined.pres.metas[0]
    assert.deepEqual(joined, { type: "join", key: uk, current: undefined, pres: { metas: [fresh] } })
    assert.ok(o.calls.items.indexOf(left) < o.calls.items.indexOf(joined), "the leave came first")
    assert.equal(fresh.device, "kicked device", "the rejoin sends the join params again")
    assert.notEqual(fresh.phx_ref, old.phx_ref, "a new entry")
    assert.equal(fresh.phx_ref_prev, undefined, "a new track, not an update")

    // checklist 90: the rejoin got its own presence_state
    const state = await k.socket.frames.waitFor((m) => m.topic === topic && m.event === "presence_state" &&
      m.join_ref !== firstJoinRef, "presence_state for the rejoin", { from: kMark.frames, ms })
    assert.notEqual(k.channel.joinRef(), firstJoinRef, "phoenix.js rejoined with a new join ref")
    assert.equal(state.join_ref, k.channel.joinRef())
    const expected = normalized({ [uk]: { metas: [fresh] }, [uo]: { metas: [o.meta] } })
    assert.deepEqual(normalized(state.payload), expected)
    await k.waitSync((s) => h.describe(normalized(s)) === h.describe(expected), "the list after the rejoin", { from: kMark.calls })
    // the kicked client's Presence replaced its old meta (syncState)
    assert.ok(k.callsFor(uk, kMark.calls).some((c) => c.type === "leave" && h.describe(c.pres) === h.describe({ metas: [old] })),
      `${k.name}: onLeave of its old meta: ${k.calls.dump(kMark.calls)}`)
    assert.deepEqual(normalized(o.state()), expected)
    assert.deepEqual(normalized((await apiPresence(topic)).json), expected)
  })

  test("GET /api/presence/TOPIC equals what phoenix.js lists, and is {} once everyone left", async () => {
    const topic = h.uniq("presence:api")
    const a = await presenceClient(transport, topic, { user: h.uniq("api-a"), device: "web" })
    const b = await presenceClient(transport, topic, { user: h.uniq("api-b"), device: { os: "ios", v: [17, 2] } })
    const c = await presenceClient(transport, topic, { name: "anonymous api-c" })
    const clients = [a, b, c]
    assert.equal((await h.pushChannel(a.channel, "update_meta", { device: "desktop" })).status, "ok")
    for (const x of clients) {
      await x.waitSync((s) => sameKeys(s, [a.key, b.key, c.key]) && s[a.key].metas[0].device === "desktop", `all three, ${a.key} updated`)
    }

    const api = await apiPresence(topic)
    assert.equal(api.status, 200)
    assert.match(api.headers.get("content-type") ?? "", /^application\/json/)
    for (const x of clients) {
      assert.deepEqual(refsOf(api.json), refsOf(x.state()), `keys and phx_refs: API vs ${x.name}`)
      assert.deepEqual(normalized(api.json), normalized(x.state()), `the whole map: API vs ${x.name}`)
    }
    assert.deepEqual((await apiPresence(h.uniq("presence:nobody"))).json, {}, "a topic without presences")

    for (const x of clients) await leaveChannel(x)
    const empty = await h.waitUntil(async () => {
      const res = await apiPresence(topic)
      return keysOf(res.json).length === 0 && res
    }, "GET /api/presence to be empty")
    assert.deepEqual(empty.json, {})
  })

  test("raw V1 client: presence_state/presence_diff as {topic, event, payload, ref: null}, replayed by Presence like phoenix.js lists", async () => {
    const topic = h.uniq("presence:v1raw")
    const [uv, u2] = [h.uniq("v1raw"), h.uniq("v2")]
    const raw = await h.rawConnect(server, { transport, vsn: "1.0.0", params: { user_id: uv } })
    raw.sendJson({ join_ref: "1", ref: "1", topic, event: "phx_join", payload: { device: "v1 raw" } })
    const reply = await raw.frames.waitFor((f) => f.json?.ref === "1", "V1 join reply")
    assert.deepEqual(reply.json, { topic, event: "phx_reply", payload: { status: "ok", response: {} }, ref: "1" })
    const state = await raw.frames.waitFor((f) => f.json?.event === "presence_state", "V1 presence_state")
    const mine = state.json.payload[uv]?.metas?.[0]
    assert.equal(mine?.device, "v1 raw", `presence_state: ${state.text}`)
    assert.deepEqual(state.json, { topic, event: "presence_state", payload: { [uv]: { metas: [mine] } }, ref: null })

    const v2 = await presenceClient(transport, topic, { user: u2 })
    assert.deepEqual(normalized(v2.state()), normalized({ [uv]: { metas: [mine] }, [u2]: { metas: [v2.meta] } }))
    const diff = await raw.frames.waitFor((f) => f.json?.event === "presence_diff" && has(f.json.payload.joins, u2), "V1 presence_diff")
    assert.deepEqual(diff.json, { topic, event: "presence_diff", payload: { joins: { [u2]: { metas: [v2.meta] } }, leaves: {} }, ref: null })
    const replayed = replay(raw.frames.items.map((f) => f.json ?? {}))
    assert.deepEqual(normalized(replayed), normalized(v2.state()), "the V1 frames give the list phoenix.js shows")
    assert.deepEqual(normalized(replayed), normalized((await apiPresence(topic)).json))

    const mark = v2.calls.mark()
    raw.sendJson({ join_ref: "1", ref: "2", topic, event: "phx_leave", payload: {} })
    const left = await v2.waitCall("leave", uv, { from: mark })
    assert.deepEqual(left, { type: "leave", key: uv, current: { metas: [] }, pres: { metas: [mine] } })
    for (const f of raw.frames.items) {
      assert.deepEqual(Object.keys(f.json ?? {}).sort(), ["event", "payload", "ref", "topic"], `V1 frame: ${f.text}`)
    }
  })

  test("a device over 1024 bytes of JSON: join refused with {reason: device too large}, update_meta too; nobody sees a diff", async () => {
    const topic = h.uniq("presence:big")
    const o = await presenceClient(transport, topic, { user: h.uniq("observer") })
    const marks = { calls: o.calls.mark(), frames: o.socket.frames.mark() }

    // "y" × 1023 is 1025 bytes of JSON
    const bigUser = h.uniq("big")
    const socket = await h.connectSocket(server, { transport, params: { user_id: bigUser } })
    const big = watchPresence(socket, topic, { device: "y".repeat(1023) }, "big device")
    assert.deepEqual(await h.joinChannel(big.channel), { status: "error", response: { reason: "device too large" } })
    // phoenix.js retries a refused join (rejoinAfterMs): refused again
    const refusals = () => socket.frames.filter((m) => m.topic === topic && m.event === "phx_reply" && m.ref === m.join_ref)
    await h.waitUntil(() => refusals().length >= 2, "a second refusal (phoenix.js rejoins)")
    for (const r of refusals()) assert.deepEqual(r.payload, { status: "error", response: { reason: "device too large" } })
    big.channel.leave() // stop phoenix.js from retrying
    assert.deepEqual(big.calls.items, [], "the refused client's Presence never synced")

    // exactly 1024 bytes is accepted
    const edge = await presenceClient(transport, topic, { user: h.uniq("edge"), device: "z".repeat(1022) })
    assert.equal(JSON.stringify(edge.meta.device).length, 1024)
    await o.waitKeys([o.key, edge.key], { from: marks.calls })

    // update_meta over the limit: error, the meta stays
    const updMark = o.calls.mark()
    assert.deepEqual(await h.pushChannel(edge.channel, "update_meta", { device: { s: "w".repeat(1100) } }),
      { status: "error", response: { reason: "device too large" } })
    assert.deepEqual(await h.pushChannel(edge.channel, "update_meta", { device: "small" }), { status: "ok", response: {} })
    await o.waitSync((s) => s[edge.key]?.metas[0]?.device === "small", `${edge.key} with device small`, { from: updMark })

    await barrier(o, [o])
    assert.deepEqual(o.callsFor(bigUser, marks.calls), [], `no onJoin/onLeave for ${bigUser}: ${o.calls.dump(marks.calls)}`)
    assert.deepEqual(diffsAbout(o, bigUser, marks.frames), [], "no diff about the refused joiner")
    const edgeDiffs = diffsAbout(o, edge.key, marks.frames).map((m) => m.payload)
    assert.equal(edgeDiffs.length, 2, `the edge client's join and its one successful update: ${h.describe(edgeDiffs)}`)
    assert.deepEqual(edgeDiffs[1].joins[edge.key].metas.map((m) => m.device), ["small"])
    assert.ok(!has((await apiPresence(topic)).json, bigUser), "GET /api/presence has no refused joiner")
  })
})

describe("mixed transports", { skip: !(h.hasTransport("websocket") && h.hasTransport("longpoll")) && "needs both transports" }, () => {
  test("a WebSocket and a LongPoll client in one topic see each other's join, update and leave", async () => {
    const topic = h.uniq("presence:mixed")
    const ws = await presenceClient("websocket", topic, { user: h.uniq("mx-ws") })
    const lpMark = ws.calls.mark()
    const lp = await presenceClient("longpoll", topic, { user: h.uniq("mx-lp") })
    const both = { [ws.key]: { metas: [ws.meta] }, [lp.key]: { metas: [lp.meta] } }
    assert.deepEqual(await ws.waitCall("join", lp.key, { from: lpMark }),
      { type: "join", key: lp.key, current: undefined, pres: { metas: [lp.meta] } })
    assert.deepEqual(await ws.waitKeys([ws.key, lp.key]), both)
    assert.deepEqual(lp.state(), both, "the LongPoll client's presence_state lists the WebSocket client")

    // LongPoll → WebSocket: an update
    let mark = ws.calls.mark()
    assert.equal((await h.pushChannel(lp.channel, "update_meta", { device: "from longpoll" })).status, "ok")
    await ws.waitCall("leave", lp.key, { from: mark })
    const fresh = ws.state()[lp.key].metas[0]
    assert.equal(fresh.device, "from longpoll")
    assert.equal(fresh.phx_ref_prev, lp.meta.phx_ref)
    await lp.waitSync((s) => s[lp.key].metas[0].phx_ref === fresh.phx_ref, "its own update")

    // WebSocket → LongPoll: a leave
    mark = lp.calls.mark()
    await leaveChannel(ws)
    assert.deepEqual(await lp.waitCall("leave", ws.key, { from: mark }),
      { type: "leave", key: ws.key, current: { metas: [] }, pres: { metas: [ws.meta] } })
    assert.deepEqual(await lp.waitKeys([lp.key], { from: mark }), { [lp.key]: { metas: [fresh] } })
    assert.deepEqual((await apiPresence(topic)).json, lp.state())
  })
})

// phoenix.js speaks V1 over WebSocket only (it ignores encode/decode over
// LongPoll, see serializer_v1.test.mjs); the raw V1 test above runs over both.
test("V1 serializer (phoenix.js, WebSocket): Presence works across a V1 and a V2 client; V1 frames have no join_ref", async () => {
  const topic = h.uniq("presence:v1")
  const rawV1 = []
  const v1 = await presenceClient("websocket", topic, { user: h.uniq("v1"), device: "v1", socket: v1SocketOpts(rawV1) })
  let mark = v1.calls.mark()
  const v2 = await presenceClient("websocket", topic, { user: h.uniq("v2"), device: "v2" })
  const both = normalized({ [v1.key]: { metas: [v1.meta] }, [v2.key]: { metas: [v2.meta] } })
  assert.deepEqual(await v1.waitCall("join", v2.key, { from: mark }),
    { type: "join", key: v2.key, current: undefined, pres: { metas: [v2.meta] } })
  assert.deepEqual(normalized(await v1.waitKeys([v1.key, v2.key])), both)
  assert.deepEqual(normalized(v2.state()), both)

  // an update from the V1 client, seen by both
  const v2Mark = v2.calls.mark()
  mark = v1.calls.mark()
  assert.deepEqual(await h.pushChannel(v1.channel, "update_meta", { device: "v1 updated" }), { status: "ok", response: {} })
  for (const [c, from] of [[v2, v2Mark], [v1, mark]]) {
    await c.waitCall("leave", v1.key, { from })
    const [meta] = c.state()[v1.key].metas
    assert.equal(meta.device, "v1 updated", c.name)
    assert.equal(meta.phx_ref_prev, v1.meta.phx_ref, c.name)
  }

  const frames = rawV1.map((r) => JSON.parse(r))
  for (const f of frames) {
    assert.deepEqual(Object.keys(f).sort(), ["event", "payload", "ref", "topic"], `V1 frame: ${h.describe(f)}`)
  }
  const state = frames.find((f) => f.event === "presence_state")
  assert.deepEqual(state, { topic, event: "presence_state", payload: { [v1.key]: { metas: [v1.meta] } }, ref: null })
  assert.ok(frames.some((f) => f.event === "presence_diff" && has(f.payload.joins, v2.key) && f.ref === null), "the V2 join as a V1 diff")

  const v2Leave = v2.calls.mark()
  await leaveChannel(v1)
  assert.equal((await v2.waitCall("leave", v1.key, { from: v2Leave })).pres.metas[0].device, "v1 updated")
})
