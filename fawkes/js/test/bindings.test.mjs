// A channel's bindings, kept by event: what a trigger calls when callbacks
// add or remove bindings, `off` with and without a ref, and the read-only
// `bindings` list phoenix.js code may read. No server needed.
import { test } from "node:test"
import assert from "node:assert/strict"
import { Socket } from "../fawkes.js"

// never connected: a transport is only made on connect()
const channel = () => new Socket("ws://127.0.0.1:1/socket", { transport: class {} }).channel("room:x")

test("a trigger calls the bindings of its event in order, with a snapshot of them", () => {
  const ch = channel()
  const calls = []
  let late = null
  const first = ch.on("ev", (p) => {
    calls.push(["first", p.n])
    // added and removed during the trigger: this trigger is unaffected
    late = ch.on("ev", (q) => calls.push(["late", q.n]))
    ch.off("ev", second)
  })
  const second = ch.on("ev", (p) => calls.push(["second", p.n]))
  ch.on("other", () => calls.push(["other"]))
  ch.trigger("ev", { n: 1 })
  assert.deepEqual(calls, [["first", 1], ["second", 1]])
  calls.length = 0
  ch.off("ev", first)
  ch.trigger("ev", { n: 2 })
  assert.deepEqual(calls, [["late", 2]])
  assert.ok(late !== null)
})

test("off without a ref removes every binding of the event, and only those", () => {
  const ch = channel()
  const calls = []
  ch.on("a", () => calls.push("a1"))
  ch.on("a", () => calls.push("a2"))
  ch.on("b", () => calls.push("b"))
  ch.off("a")
  ch.off("missing")
  ch.off("b", 12345)
  ch.trigger("a", {})
  ch.trigger("b", {})
  assert.deepEqual(calls, ["b"])
})

test("bindings lists every binding in the order of on, as phoenix.js's array", () => {
  const ch = channel()
  const before = ch.bindings.length // the channel's own (phx_close, phx_error, phx_reply, ...)
  const r1 = ch.on("x", () => {})
  const r2 = ch.on("y", () => {})
  const r3 = ch.on("x", () => {})
  const mine = ch.bindings.slice(before)
  assert.deepEqual(mine.map((b) => [b.event, b.ref]), [["x", r1], ["y", r2], ["x", r3]])
  ch.off("x", r1)
  assert.deepEqual(ch.bindings.slice(before).map((b) => b.ref), [r2, r3])
})
