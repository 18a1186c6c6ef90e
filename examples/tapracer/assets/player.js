// TapRacer's player page: pick a name, join `play` and `chat:lobby`, tap.
import { Socket, Presence } from "/socket/fawkes.js";
import {
  RaceState,
  PhaseView,
  appendChat,
  byTestId,
  checkName,
  flash,
  join,
  lobbyEntries,
  pushWithReply,
  renderLeaderboard,
  renderLobby,
  renderTrack,
  watchConnection,
} from "/assets/common.js";

const NAME_KEY = "tapracer.name";

const ui = {
  nameScreen: byTestId("name-screen"),
  nameForm: byTestId("name-form"),
  nameInput: byTestId("name-input"),
  nameError: byTestId("name-error"),
  who: byTestId("who"),
  myName: byTestId("my-name"),
  changeName: byTestId("change-name"),
  conn: byTestId("conn-status"),
  game: byTestId("game"),
  phase: byTestId("phase"),
  track: byTestId("track"),
  tap: byTestId("tap"),
  tapHint: document.querySelector(".tap-hint"),
  start: byTestId("start"),
  startError: byTestId("start-error"),
  lobby: byTestId("lobby"),
  lobbyCount: byTestId("lobby-count"),
  chat: byTestId("chat"),
  chatList: byTestId("chat-messages"),
  chatForm: byTestId("chat-form"),
  chatInput: byTestId("chat-input"),
  chatError: byTestId("chat-error"),
  leaderboard: byTestId("leaderboard"),
};

// One session per name: a socket with its two channels. Changing the name
// tears it down and opens a new one (the name is a connect param).
let session = null;

// The name is kept per tab (sessionStorage: a reload rejoins at once) and
// per browser (localStorage: a new window offers it, so two windows of one
// browser can race as two players).
function stored(which) {
  try {
    return window[which].getItem(NAME_KEY) || "";
  } catch {
    return "";
  }
}

function remembered() {
  return stored("sessionStorage") || stored("localStorage");
}

function remember(name) {
  for (const which of ["sessionStorage", "localStorage"]) {
    try {
      window[which].setItem(NAME_KEY, name);
    } catch {
      // Private mode: the name is simply not remembered.
    }
  }
}

function showNameScreen(prefill, error = "") {
  ui.game.hidden = true;
  ui.who.hidden = true;
  ui.nameScreen.hidden = false;
  ui.nameInput.value = prefill;
  flash(ui.nameError, error, 0);
  ui.conn.dataset.state = "idle";
  ui.conn.textContent = "Not connected";
  document.body.dataset.conn = "idle";
  ui.nameInput.focus();
}

function startSession(name) {
  stopSession();
  remember(name);
  ui.nameScreen.hidden = true;
  ui.game.hidden = false;
  ui.who.hidden = false;
  ui.myName.textContent = name;
  ui.chatList.replaceChildren();
  ui.chat.dataset.joined = "false";
  flash(ui.startError, "", 0);
  flash(ui.chatError, "", 0);

  // Behind a proxy that blocks WebSockets, long-poll instead.
  const socket = new Socket("/socket", { params: { name }, longPollFallbackMs: 2500 });
  const state = new RaceState();
  const phaseView = new PhaseView(ui.phase, { idleText: "Lobby" });
  const s = { name, socket, state, phaseView, you: null, playJoined: false, live: true };
  session = s;

  const stopWatching = watchConnection(socket, ui.conn);
  s.stopWatching = stopWatching;

  const render = () => {
    if (!s.live) return;
    renderTrack(ui.track, state, { youId: s.you, emptyText: "Nobody on the line yet." });
    phaseView.update(state);
    renderLeaderboard(ui.leaderboard, state.race && state.race.leaderboard);
    const racing = state.phase === "racing";
    const entrant = !!(state.race && (state.race.racers || []).some((r) => r.id === s.you));
    ui.tap.dataset.ready = String(racing && entrant);
    let hint = "Press Start race";
    if ((state.phase === "racing" || state.phase === "countdown") && !entrant) hint = "You're in the next race";
    else if (state.phase === "countdown") hint = "Get ready…";
    else if (racing) hint = "or space bar";
    ui.tapHint.textContent = hint;
    document.body.dataset.phase = state.phase;
  };
  state.onChange(render);

  // `play`: the race.
  const play = socket.channel("play", {});
  s.play = play;
  play.on("race", (race) => s.live && state.setRace(race));
  play.on("tick", (tick) => s.live && state.setTick(tick));
  play.onError(() => {
    s.playJoined = false;
  });
  play.onClose(() => {
    s.playJoined = false;
  });
  const presence = new Presence(play);
  presence.onSync(() => {
    if (s.live) renderLobby(ui.lobby, ui.lobbyCount, lobbyEntries(presence), s.you);
  });
  join(play, {
    onOk: (reply) => {
      if (!s.live) return;
      s.you = reply.you ?? null;
      s.playJoined = true;
      ui.game.dataset.you = s.you || "";
      if (reply.race) state.setRace(reply.race);
      else render();
      renderLobby(ui.lobby, ui.lobbyCount, lobbyEntries(presence), s.you);
    },
    onError: (reason) => {
      if (!s.live) return;
      flash(ui.startError, `Could not join the race: ${reason}`, 0);
    },
  });

  // `chat:lobby`: the talk's chat.
  const chat = socket.channel("chat:lobby", {});
  s.chat = chat;
  chat.on("new_msg", (msg) => s.live && appendChat(ui.chatList, msg, name));
  chat.onError(() => {
    if (s.live) ui.chat.dataset.joined = "false";
  });
  join(chat, {
    onOk: () => {
      if (s.live) ui.chat.dataset.joined = "true";
    },
    onError: (reason) => s.live && flash(ui.chatError, `Chat unavailable: ${reason}`, 0),
  });

  socket.connect();
  render();
}

function stopSession() {
  const s = session;
  if (!s) return;
  session = null;
  s.live = false;
  s.stopWatching();
  s.phaseView.stop();
  s.socket.disconnect();
  ui.track.replaceChildren();
  ui.lobby.replaceChildren();
}

// ---------------------------------------------------------------- tapping

function tap() {
  const s = session;
  if (!s || !s.playJoined || !s.socket.isConnected()) return;
  if (s.state.phase !== "racing") return;
  // Taps are never answered: a short timeout lets each push's wait for a
  // reply go soon, instead of piling up for the default 10 s.
  s.play.push("tap", {}, 1000);
  ui.tap.classList.remove("pressed");
  // Restart the press animation.
  void ui.tap.offsetWidth;
  ui.tap.classList.add("pressed");
}

ui.tap.addEventListener("pointerdown", (event) => {
  // Only the primary button of a mouse; every finger of a touch screen.
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  tap();
});
ui.tap.addEventListener("contextmenu", (event) => event.preventDefault());
ui.tap.addEventListener("animationend", () => ui.tap.classList.remove("pressed"));

function typingTarget(target) {
  return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
}

document.addEventListener("keydown", (event) => {
  if (ui.game.hidden || typingTarget(event.target)) return;
  const space = event.code === "Space" || event.key === " ";
  const enterOnTap = event.key === "Enter" && event.target === ui.tap;
  if (!space && !enterOnTap) return;
  // Taps are ours: a focused button (Start race, say) must not also "click".
  event.preventDefault();
  if (!event.repeat) tap();
});

// ---------------------------------------------------------------- buttons and forms

ui.start.addEventListener("click", () => {
  const s = session;
  if (!s || !s.playJoined) {
    flash(ui.startError, "Not connected yet");
    return;
  }
  flash(ui.startError, "", 0);
  pushWithReply(s.play, "start", {}, (reason) => {
    if (s.live && reason) flash(ui.startError, reason);
  });
});

ui.chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const s = session;
  if (!s) return;
  const body = ui.chatInput.value;
  flash(ui.chatError, "", 0);
  pushWithReply(s.chat, "new_msg", { body }, (reason) => {
    if (!s.live) return;
    if (reason) {
      flash(ui.chatError, reason);
    } else if (ui.chatInput.value === body) {
      ui.chatInput.value = "";
    }
  });
});

ui.nameForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const checked = checkName(ui.nameInput.value);
  if (checked.error) {
    flash(ui.nameError, checked.error, 0);
    ui.nameInput.focus();
    return;
  }
  startSession(checked.name);
});

ui.changeName.addEventListener("click", () => {
  const name = session ? session.name : remembered();
  stopSession();
  showNameScreen(name);
  ui.nameInput.select();
});

// ---------------------------------------------------------------- go

{
  const checked = checkName(stored("sessionStorage"));
  if (checked.name) startSession(checked.name);
  else showNameScreen(stored("localStorage"));
}
