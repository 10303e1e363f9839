// Screenshot page.html in headless Chromium (WebGL through SwiftShader: no GPU needed).
// node shoot.mjs CHROMIUM URL OUT.png WIDTH HEIGHT  -> prints one JSON line {info, console}
// A tool of scripts/check_viewer_upright.py (never shipped). GPL-3.0-or-later.
import puppeteer from "puppeteer-core";

const [chromium, url, out, w, h] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
         "--enable-webgl", "--disable-dev-shm-usage"],
});
const logs = [];
try {
  const page = await browser.newPage();
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`.slice(0, 300)));
  await page.setViewport({ width: Number(w), height: Number(h), deviceScaleFactor: 1 });
  await page.goto(url, { waitUntil: "load", timeout: 120000 });
  await page.waitForFunction("window.__done !== false", { timeout: 240000, polling: 250 });
  const done = await page.evaluate("window.__done");
  if (done !== true) throw new Error(`the page failed: ${done}`);
  await page.screenshot({ path: out });
  const info = await page.evaluate("window.__info");
  const gl = await page.evaluate(() => {
    const c = document.createElement("canvas").getContext("webgl2");
    const d = c && c.getExtension("WEBGL_debug_renderer_info");
    return d ? c.getParameter(d.UNMASKED_RENDERER_WEBGL) : (c ? "webgl2" : "no webgl2");
  });
  console.log(JSON.stringify({ info, gl, browser: await browser.version(), console: logs.slice(-20) }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e), console: logs.slice(-20) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
