// Opens the live dashboard during a running sale and checks that it shows
// one: every chart drawn with data, the stock falling, figures filled in,
// the invariant check answering on its button. Run by
// scripts/dashboard-browser.sh (which starts the engine and the sale).
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.NODE_PATH + "/playwright-core");
const base = process.env.BASE_URL, out = process.env.OUT;
const token = process.env.SECKILL_ADMIN_TOKEN;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/admin/dashboard");
  await page.fill("#token", token);
  await page.click("#go");

  // Twelve seconds of samples with the sale live and stock sold.
  await page.waitForFunction(() => {
    const n = Number(document.body.dataset.samples || 0);
    const stock = document.querySelector("#stock").textContent;
    return n >= 12 && /\d/.test(stock) && !stock.startsWith("6,000");
  }, null, { timeout: 60_000 });
  await page.waitForTimeout(1500);

  // Each chart has its lines drawn: count coloured (non-grey) pixels.
  for (const id of ["rps", "p99", "stock", "drain"]) {
    const coloured = await page.evaluate((id) => {
      const c = document.getElementById("c-" + id);
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) {
        const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
        if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
      }
      return n;
    }, id);
    assert.ok(coloured > 200, `chart ${id} has no data drawn (${coloured} coloured pixels)`);
  }
  const legend = await page.textContent("#l-rps");
  assert.match(legend, /accepted/, "requests/s chart shows accepted purchases");
  const clock = await page.textContent("#clock-k");
  assert.match(clock, /Live|Ended|Starts/, clock);
  const figures = await page.evaluate(() => ["stock", "sold", "pending", "sellout", "outbox"]
    .map((id) => document.getElementById(id).textContent));
  assert.ok(figures.every((f) => f && f !== "—" || f === "—"), String(figures));
  assert.match(figures[1], /\d/, "units sold shown");
  const buckets = await page.textContent("#events .buckets");
  assert.match(buckets || "", /buckets: #0 [\d,—]+ · #1 [\d,—]+ · #2 [\d,—]+/, "the event's three stock buckets shown: " + buckets);
  await page.screenshot({ path: out + "/dashboard.png", fullPage: true });

  // The invariant checker runs on demand only.
  await page.click("button[data-check]");
  await page.waitForSelector("#checks td.pass, #checks td.fail", { timeout: 20_000 });
  await page.screenshot({ path: out + "/dashboard-checks.png", fullPage: true });
  assert.deepEqual(errors, [], "no script error on the page");
  console.log("dashboard-browser: charts drawn, figures " + JSON.stringify(figures));
} finally {
  await browser.close();
}
