// Driver of bench/first_frame.py: Debian's Chromium (playwright-core, no browser download) with
// hls.js (the copy the web UI vendors, /web/vendor/hls.min.js) in auto level.
//
// Started before the upload ends, so the browser's own start is not timed. Reads one line
// "WATCH <master url>" on stdin; the page then polls the master playlist and plays it the moment
// it exists; prints "FIRSTFRAME <epoch ms> <level height>" when the first video frame is
// presented (requestVideoFrameCallback), or "ERROR <text>".
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const { BASE_URL, CHROMIUM } = process.env;
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--disable-quic", "--no-first-run", "--autoplay-policy=no-user-gesture-required"];

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
try {
  const page = await browser.newPage();
  page.on("console", (m) => process.stdout.write(`LOG ${m.text()}\n`));
  await page.goto(BASE_URL + "/health");
  await page.setContent("<video id=v muted playsinline autoplay style='width:640px'></video>");
  await page.addScriptTag({ url: BASE_URL + "/web/vendor/hls.min.js" });
  process.stdout.write("READY\n");
  const lines = createInterface({ input: process.stdin });
  const url = await new Promise((resolve) => lines.once("line", (l) => resolve(l.split(" ")[1])));
  const out = await page.evaluate(async (master) => {
    const video = document.getElementById("v");
    for (;;) {  // the master appears once the first segments exist
      const r = await fetch(master, { cache: "no-store" });
      if (r.ok) break;
      await new Promise((ok) => setTimeout(ok, 20));
    }
    return await new Promise((resolve) => {
      // startPosition 0: the ladder is still being made (an EVENT playlist), start at its start.
      const hls = new Hls({ startPosition: 0, manifestLoadingRetryDelay: 100, levelLoadingRetryDelay: 100,
        fragLoadingRetryDelay: 100 });
      let level = -1;
      // The level of the first video fragment requested: the one the first frame comes from.
      hls.on(Hls.Events.FRAG_LOADING, (_, d) => {
        if (level === -1 && d.frag.type === "main") level = hls.levels[d.frag.level].height;
      });
      hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) resolve(`ERROR ${d.type} ${d.details}`); });
      video.requestVideoFrameCallback((now, meta) => {
        resolve(`FIRSTFRAME ${performance.timeOrigin + now} ${level}`);
      });
      hls.loadSource(master);
      hls.attachMedia(video);
      video.play().catch(() => {});
    });
  }, url);
  process.stdout.write(out + "\n");
  lines.close();
} finally {
  await browser.close();
}
