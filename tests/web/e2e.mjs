// Browser test of the web UI (driven by tests/web/test_browser.py): Playwright (playwright-core,
// no browser download) drives Debian's Chromium against a running `streamgate run`.
//
// The wallet is an injected EIP-1193 provider whose personal_sign asks the Python side over
// stdout/stdin ("SIGN <json>" -> one line with the signature): the key never enters the page.
// Prints "ARTIFACTS <dir>" and, last, "RESULT <json>" for the test to assert on.
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const { BASE_URL, CHROMIUM, CLIP, ARTIFACTS, ADDRESS } = process.env;
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--disable-quic", "--no-first-run", "--autoplay-policy=no-user-gesture-required"];
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const pending = [];
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => pending.shift()?.(line));
function askPython(kind, payload) {
  return new Promise((resolve) => {
    pending.push(resolve);
    process.stdout.write(`${kind} ${JSON.stringify(payload)}\n`);
  });
}
const log = (...args) => process.stdout.write(`LOG ${args.join(" ")}\n`);
const result = { steps: [] };
const step = (name, data = {}) => {
  result.steps.push({ name, ...data });
  log(name, JSON.stringify(data));
};

const PROVIDER = (address) => {
  window.ethereum = {
    isStreamGateTest: true,
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [address];
      if (method === "eth_chainId") return "0x1";
      if (method === "personal_sign") return window.sgSign(params[0], params[1]);
      throw Object.assign(new Error(`unsupported method ${method}`), { code: 4200 });
    },
  };
};

async function shoot(page, name, viewport) {
  await page.setViewportSize(viewport);
  await page.waitForTimeout(50); // one frame for the layout to settle after the resize
  const file = join(ARTIFACTS, `${name}-${viewport === PHONE ? "phone" : "desktop"}.png`);
  await page.screenshot({ path: file, fullPage: false });
  return file;
}

async function shootBoth(page, name) {
  result.screenshots ??= [];
  result.screenshots.push(await shoot(page, name, PHONE), await shoot(page, name, DESKTOP));
}

const profile = mkdtempSync(join(tmpdir(), "streamgate-chromium-"));
mkdirSync(ARTIFACTS, { recursive: true });
process.stdout.write(`ARTIFACTS ${ARTIFACTS}\n`);
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: DESKTOP, colorScheme: "light",
});
context.setDefaultTimeout(60_000);
try {
  // No wallet: a page without the provider says so clearly.
  const bare = await context.newPage();
  await bare.goto(BASE_URL + "/");
  await bare.click("#sign-in");
  const noWallet = await bare.textContent("#notice");
  step("no wallet message", { text: noWallet });
  await bare.close();

  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.exposeFunction("sgSign", (messageHex, address) => askPython("SIGN", { message: messageHex, address }).then((l) => JSON.parse(l)));
  await page.addInitScript(PROVIDER, ADDRESS.toLowerCase());
  await page.goto(BASE_URL + "/");
  await page.waitForSelector("#videos");
  await shootBoth(page, "library-empty");

  // Sign in with the wallet.
  await page.click("#sign-in");
  await page.waitForSelector("[data-testid=address]");
  const signedAs = await page.getAttribute("[data-testid=address]", "title");
  step("signed in", { address: signedAs });

  // Upload, throttled so a reload lands mid-upload: small PATCHes, each held a little.
  await page.evaluate(() => localStorage.setItem("streamgate.upload.chunk_size", "32768"));
  let patches = 0;
  await page.route("**/api/v1/uploads/**", async (route) => {
    if (route.request().method() === "PATCH") {
      patches++;
      await new Promise((r) => setTimeout(r, 350));
    }
    await route.continue();
  });
  await page.goto(BASE_URL + "/#/upload");
  await page.fill("#title", "Browser test clip");
  await page.selectOption("#visibility", "private");
  await page.setInputFiles("#file", CLIP);
  await page.waitForFunction(() => {
    const bar = document.querySelector("#upload-bar");
    return bar && Number(bar.value) >= 0.3 && Number(bar.value) < 0.8;
  }, null, { polling: 50 });
  const firstUrl = await page.getAttribute("#upload-status", "data-upload-url");
  await shootBoth(page, "upload-progress");
  const speed = await page.textContent("#upload-speed").catch(() => null);
  await page.reload();
  const headers = { "Tus-Resumable": "1.0.0", Authorization: `Bearer ${await page.evaluate(() => JSON.parse(localStorage.getItem("streamgate.session")).token)}` };
  const head = await fetch(new URL(firstUrl, BASE_URL), { method: "HEAD", headers });
  const offsetAtReload = Number(head.headers.get("upload-offset"));
  const lengthAtReload = Number(head.headers.get("upload-length"));
  await page.waitForSelector("#interrupted .notice");
  const interruptedText = await page.textContent("#interrupted");
  step("reloaded mid-upload", { firstUrl, offsetAtReload, lengthAtReload, interruptedText, speed, patches });
  await page.unroute("**/api/v1/uploads/**");
  await page.fill("#title", "Browser test clip");
  await page.selectOption("#visibility", "private");
  await page.setInputFiles("#file", CLIP);
  await page.waitForSelector("#upload-resumed");
  const resumedUrl = await page.getAttribute("#upload-status", "data-upload-url");
  await page.waitForSelector("#transcode-status", { timeout: 60_000 });
  let sawTranscodeProgress = null;
  const watchProgress = setInterval(async () => {
    const text = await page.textContent("#transcode-progress").catch(() => "");
    if (text && /%/.test(text)) sawTranscodeProgress = text;
  }, 100);
  await page.waitForSelector("#transcode-status[data-status=ready]", { timeout: 90_000 });
  clearInterval(watchProgress);
  const videoId = resumedUrl.split("/").filter(Boolean).pop();
  const mine = await (await fetch(`${BASE_URL}/api/v1/videos?mine=1`, { headers })).json();
  step("upload ready", { resumedUrl, videoId, sawTranscodeProgress, mineTotal: mine.total });
  await shootBoth(page, "upload-ready");

  // Library shows it, marked private.
  await page.goto(BASE_URL + "/#/?mine=1");
  await page.waitForSelector(`[data-video="${videoId}"][data-status=ready] img`);
  const badge = await page.textContent(`[data-video="${videoId}"] .badge.private`);
  await page.waitForFunction((id) => {
    const img = document.querySelector(`[data-video="${id}"] img`);
    return img && img.complete && img.naturalWidth > 0;
  }, videoId);
  step("library", { badge });
  await shootBoth(page, "library");

  // Player: hls.js, switch to the lowest rung, play to the end, keys.
  await page.goto(`${BASE_URL}/#/watch/${videoId}`);
  await page.waitForFunction(() => window.sgPlayer && window.sgPlayer.levels.length >= 2);
  const levels = await page.evaluate(() => window.sgPlayer.levels);
  const engine = await page.evaluate(() => window.sgPlayer.engine);
  const share = await page.inputValue("#share");
  const lowest = levels.indexOf("240p");
  await page.selectOption("#quality", String(lowest));
  await page.evaluate(() => { const v = document.querySelector("#video"); v.muted = true; });
  await page.focus("body");
  await page.keyboard.press("m");
  const mutedAfterM = await page.evaluate(() => document.querySelector("#video").muted);
  await page.keyboard.press("m");
  await page.keyboard.press(" ");
  await page.waitForFunction(() => !document.querySelector("#video").paused);
  await page.waitForFunction(() => document.querySelector("#video").currentTime > 0.3);
  await shootBoth(page, "player");
  await page.waitForFunction(() => document.querySelector("#video").ended, null, { timeout: 60_000 });
  const played = await page.evaluate(() => {
    const v = document.querySelector("#video");
    return { currentTime: v.currentTime, duration: v.duration, height: v.videoHeight,
      level: window.sgPlayer.playingLevel, signed: document.querySelector("#share").value.includes("?t=") };
  });
  step("played", { levels, engine, lowest, mutedAfterM, played, share });

  // Dashboard: the job, live.
  await page.goto(BASE_URL + "/#/dashboard");
  await page.waitForSelector(`#recent [data-job="${videoId}"]`);
  await page.waitForFunction(() => /^[1-9]\d* jobs? finished/.test(document.querySelector("#throughput-total")?.textContent || ""), null, { timeout: 30_000 });
  const dashboard = { live: await page.textContent("#live"), throughput: await page.textContent("#throughput-total"),
    tiles: await page.textContent("#farm"), fleet: await page.$("#fleet") !== null };
  step("dashboard", dashboard);
  await shootBoth(page, "dashboard");
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(BASE_URL + "/#/?mine=1");
  await page.waitForFunction(() => [...document.querySelectorAll("[data-video] img")].some((i) => i.complete && i.naturalWidth));
  result.screenshots.push(await shoot(page, "library-dark", PHONE), await shoot(page, "library-dark", DESKTOP));
  result.pageErrors = errors;
} catch (error) {
  result.error = String(error && error.stack || error);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
process.exit(result.error ? 1 : 0);
