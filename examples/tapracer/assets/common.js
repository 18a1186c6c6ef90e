// TapRacer's shared browser code: the race state, the track, the phase
// banner, the lobby, the leaderboard, the chat and the connection badge.
// Used by player.js (the phone page) and console.js (the big screen).
//
// User text (names, chat) only ever goes into the page through
// textContent or attributes set with setAttribute: never innerHTML.

/** Builds an element: `h("li", {class: "x", "data-testid": "y"}, "text", child)`. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** The element with this data-testid (throws if the page lacks it: a bug in the page). */
export function byTestId(id, root = document) {
  const node = root.querySelector(`[data-testid="${id}"]`);
  if (!node) throw new Error(`missing element [data-testid="${id}"]`);
  return node;
}

/** A name as the server takes it: trimmed, 1 to 24 characters; or an error message. */
export function checkName(raw) {
  const name = String(raw ?? "").trim();
  const length = [...name].length;
  if (length === 0) return { error: "Pick a name." };
  if (length > 24) return { error: "24 characters at most." };
  return { name };
}

/** "4.21 s" */
export function formatMs(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  return `${(ms / 1000).toFixed(2)} s`;
}

const PALETTE = ["#ff5d73", "#3ec5ff", "#ffc83d", "#58e07a", "#c08bff", "#ff9a3d", "#2ee6c9", "#ff7ad9"];
const colors = new Map();

/**
 * A racer's colour: the next unused one of the palette the first time this
 * page sees the id, the same one after that (so lane and lobby agree).
 */
export function colorFor(id) {
  let color = colors.get(id);
  if (!color) {
    const used = new Set(colors.values());
    color = PALETTE.find((c) => !used.has(c)) || PALETTE[colors.size % PALETTE.length];
    colors.set(id, color);
  }
  return color;
}

function initial(name) {
  const first = [...String(name).trim()][0];
  return first ? first.toUpperCase() : "?";
}

// ---------------------------------------------------------------- race state

/**
 * The race as the server last told it: the RACE object of `race` pushes and
 * join replies, with the positions of `tick` pushes folded in.
 */
export class RaceState {
  constructor() {
    this.race = null;
    this.pos = new Map();
    this.listeners = [];
  }

  onChange(fn) {
    this.listeners.push(fn);
  }

  emit(kind) {
    for (const fn of this.listeners) fn(this, kind);
  }

  /** A RACE object (join reply or `race` push). */
  setRace(race) {
    if (!race || typeof race !== "object") return;
    const previous = this.race;
    this.race = race;
    // A new race number, or back to the lobby: old positions are stale.
    if (!previous || previous.race !== race.race || race.phase === "lobby") this.pos.clear();
    for (const r of race.racers || []) {
      const known = this.pos.get(r.id);
      if (known === undefined || race.phase !== "racing" || r.taps > known) this.pos.set(r.id, r.taps);
    }
    this.emit("race");
  }

  /** A `tick` push: `{race, t, pos}`. */
  setTick(tick) {
    if (!tick || !this.race || tick.race !== this.race.race) return;
    for (const [id, taps] of Object.entries(tick.pos || {})) this.pos.set(id, taps);
    this.emit("tick");
  }

  get phase() {
    return this.race ? this.race.phase : "connecting";
  }

  get track() {
    return (this.race && this.race.track) || 1;
  }

  racers() {
    return ((this.race && this.race.racers) || []).map((r) => ({
      id: r.id,
      name: r.name,
      taps: this.pos.has(r.id) ? this.pos.get(r.id) : r.taps || 0,
    }));
  }

  tapsOf(id) {
    return this.pos.get(id) ?? 0;
  }
}

// ---------------------------------------------------------------- the track

/**
 * Draws the lanes into `container`, one per racer, keeping each lane's
 * element from one render to the next so the racer glides (CSS transition)
 * instead of jumping.
 */
export function renderTrack(container, state, { youId = null, emptyText = "No racers yet." } = {}) {
  const racers = state.racers();
  const track = state.track;
  const finished = state.phase === "finished";
  const winnerId = finished && state.race.winner ? state.race.winner.id : null;
  const lanes = new Map();
  for (const lane of container.querySelectorAll(":scope > .lane")) lanes.set(lane.dataset.racerId, lane);

  const wanted = new Set(racers.map((r) => r.id));
  for (const [id, lane] of lanes) if (!wanted.has(id)) lane.remove();

  let previous = null;
  for (const racer of racers) {
    let lane = lanes.get(racer.id);
    if (!lane) {
      lane = h(
        "div",
        { class: "lane", "data-testid": "lane", "data-racer-id": racer.id },
        h("div", { class: "lane-name", "data-testid": "lane-name" }),
        h(
          "div",
          { class: "lane-road" },
          h("div", { class: "lane-fill" }),
          h("div", { class: "lane-finish", "aria-hidden": "true" }),
          h("div", { class: "racer", "aria-hidden": "true" }),
        ),
        h("div", { class: "lane-taps", "data-testid": "lane-taps" }),
      );
      lane.style.setProperty("--racer-color", colorFor(racer.id));
    }
    const taps = Math.max(0, Math.min(track, racer.taps));
    lane.dataset.name = racer.name;
    lane.dataset.taps = String(racer.taps);
    lane.style.setProperty("--progress", String(taps / track));
    lane.classList.toggle("you", racer.id === youId);
    lane.classList.toggle("winner", racer.id === winnerId);
    lane.querySelector(".lane-name").textContent = racer.name;
    lane.querySelector(".racer").textContent = initial(racer.name);
    lane.querySelector(".lane-taps").textContent = `${racer.taps}/${track}`;
    // Keep the server's order (the order racers joined).
    const expectedPlace = previous ? previous.nextSibling : container.firstElementChild;
    if (lane !== expectedPlace || lane.parentNode !== container) {
      if (previous) previous.after(lane);
      else container.prepend(lane);
    }
    previous = lane;
  }

  let empty = container.querySelector(":scope > .track-empty");
  if (racers.length === 0) {
    if (!empty) container.append(h("p", { class: "track-empty", "data-testid": "track-empty" }, emptyText));
  } else if (empty) {
    empty.remove();
  }
  container.dataset.phase = state.phase;
  container.dataset.race = state.race ? String(state.race.race) : "";
}

// ---------------------------------------------------------------- the phase

/**
 * The phase banner: countdown numbers, GO!, the winner. Counts the countdown
 * down locally from the `countdown_ms` the server last sent. An optional
 * overlay shows the big countdown number, then GO! for a moment.
 */
export class PhaseView {
  constructor(node, { idleText = "Lobby", overlay = null, goMs = 900 } = {}) {
    this.node = node;
    this.overlay = overlay;
    this.idleText = idleText;
    this.goMs = goMs;
    this.deadline = 0;
    this.goUntil = 0;
    this.timer = null;
    this.lastKey = "";
    this.state = null;
  }

  update(state) {
    this.state = state;
    const race = state.race;
    const phase = state.phase;
    const key = race ? `${race.race}:${phase}:${race.countdown_ms}` : phase;
    if (key !== this.lastKey) {
      if (phase === "countdown") this.deadline = performance.now() + (race.countdown_ms || 0);
      if (phase === "racing" && !this.lastKey.startsWith(`${race.race}:racing:`)) this.goUntil = performance.now() + this.goMs;
      this.lastKey = key;
    }
    this.paint();
    const ticking = phase === "countdown" || (phase === "racing" && performance.now() < this.goUntil);
    if (ticking && !this.timer) {
      this.timer = setInterval(() => {
        this.paint();
        const p = this.state.phase;
        if (p !== "countdown" && !(p === "racing" && performance.now() < this.goUntil)) this.stop();
      }, 50);
    } else if (!ticking) {
      this.stop();
    }
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  paint() {
    const state = this.state;
    const race = state.race;
    const phase = state.phase;
    let text;
    let sub = "";
    if (phase === "connecting") {
      text = "Connecting…";
    } else if (phase === "lobby") {
      text = this.idleText;
      sub = race.racers && race.racers.length ? "Press Start race when everyone is in" : "Waiting for racers";
    } else if (phase === "countdown") {
      const left = Math.max(0, this.deadline - performance.now());
      text = String(Math.max(1, Math.ceil(left / 1000)));
      sub = "Get ready…";
    } else if (phase === "racing") {
      text = "GO!";
      sub = `First to ${race.track} taps wins`;
    } else if (phase === "finished") {
      if (race.winner) {
        text = `${race.winner.name} wins!`;
        sub = formatMs(race.winner.ms);
      } else {
        text = "Time's up!";
        sub = "No winner this time";
      }
    } else {
      text = String(phase);
    }
    this.node.dataset.phase = phase;
    const main = this.node.querySelector(".phase-main");
    const detail = this.node.querySelector(".phase-sub");
    if (main && main.textContent !== text) main.textContent = text;
    if (detail && detail.textContent !== sub) detail.textContent = sub;
    if (this.overlay) {
      const go = phase === "racing" && performance.now() < this.goUntil;
      const show = phase === "countdown" || go;
      this.overlay.hidden = !show;
      this.overlay.dataset.phase = phase;
      const overlayText = phase === "countdown" ? text : "GO!";
      if (show && this.overlay.textContent !== overlayText) this.overlay.textContent = overlayText;
    }
  }
}

// ---------------------------------------------------------------- lobby

/**
 * The lobby from a phoenix Presence: `[{id, name, count}]` sorted by when
 * they came online, then by name.
 */
export function lobbyEntries(presence) {
  return presence
    .list((id, { metas }) => {
      const first = metas[0] || {};
      const since = Math.min(...metas.map((m) => (typeof m.online_at === "number" ? m.online_at : Infinity)));
      return { id, name: String(first.name ?? id), since, count: metas.length };
    })
    .sort((a, b) => a.since - b.since || a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
}

export function renderLobby(list, countNode, entries, youId = null) {
  list.replaceChildren(
    ...entries.map((entry) =>
      h(
        "li",
        {
          class: entry.id === youId ? "lobby-entry you" : "lobby-entry",
          "data-testid": "lobby-entry",
          "data-racer-id": entry.id,
          "data-name": entry.name,
          style: `--racer-color: ${colorFor(entry.id)}`,
        },
        h("span", { class: "dot", "aria-hidden": "true" }),
        h("span", { class: "lobby-name" }, entry.name),
        entry.id === youId ? h("span", { class: "tag" }, "you") : null,
      ),
    ),
  );
  if (entries.length === 0) list.append(h("li", { class: "lobby-empty" }, "Nobody here yet"));
  if (countNode) countNode.textContent = String(entries.length);
}

// ---------------------------------------------------------------- leaderboard

export function renderLeaderboard(tbody, leaderboard) {
  const rows = (leaderboard || []).map((row, i) =>
    h(
      "tr",
      { "data-testid": "leaderboard-row", "data-name": row.name, "data-wins": row.wins },
      h("td", { class: "rank" }, i + 1),
      h("td", { class: "lb-name", "data-testid": "leaderboard-name" }, row.name),
      h("td", { class: "lb-wins", "data-testid": "leaderboard-wins" }, row.wins),
      h("td", { class: "lb-best" }, formatMs(row.best_ms)),
    ),
  );
  if (rows.length === 0) rows.push(h("tr", { class: "lb-empty" }, h("td", { colspan: 4 }, "No wins yet")));
  tbody.replaceChildren(...rows);
}

// ---------------------------------------------------------------- chat

const MAX_MESSAGES = 200;

function clock(ms) {
  const date = typeof ms === "number" ? new Date(ms) : new Date();
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** Appends a `new_msg` payload `{user, body, at}` to the list, keeping it scrolled to the end. */
export function appendChat(list, msg, myName = null) {
  const scroller = list.closest(".chat-scroll") || list;
  const atEnd = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  const mine = myName !== null && msg.user === myName;
  list.append(
    h(
      "li",
      { class: mine ? "chat-message mine" : "chat-message", "data-testid": "chat-message", "data-user": msg.user },
      h("span", { class: "chat-user", "data-testid": "chat-user" }, String(msg.user ?? "?")),
      h("span", { class: "chat-body", "data-testid": "chat-body" }, String(msg.body ?? "")),
      h("time", { class: "chat-time" }, clock(msg.at)),
    ),
  );
  while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove();
  list.closest("[data-testid=chat]")?.querySelector(".chat-empty")?.remove();
  if (atEnd || mine) scroller.scrollTop = scroller.scrollHeight;
}

// ---------------------------------------------------------------- connection

/**
 * Shows the socket's state in `node` (`data-state`: connecting, open,
 * reconnecting, closed) and returns a function that stops watching.
 */
export function watchConnection(socket, node) {
  const set = (state, text) => {
    node.dataset.state = state;
    node.textContent = text;
    document.body.dataset.conn = state;
  };
  let opened = false;
  set("connecting", "Connecting…");
  const refs = [
    socket.onOpen(() => {
      opened = true;
      set("open", "Connected");
    }),
    socket.onError(() => set(opened ? "reconnecting" : "connecting", opened ? "Reconnecting…" : "Connecting…")),
    socket.onClose(() => {
      if (node.dataset.state === "open") set("reconnecting", "Reconnecting…");
    }),
  ];
  return () => socket.off(refs);
}

/** Joins a channel; `onOk(reply)` runs on the first join and on every rejoin. */
export function join(channel, { onOk, onError } = {}) {
  channel
    .join()
    .receive("ok", (reply) => onOk && onOk(reply || {}))
    .receive("error", (reply) => onError && onError((reply && reply.reason) || "refused"))
    .receive("timeout", () => onError && onError("no answer from the server"));
  return channel;
}

/** Pushes and calls back `(null)` on ok or `(reason)` on an error or a timeout. */
export function pushWithReply(channel, event, payload, done) {
  channel
    .push(event, payload)
    .receive("ok", () => done(null))
    .receive("error", (reply) => done((reply && reply.reason) || "refused"))
    .receive("timeout", () => done("no answer from the server"));
}

/** Shows `text` in `node` for a while (empty text hides it). */
export function flash(node, text, ms = 4000) {
  clearTimeout(node._flashTimer);
  node.textContent = text || "";
  node.hidden = !text;
  if (text && ms > 0) {
    node._flashTimer = setTimeout(() => {
      node.textContent = "";
      node.hidden = true;
    }, ms);
  }
}

/** True when prefers-reduced-motion asks for it. */
export function reducedMotion() {
  return window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
}
