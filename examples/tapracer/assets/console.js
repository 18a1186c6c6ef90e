// TapRacer's console: the big screen. A viewer (no name) on `console` and
// `chat:lobby`: the track, the countdown, the winner, the leaderboard, the
// lobby, a Start race button and the chat, read only.
import { Socket, Presence } from "/socket/fawkes.js";
import {
  RaceState,
  PhaseView,
  appendChat,
  byTestId,
  flash,
  formatMs,
  join,
  lobbyEntries,
  pushWithReply,
  renderLeaderboard,
  renderLobby,
  renderTrack,
  watchConnection,
} from "/assets/common.js";

const ui = {
  conn: byTestId("conn-status"),
  joinUrl: byTestId("join-url"),
  start: byTestId("start"),
  startError: byTestId("start-error"),
  phase: byTestId("phase"),
  winner: byTestId("winner"),
  winnerName: byTestId("winner-name"),
  winnerTime: byTestId("winner-time"),
  track: byTestId("track"),
  countdown: byTestId("countdown"),
  leaderboard: byTestId("leaderboard"),
  lobby: byTestId("lobby"),
  lobbyCount: byTestId("lobby-count"),
  chat: byTestId("chat"),
  chatList: byTestId("chat-messages"),
};

ui.joinUrl.textContent = location.host;

// Behind a proxy that blocks WebSockets, long-poll instead.
const socket = new Socket("/socket", { longPollFallbackMs: 2500 });
watchConnection(socket, ui.conn);

const state = new RaceState();
const phaseView = new PhaseView(ui.phase, { idleText: "Ready to race", overlay: ui.countdown });
let joined = false;

function render() {
  renderTrack(ui.track, state, { emptyText: `No racers yet: open ${location.host} on a phone and pick a name.` });
  phaseView.update(state);
  renderLeaderboard(ui.leaderboard, state.race && state.race.leaderboard);
  const winner = state.phase === "finished" && state.race.winner;
  ui.winner.hidden = !winner;
  // The banner says it bigger than the phase line would.
  ui.phase.hidden = !!winner;
  if (winner) {
    ui.winnerName.textContent = winner.name;
    ui.winnerTime.textContent = formatMs(winner.ms);
  }
  document.body.dataset.phase = state.phase;
}
state.onChange(render);

const channel = socket.channel("console", {});
channel.on("race", (race) => state.setRace(race));
channel.on("tick", (tick) => state.setTick(tick));
channel.onError(() => {
  joined = false;
});
const presence = new Presence(channel);
presence.onSync(() => renderLobby(ui.lobby, ui.lobbyCount, lobbyEntries(presence)));
join(channel, {
  onOk: (reply) => {
    joined = true;
    if (reply.race) state.setRace(reply.race);
  },
  onError: (reason) => flash(ui.startError, `Could not join: ${reason}`, 0),
});

const chat = socket.channel("chat:lobby", {});
chat.on("new_msg", (msg) => appendChat(ui.chatList, msg));
chat.onError(() => {
  ui.chat.dataset.joined = "false";
});
join(chat, {
  onOk: () => {
    ui.chat.dataset.joined = "true";
  },
});

ui.start.addEventListener("click", () => {
  if (!joined) {
    flash(ui.startError, "Not connected yet");
    return;
  }
  flash(ui.startError, "", 0);
  pushWithReply(channel, "start", {}, (reason) => {
    if (reason) flash(ui.startError, reason);
  });
});

socket.connect();
render();
