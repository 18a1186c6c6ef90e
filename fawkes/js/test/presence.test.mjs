// Presence unit tests (syncState / syncDiff / list, pending diffs until the
// state of the current join), on a stand-in channel.
import { test } from "node:test"
import assert from "node:assert/strict"
import { Presence } from "../fawkes.js"

const meta = (ref, extra = {}) => ({ phx_ref: ref, ...extra })

/** The part of Channel that Presence uses: on(), joinRef(), and a way to deliver events. */
function fakeChannel() {
  const bindings = []
  return {
    ref: "1",
    on(event, cb) { bindings.push({ event, cb }); return bindings.length },
    joinRef() { return this.ref },
    emit(event, payload) { for (const b of bindings) if (b.event === event) b.cb(payload) },
  }
}

test("syncState: joins and leaves against the current state, keeping metas with known refs", () => {
  const joins = []
  const leaves = []
  const state = { u1: { metas: [meta("1"), meta("2")] }, gone: { metas: [meta("3")] } }
  const next = { u1: { metas: [meta("2"), meta("4")] }, u2: { metas: [meta("5")] } }
  const out = Presence.syncState(state, next, (k, cur, np) => joins.push([k, cur && cur.metas.map((m) => m.phx_ref), np.metas.map((m) => m.phx_ref)]),
    (k, cur, lp) => leaves.push([k, cur.metas.map((m) => m.phx_ref), lp.metas.map((m) => m.phx_ref)]))
  assert.deepEqual(JSON.parse(JSON.stringify(out)), { u1: { metas: [meta("2"), meta("4")] }, u2: { metas: [meta("5")] } })
  assert.deepEqual(joins, [["u1", ["1", "2"], ["4"]], ["u2", undefined, ["5"]]])
  assert.deepEqual(leaves, [["gone", [], ["3"]], ["u1", ["2", "4"], ["1"]]])
  // the input is not mutated
  assert.deepEqual(state.u1.metas.map((m) => m.phx_ref), ["1", "2"])
})

test("syncDiff: an update (same key in joins and leaves) keeps only the new meta", () => {
  const state = { u1: { metas: [meta("1", { device: "a" })] } }
  const out = Presence.syncDiff(state, {
    joins: { u1: { metas: [meta("2", { device: "b", phx_ref_prev: "1" })] } },
    leaves: { u1: { metas: [meta("1", { device: "a" })] } },
  })
  assert.deepEqual(Presence.list(out, (k, p) => [k, p.metas.map((m) => m.device)]), [["u1", ["b"]]])
})

test("syncDiff: leaving the last meta removes the key; unknown leaves are ignored", () => {
  const left = []
  const out = Presence.syncDiff({ u1: { metas: [meta("1")] } }, { joins: {}, leaves: { u1: { metas: [meta("1")] }, nobody: { metas: [meta("9")] } } },
    null, (k) => left.push(k))
  assert.deepEqual(Object.keys(out), [])
  assert.deepEqual(left, ["u1"])
})

test("keys like __proto__ and constructor are ordinary presence keys", () => {
  const out = Presence.syncState({}, JSON.parse('{"__proto__":{"metas":[{"phx_ref":"1"}]},"constructor":{"metas":[{"phx_ref":"2"}]}}'))
  assert.deepEqual(Presence.list(out, (k) => k).sort(), ["__proto__", "constructor"])
})

test("a Presence holds diffs until the state of the current join, then applies them in order", () => {
  const channel = fakeChannel()
  const p = new Presence(channel)
  const calls = []
  p.onJoin((k) => calls.push(`join ${k}`))
  p.onLeave((k) => calls.push(`leave ${k}`))
  p.onSync(() => calls.push("sync"))
  assert.equal(p.inPendingSyncState(), true)

  channel.emit("presence_diff", { joins: { b: { metas: [meta("2")] } }, leaves: {} })
  assert.deepEqual(calls, [], "no callbacks while pending")
  channel.emit("presence_state", { a: { metas: [meta("1")] } })
  assert.deepEqual(calls, ["join a", "join b", "sync"])
  assert.equal(p.inPendingSyncState(), false)
  assert.deepEqual(p.list((k) => k), ["a", "b"])

  channel.emit("presence_diff", { joins: {}, leaves: { a: { metas: [meta("1")] } } })
  assert.deepEqual(calls.slice(3), ["leave a", "sync"])

  // a rejoin (new join ref) makes it pending again until the fresh state
  channel.ref = "7"
  assert.equal(p.inPendingSyncState(), true)
  channel.emit("presence_diff", { joins: { c: { metas: [meta("3")] } }, leaves: {} })
  assert.deepEqual(p.list((k) => k), ["b"])
  channel.emit("presence_state", { b: { metas: [meta("2")] } })
  assert.deepEqual(p.list((k) => k), ["b", "c"])
})

test("custom event names", () => {
  const channel = fakeChannel()
  const p = new Presence(channel, { events: { state: "st", diff: "df" } })
  channel.emit("st", { x: { metas: [meta("1")] } })
  assert.deepEqual(p.list((k) => k), ["x"])
})
