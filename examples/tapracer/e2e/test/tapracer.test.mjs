// TapRacer end to end: the server binary, a console page and three player
// pages in Debian's chromium, a chat, two races (the second with a fourth
// player who falls back to LongPoll), screenshots.
//
//   TAPRACER_BIN          the server binary (default ../../../target/debug/tapracer)
//   CHROMIUM_PATH         the browser (default /usr/bin/chromium)
//   TAPRACER_SCREENSHOTS  where tapracer-console.png and tapracer-player.png go (default: a temp dir)
import assert from "node:assert/strict";
import path from "node:path";
import { after, before, test } from "node:test";
import {
  WAIT_MS,
  assertNoPageErrors,
  launchBrowser,
  newPage,
  screenshotDir,
  sleep,
  startServer,
  waitUntil,
} from "./harness.mjs";

const TRACK = 20;
const COUNTDOWN_MS = 1000;

let server = null;
let browser = null;
const errors = [];

before(async () => {
  server = await startServer([
    "--port", "0",
    "--host", "127.0.0.1",
    "--track", String(TRACK),
    "--countdown-ms", String(COUNTDOWN_MS),
  ]);
  browser = await launchBrowser();
});

after(async () => {
  // The browser first: pages closing their sockets on a live server log nothing.
  if (browser) await browser.close().catch(() => {});
  if (server) await server.stop();
  if (errors.length) console.error(errors.join("\n"));
});

// ------------------------------------------------------------ page-side probes
// (run inside the page: self-contained functions)

const probe = {
  lobby: () =>
    [...document.querySelectorAll('[data-testid="lobby"] [data-testid="lobby-entry"]')].map((e) => e.dataset.name).sort(),
  phase: () => document.querySelector('[data-testid="phase"]').dataset.phase,
  phaseText: () => document.querySelector('[data-testid="phase"] .phase-main').textContent,
  lanes: () =>
    [...document.querySelectorAll('[data-testid="track"] [data-testid="lane"]')].map((e) => ({
      name: e.dataset.name,
      taps: Number(e.dataset.taps),
      you: e.classList.contains("you"),
      winner: e.classList.contains("winner"),
    })),
  chat: () =>
    [...document.querySelectorAll('[data-testid="chat-messages"] [data-testid="chat-message"]')].map((e) => ({
      user: e.querySelector('[data-testid="chat-user"]').textContent,
      body: e.querySelector('[data-testid="chat-body"]').textContent,
    })),
  leaderboard: () =>
    [...document.querySelectorAll('[data-testid="leaderboard"] [data-testid="leaderboard-row"]')].map((e) => ({
      name: e.querySelector('[data-testid="leaderboard-name"]').textContent,
      wins: Number(e.querySelector('[data-testid="leaderboard-wins"]').textContent),
    })),
  ready: () => ({
    conn: document.querySelector('[data-testid="conn-status"]').dataset.state,
    chat: document.querySelector('[data-testid="chat"]').dataset.joined,
    phase: document.querySelector('[data-testid="phase"]').dataset.phase,
  }),
};

async function waitReady(page) {
  await waitUntil(
    page,
    "connected, joined the race and the chat",
    () =>
      document.querySelector('[data-testid="conn-status"]').dataset.state === "open" &&
      document.querySelector('[data-testid="chat"]').dataset.joined === "true" &&
      document.querySelector('[data-testid="phase"]').dataset.phase !== "connecting",
    null,
    { describe: probe.ready },
  );
}

async function waitLobby(page, names) {
  const want = [...names].sort();
  await waitUntil(
    page,
    `the lobby to be ${JSON.stringify(want)}`,
    (want) => {
      const got = [...document.querySelectorAll('[data-testid="lobby"] [data-testid="lobby-entry"]')]
        .map((e) => e.dataset.name)
        .sort();
      return JSON.stringify(got) === JSON.stringify(want);
    },
    want,
    { describe: probe.lobby },
  );
}

async function waitPhase(page, phase, timeout = WAIT_MS) {
  await waitUntil(
    page,
    `phase ${phase}`,
    (phase) => document.querySelector('[data-testid="phase"]').dataset.phase === phase,
    phase,
    { timeout, describe: probe.phase },
  );
}

async function waitText(page, testId, text) {
  await waitUntil(
    page,
    `[data-testid=${testId}] to show ${JSON.stringify(text)}`,
    ([testId, text]) => {
      const node = document.querySelector(`[data-testid="${testId}"]`);
      return !!node && node.checkVisibility() && node.textContent.includes(text);
    },
    [testId, text],
    { describe: ([testId]) => document.querySelector(`[data-testid="${testId}"]`)?.textContent },
  );
}

async function waitChat(page, user, body) {
  await waitUntil(
    page,
    `the chat message ${user}: ${JSON.stringify(body)}`,
    ([user, body]) =>
      [...document.querySelectorAll('[data-testid="chat-messages"] [data-testid="chat-message"]')].some(
        (e) =>
          e.querySelector('[data-testid="chat-user"]').textContent === user &&
          e.querySelector('[data-testid="chat-body"]').textContent === body,
      ),
    [user, body],
    { describe: probe.chat },
  );
}

/** Starts watching for the countdown (before the start, since it lasts a second). */
function watchCountdown(page, { overlay = false } = {}) {
  return waitUntil(
    page,
    "the countdown",
    (overlay) => {
      const phase = document.querySelector('[data-testid="phase"]');
      if (phase.dataset.phase !== "countdown" || !/^\d+$/.test(phase.querySelector(".phase-main").textContent)) return false;
      if (!overlay) return true;
      const big = document.querySelector('[data-testid="countdown"]');
      return !big.hidden && /^\d+$/.test(big.textContent);
    },
    overlay,
    { timeout: WAIT_MS + COUNTDOWN_MS, describe: probe.ready },
  );
}

/** Starts watching for `name` mid-track on the console: the racers move. */
function watchMoving(page, name) {
  return waitUntil(
    page,
    `${name} moving on the track`,
    ([name, track]) =>
      [...document.querySelectorAll('[data-testid="track"] [data-testid="lane"]')].some((e) => {
        const taps = Number(e.dataset.taps);
        return e.dataset.name === name && taps > 0 && taps < track;
      }),
    [name, TRACK],
    { timeout: 15000, describe: probe.lanes },
  );
}

async function phaseOf(page) {
  return page.evaluate(probe.phase);
}

/**
 * Taps until the race is over: by the space bar or by clicking TAP, every
 * `everyMs`, at most `maxTaps` times (then it only waits), so that who wins
 * does not hang on how fast each page runs. Returns how many taps were made.
 * Deadline: 15 s.
 */
async function tapUntilFinished(page, { how, everyMs, maxTaps = Infinity, afterTap = null }) {
  const deadline = Date.now() + 15000;
  let taps = 0;
  // Clicks go to the middle of the TAP button, as a finger would: real
  // pointer events, without the actionability checks of every locator.click.
  const tapButton = page.getByTestId("tap");
  await tapButton.scrollIntoViewIfNeeded();
  let box = await tapButton.boundingBox();
  while ((await phaseOf(page)) === "racing") {
    if (Date.now() > deadline) throw new Error(`[${page.label}] the race did not finish within 15 s`);
    if (taps >= maxTaps) {
      await sleep(everyMs);
      continue;
    }
    if (how === "space") await page.keyboard.press("Space");
    else await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
    taps += 1;
    if (afterTap) {
      await afterTap(taps);
      box = await tapButton.boundingBox();
    }
    await sleep(everyMs);
  }
  return taps;
}

async function pickName(page, name) {
  await page.getByTestId("name-input").fill(name);
  await page.getByTestId("name-submit").click();
  await waitUntil(page, `the game screen for ${name}`, (name) => {
    const game = document.querySelector('[data-testid="game"]');
    return !game.hidden && document.querySelector('[data-testid="my-name"]').textContent === name && !!game.dataset.you;
  }, name);
  await waitReady(page);
}

// ------------------------------------------------------------ the scenario

test("tapracer: lobby, chat, two races, leaderboard, screenshots", { timeout: 55000 }, async () => {
  const t0 = Date.now();
  const step = (what) => console.log(`${((Date.now() - t0) / 1000).toFixed(1)}s: ${what}`);
  const base = server.url;
  const shots = screenshotDir();
  const phone = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };

  step(`console at ${base}/console`);
  const consolePage = await newPage(browser, "console", errors, { viewport: { width: 1280, height: 800 } });
  await consolePage.goto(`${base}/console`);
  await waitReady(consolePage);
  await waitText(consolePage, "join-url", new URL(base).host);

  step("no racers yet: the console's start is refused");
  await consolePage.getByTestId("start").click();
  await waitText(consolePage, "start-error", "no racers");

  step("three players pick names");
  const names = ["alice", "bob", "carol"];
  const [alice, bob, carol] = await Promise.all(names.map((name) => newPage(browser, name, errors, phone)));
  for (const page of [alice, bob, carol]) await page.goto(`${base}/`);

  // A blank name is caught by the page.
  await carol.getByTestId("name-input").fill("   ");
  await carol.getByTestId("name-submit").click();
  await waitText(carol, "name-error", "Pick a name");

  await pickName(alice, "alice");
  await pickName(bob, "bob");
  await pickName(carol, "caz");

  step("everyone sees the three in the lobby");
  for (const page of [alice, bob, carol, consolePage]) await waitLobby(page, ["alice", "bob", "caz"]);

  step("caz changes name to carol (a new socket with new params)");
  await carol.getByTestId("change-name").click();
  await waitUntil(carol, "the name screen, prefilled", () => {
    const screen = document.querySelector('[data-testid="name-screen"]');
    return !screen.hidden && document.querySelector('[data-testid="name-input"]').value === "caz";
  });
  await pickName(carol, "carol");
  for (const page of [alice, bob, carol, consolePage]) await waitLobby(page, names);

  step("the name is remembered: a reload reconnects as carol");
  await carol.reload();
  await waitUntil(carol, "carol back without the form", () =>
    document.querySelector('[data-testid="name-screen"]').hidden &&
    document.querySelector('[data-testid="my-name"]').textContent === "carol");
  await waitReady(carol);
  for (const page of [alice, bob, carol, consolePage]) await waitLobby(page, names);

  step("a second window of alice's browser offers her name but waits for a new one");
  const second = await newPage(browser, "alice's second window", errors, {}, alice.context());
  await second.goto(`${base}/`);
  await waitUntil(second, "the name form, prefilled with alice", () =>
    !document.querySelector('[data-testid="name-screen"]').hidden &&
    document.querySelector('[data-testid="name-input"]').value === "alice");
  await second.close();
  await waitLobby(consolePage, names);
  // Each player's own entry is marked.
  for (const page of [alice, bob, carol]) {
    const mine = await page.evaluate(() =>
      [...document.querySelectorAll('[data-testid="lobby-entry"].you')].map((e) => e.dataset.name));
    assert.deepEqual(mine, [page.label], `${page.label}'s own lobby entry`);
  }
  assertNoPageErrors(errors);

  step("chat: an empty message is refused, a message reaches everyone, as text");
  await bob.getByTestId("chat-input").fill("   ");
  await bob.getByTestId("chat-input").press("Enter");
  await waitText(bob, "chat-error", "empty message");
  const hello = "hi all <b>&amp;</b> good luck";
  await bob.getByTestId("chat-input").fill(hello);
  await bob.getByTestId("chat-input").press("Enter");
  for (const page of [alice, bob, carol, consolePage]) await waitChat(page, "bob", hello);
  await waitUntil(bob, "the chat input cleared", () => document.querySelector('[data-testid="chat-input"]').value === "");
  for (const page of [alice, bob, carol, consolePage]) {
    assert.equal(await page.locator('[data-testid="chat-messages"] b').count(), 0, `${page.label}: chat text is not HTML`);
  }
  assert.equal(await consolePage.locator('[data-testid="chat"] input').count(), 0, "the console's chat is read only");
  // The chat input must not keep the keyboard: the space bar is for tapping.
  await bob.getByTestId("chat-input").blur();

  step("race 1: the console starts it, the countdown shows");
  const countdowns = [watchCountdown(consolePage, { overlay: true }), ...[alice, bob, carol].map((p) => watchCountdown(p))];
  await consolePage.getByTestId("start").click();
  await Promise.all(countdowns);
  const lanes = await consolePage.evaluate(probe.lanes);
  assert.deepEqual(lanes.map((l) => l.name).sort(), names, "the console's lanes");
  assert.ok(lanes.every((l) => l.taps === 0), "everyone on the line at 0");
  assert.deepEqual((await alice.evaluate(probe.lanes)).filter((l) => l.you).map((l) => l.name), ["alice"], "alice's lane is highlighted");

  const moving = watchMoving(consolePage, "alice");
  moving.catch(() => {}); // awaited below; handled now in case an earlier step fails first
  for (const page of [alice, bob, carol, consolePage]) await waitPhase(page, "racing", WAIT_MS + COUNTDOWN_MS);
  step("racing: alice taps the space bar fast, bob clicks slowly, carol tries to restart");
  await carol.getByTestId("start").click();
  await waitText(carol, "start-error", "race in progress");
  const [aliceTaps, bobTaps] = await Promise.all([
    tapUntilFinished(alice, { how: "space", everyMs: 40 }),
    tapUntilFinished(bob, { how: "click", everyMs: 250, maxTaps: TRACK / 2 }),
    carol.getByTestId("tap").click(),
  ]);
  step(`race 1 over (alice ${aliceTaps} presses, bob ${bobTaps} clicks)`);
  await moving;

  await waitText(consolePage, "winner-name", "alice");
  await waitPhase(consolePage, "finished");
  for (const page of [alice, bob, carol]) {
    await waitPhase(page, "finished");
    await waitText(page, "phase", "alice wins!");
  }
  const final = await consolePage.evaluate(probe.lanes);
  const aliceLane = final.find((l) => l.name === "alice");
  assert.equal(aliceLane.taps, TRACK, "alice crossed the line");
  assert.ok(aliceLane.winner, "alice's lane is the winner's");
  assert.ok(final.filter((l) => l.name !== "alice").every((l) => l.taps < TRACK), "nobody else crossed");
  for (const page of [consolePage, carol]) {
    await waitUntil(page, "alice first on the leaderboard", () => {
      const row = document.querySelector('[data-testid="leaderboard"] [data-testid="leaderboard-row"]');
      return row && row.dataset.name === "alice" && row.dataset.wins === "1";
    }, null, { describe: probe.leaderboard });
  }
  assertNoPageErrors(errors);

  step("dave, behind a proxy that refuses WebSockets, falls back to LongPoll and joins");
  const dave = await newPage(browser, "dave", errors, phone);
  // What such a proxy does to a page: every WebSocket fails before it opens.
  await dave.addInitScript(() => {
    window.WebSocket = class BlockedWebSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        setTimeout(() => {
          this.readyState = 3;
          this.onerror?.(new Event("error"));
          this.onclose?.({ code: 1006, reason: "", wasClean: false });
        }, 50);
      }
      send() {}
      close() {}
    };
  });
  const longpolls = [];
  dave.on("request", (req) => {
    if (new URL(req.url()).pathname === "/socket/longpoll") longpolls.push(req.method());
  });
  await dave.goto(`${base}/`);
  await pickName(dave, "dave");
  const everyone = [...names, "dave"];
  for (const page of [alice, bob, carol, dave, consolePage]) await waitLobby(page, everyone);
  assert.ok(longpolls.includes("GET") && longpolls.includes("POST"), `dave long-polls: ${longpolls.join(" ")}`);

  step("race 2: bob starts it from his phone, and wins by clicking");
  const countdowns2 = [watchCountdown(consolePage, { overlay: true }), watchCountdown(bob), watchCountdown(dave)];
  await bob.getByTestId("start").click();
  await Promise.all(countdowns2);
  await waitUntil(consolePage, "a new race number", () => document.querySelector('[data-testid="track"]').dataset.race === "2");
  await waitUntil(consolePage, "the track reset", () =>
    [...document.querySelectorAll('[data-testid="track"] [data-testid="lane"]')].every((e) => e.dataset.taps === "0"));
  for (const page of [alice, bob, carol, dave, consolePage]) await waitPhase(page, "racing", WAIT_MS + COUNTDOWN_MS);
  await Promise.all([
    tapUntilFinished(bob, {
      how: "click",
      everyMs: 40,
      // The player's screenshot: mid-race, from bob's phone.
      afterTap: async (n) => {
        if (n !== 12) return;
        await bob.evaluate(() => window.scrollTo(0, 0));
        await bob.screenshot({ path: path.join(shots, "tapracer-player.png") });
      },
    }),
    tapUntilFinished(alice, { how: "space", everyMs: 400, maxTaps: TRACK / 2 }),
    // Carol's focus is still on Start race (she clicked it in race 1): the
    // space bar taps all the same.
    tapUntilFinished(carol, { how: "space", everyMs: 350, maxTaps: TRACK / 2 }),
    tapUntilFinished(dave, { how: "click", everyMs: 300, maxTaps: TRACK / 2 }),
  ]);
  await waitText(consolePage, "winner-name", "bob");
  const lanes2 = await consolePage.evaluate(probe.lanes);
  assert.ok(lanes2.find((l) => l.name === "carol").taps > 0, `carol's space bar taps count: ${JSON.stringify(lanes2)}`);
  assert.ok(lanes2.find((l) => l.name === "dave").taps > 0, `dave's taps over LongPoll count: ${JSON.stringify(lanes2)}`);
  for (const page of [alice, bob, carol, dave]) await waitText(page, "phase", "bob wins!");
  await waitUntil(consolePage, "alice and bob with a win each", () => {
    const rows = [...document.querySelectorAll('[data-testid="leaderboard"] [data-testid="leaderboard-row"]')];
    const got = rows.map((r) => `${r.dataset.name}:${r.dataset.wins}`).sort();
    return JSON.stringify(got) === JSON.stringify(["alice:1", "bob:1"]);
  }, null, { describe: probe.leaderboard });

  step(`the console's screenshot (the player's was taken mid-race) in ${shots}`);
  // Let the last glide and the banner's entrance settle.
  await sleep(500);
  await consolePage.screenshot({ path: path.join(shots, "tapracer-console.png") });

  assertNoPageErrors(errors);
  step("done");
});
