// The e2e test's plumbing: the tapracer server, Debian's chromium through
// playwright-core, pages that fail the test on a console or page error,
// and waits that always have a deadline.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Per-wait deadline, ms. */
export const WAIT_MS = Number(process.env.TAPRACER_WAIT_MS || 5000);

const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]/g;

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Starts the server binary and resolves `{url, port, log, stop}` once it
 * logs `listening on http://HOST:PORT` (stdout or stderr, ANSI stripped).
 */
export async function startServer(args, { timeoutMs = 15000 } = {}) {
  const bin = path.resolve(E2E_DIR, process.env.TAPRACER_BIN || "../../../target/debug/tapracer");
  if (!existsSync(bin)) {
    throw new Error(`no tapracer binary at ${bin}: build it (cargo build --bin tapracer) or set TAPRACER_BIN`);
  }
  const child = spawn(bin, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NO_COLOR: "1" },
  });
  const log = [];
  let exited = null;
  // Never leave the server behind, even if this process dies mid-test.
  const reap = () => child.kill("SIGKILL");
  process.once("exit", reap);
  const exitPromise = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      process.off("exit", reap);
      resolve(exited);
    });
  });

  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`tapracer did not log "listening on" within ${timeoutMs} ms; its output:\n${log.join("")}`));
    }, timeoutMs);
    const onData = (chunk) => {
      const text = chunk.toString("utf8").replace(ANSI, "");
      log.push(text);
      const m = log.join("").match(/listening on (http:\/\/(?:\[[^\]]+\]|[^\s:/]+):(\d+))/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    exitPromise.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`tapracer exited (code ${code}, signal ${signal}) before listening; its output:\n${log.join("")}`));
    });
  });

  async function stop() {
    if (exited) return exited;
    child.kill("SIGTERM");
    const done = await Promise.race([exitPromise, sleep(3000).then(() => null)]);
    if (done) return done;
    child.kill("SIGKILL");
    return exitPromise;
  }

  return { url, port: Number(new URL(url).port), log, stop, get exited() { return exited; } };
}

/**
 * Launches Debian's chromium (never a downloaded one). Playwright gives the
 * browser a fresh temporary profile (user data dir) and removes it on close.
 */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 30000,
  });
}

/**
 * A page in its own browser context (its own cookies and storage), or in
 * `context` (another window of that browser), whose console errors and page
 * errors land in `errors`.
 */
export async function newPage(browser, label, errors, contextOptions = {}, context = null) {
  context ??= await browser.newContext(contextOptions);
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      const where = msg.location();
      errors.push(`[${label}] console error: ${msg.text()}${where && where.url ? ` (${where.url}:${where.lineNumber})` : ""}`);
    }
  });
  page.on("pageerror", (err) => errors.push(`[${label}] page error: ${err.stack || err.message || err}`));
  page.label = label;
  return page;
}

/** Throws if any page reported an error so far. */
export function assertNoPageErrors(errors) {
  if (errors.length) throw new Error(`the pages reported errors:\n${errors.join("\n")}`);
}

/**
 * Polls `fn(arg)` in the page until it returns something truthy, or throws
 * after `timeout` ms, naming `what` and the last value `describe` saw.
 */
export async function waitUntil(page, what, fn, arg, { timeout = WAIT_MS, describe = null } = {}) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: "raf" });
    const value = await handle.jsonValue().catch(() => true);
    await handle.dispose();
    return value;
  } catch (err) {
    let seen = "";
    if (describe) {
      seen = await page
        .evaluate(describe, arg)
        .then((v) => `; saw ${JSON.stringify(v)}`)
        .catch(() => "");
    }
    throw new Error(`[${page.label}] waited ${timeout} ms for ${what}${seen}\n${err.message.split("\n")[0]}`);
  }
}

/** The directory the screenshots go to. */
export function screenshotDir() {
  const dir = process.env.TAPRACER_SCREENSHOTS || mkdtempSync(path.join(tmpdir(), "tapracer-shots-"));
  mkdirSync(dir, { recursive: true });
  return dir;
}

