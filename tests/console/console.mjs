// The web console in a real browser: Debian's Chromium driven by playwright-core, against a running
// gem-proxy (admin listener serving the console) in front of gem-proxy-mock.
//
// Run by tests/e2e/test_console.py, which starts the gateway and the mock and passes:
//   CONSOLE_URL   the admin listener (http://127.0.0.1:PORT)
//   PROXY_URL     the proxy listener
//   MOCK_URL      the mock upstream (records the upstream key of every request)
//   ADMIN_TOKEN   admin.token
//   ARTIFACTS     where screenshots go (one per page, plus one at a failure)
//   CHROMIUM      the browser binary (default /usr/bin/chromium)
//
// Each step logs one line; the first failure throws, takes a screenshot and exits non-zero.
// Console errors and uncaught page errors anywhere fail the run at the end.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const CONSOLE = env("CONSOLE_URL").replace(/\/$/, "");
const PROXY = env("PROXY_URL").replace(/\/$/, "");
const MOCK = env("MOCK_URL").replace(/\/$/, "");
const TOKEN = env("ADMIN_TOKEN");
const ARTIFACTS = env("ARTIFACTS");
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const MODEL = "gemini-2.5-flash";
const NEW_KEY = "AIzaCONSOLEKEY3";
const JWT_SECRET = "console-test-secret-0123456789-abcdefghij";

mkdirSync(ARTIFACTS, { recursive: true });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns something truthy; throws with the last error after `timeout`. */
async function until(what, fn, timeout = 20000) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(150);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

// ------------------------------------------------------------------ the gateway, from outside

async function generate(headers = { "x-goog-api-key": "client-token" }) {
  const r = await fetch(`${PROXY}/v1beta/models/${MODEL}:generateContent`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ contents: [{ role: "user", parts: [{ text: "hello" }] }] }),
  });
  await r.arrayBuffer();
  return r.status;
}

async function sendTraffic(n) {
  for (let i = 0; i < n; i++) {
    const status = await generate();
    assert(status === 200, `proxied request answered ${status}`);
  }
}

async function mockReset() {
  const r = await fetch(`${MOCK}/_mock/reset`, { method: "POST" });
  assert(r.ok, `mock reset: ${r.status}`);
}

/** The upstream keys the mock saw since its last reset. */
async function upstreamKeys() {
  const r = await fetch(`${MOCK}/_mock/requests`);
  const reqs = (await r.json()).filter((q) => !q.path.startsWith("/_mock/"));
  return reqs.map((q) => q.key);
}

async function admin(path, init = {}) {
  const r = await fetch(`${CONSOLE}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json", ...(init.headers || {}) },
  });
  const text = await r.text();
  assert(r.ok, `${init.method || "GET"} ${path}: ${r.status} ${text}`);
  return JSON.parse(text);
}

// ------------------------------------------------------------------------------- the browser

const problems = [];
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: CONSOLE });
const page = await context.newPage();
page.setDefaultTimeout(10000);
page.on("console", (msg) => {
  if (msg.type() === "error") problems.push(`console error: ${msg.text()} (${msg.location().url})`);
});
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));

let shot = 0;
async function screenshot(name, options = {}) {
  shot += 1;
  const file = join(ARTIFACTS, `${String(shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true, ...options });
  console.log(`  screenshot ${file}`);
}

let current = "start";
async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  await fn();
  console.log(`ok ${name} (${Date.now() - t0} ms)`);
}

const heading = (name) => page.getByRole("heading", { level: 1, name });
const button = (name) => page.getByRole("button", { name, exact: true });
const notice = (text) => page.locator(".notice", { hasText: text });
const nav = async (name) => {
  await page.getByRole("navigation", { name: "Console" }).getByRole("link", { name, exact: true }).click();
  await heading(name).waitFor();
};
const field = (path) => page.locator(`[name="${path}"]`);

try {
  await step("a deep link asks for the admin token, and a wrong one is refused", async () => {
    await page.goto(`${CONSOLE}/keys`);
    await page.getByLabel("Admin token").waitFor();
    await screenshot("sign-in");
    await page.getByLabel("Admin token").fill("not-the-token");
    await button("Sign in").click();
    await page.locator("#login-error").filter({ hasText: /not valid/ }).waitFor();
    assert((await page.getByLabel("Admin token").getAttribute("aria-invalid")) === "true", "the field is marked invalid");
  });

  await step("sign in: the token goes to session storage and the linked page opens", async () => {
    await page.getByLabel("Admin token").fill(TOKEN);
    await page.keyboard.press("Enter");
    await heading("Keys").waitFor();
    const stored = await page.evaluate(() => sessionStorage.getItem("gem-proxy.admin-token"));
    assert(stored === TOKEN, "the token is in session storage");
    await page.locator("tbody tr", { hasText: "key1" }).waitFor();
  });

  await step("the overview shows the traffic sent through the proxy", async () => {
    await nav("Overview");
    await sendTraffic(12);
    const requests = page.locator(".card", { hasText: "Requests/s" });
    await until("the overview to count the requests", async () => {
      const sub = await requests.locator(".card-sub").textContent();
      const n = Number((sub || "").split(" ")[0]);
      return n >= 12;
    });
    const qps = await requests.locator(".card-value").textContent();
    assert(Number(qps) > 0, `QPS ${qps} > 0`);
    const success = await page.locator('[data-figure="Success rate"]').textContent();
    assert(success === "100 %", `success rate ${success}`);
    const p50 = await page.locator('[data-figure="Latency P50"]').textContent();
    assert(/ms|s$/.test(p50 || ""), `P50 ${p50}`);
    // A second reading gives the charts a line and the token rate a value.
    await until("a line in the QPS chart", async () => {
      const points = await page.locator(".chart polyline").first().getAttribute("points");
      return (points || "").split(" ").length >= 2;
    });
    await until("tokens per minute", async () => {
      await sendTraffic(1);
      const v = await page.locator('[data-figure="Tokens/min"]').textContent();
      return v !== "—" && Number.parseFloat(v) > 0;
    });
    const label = await page.locator(".chart svg").first().getAttribute("aria-label");
    assert(/Requests per second over/.test(label || ""), `chart has a text alternative: ${label}`);
    await screenshot("overview");
  });

  await step("add a key in the Keys page and see the mock receive it", async () => {
    await nav("Keys");
    await page.getByText("Add a key", { exact: true }).click();
    const form = page.getByRole("form", { name: "Add a key" });
    await form.getByLabel("Id", { exact: true }).fill("console-key");
    await form.getByLabel("API key", { exact: true }).fill(NEW_KEY);
    // A heavy weight: the new key takes nearly all of the traffic.
    await form.getByLabel("Weight", { exact: true }).fill("100");
    await form.getByLabel("Label", { exact: true }).fill("added from the console");
    await button("Add key").click();
    await notice("Added the key console-key").waitFor();
    const row = page.locator("tbody tr", { hasText: "console-key" });
    await row.waitFor();
    assert((await row.textContent()).includes("added from the console"), "the label shows");
    await mockReset();
    await sendTraffic(10);
    const keys = await upstreamKeys();
    assert(keys.includes(NEW_KEY), `the mock saw the new key: ${keys}`);
  });

  await step("test a key from its row", async () => {
    await button("Test console-key").click();
    await page.locator("tbody tr", { hasText: "console-key" }).getByText("test: valid (HTTP 200)").waitFor();
  });

  await step("disable it: rotation skips it", async () => {
    await button("Disable console-key").click();
    await notice("Disabled console-key").waitFor();
    const row = page.locator("tbody tr", { hasText: "console-key" });
    await row.locator(".badge.disabled").waitFor();
    await button("Enable console-key").waitFor();
    await mockReset();
    await sendTraffic(10);
    const keys = await upstreamKeys();
    assert(keys.length === 10 && !keys.includes(NEW_KEY), `the mock did not see the disabled key: ${keys}`);
  });

  await step("a key's row links to its event timeline", async () => {
    await page.locator("tbody tr", { hasText: "console-key" }).getByRole("link", { name: "console-key" }).click();
    await heading("Key console-key: events").waitFor();
    const disabled = page.locator('.timeline li[data-kind="disabled"]');
    await disabled.waitFor();
    assert((await disabled.textContent()).includes("by admin-token"), "says who disabled it");
    await screenshot("key-events");
    await nav("Keys");
  });

  await step("the Usage page: stored traffic by key, model and client, over every range", async () => {
    await nav("Usage");
    const shownTotal = async () => Number(await page.locator('[data-figure="Requests"]').textContent());
    const rowRequests = async (group) =>
      Number(await page.locator(`tr[data-group="${group}"] td[data-col="requests"]`).textContent());
    // Rows reach the database within a flush interval: refresh until the page shows them all.
    let byKey;
    await until("the stored requests", async () => {
      byKey = await admin("/api/usage?group_by=key");
      if (byKey.totals.requests > 0 && (await shownTotal()) === byKey.totals.requests) return true;
      await button("Refresh").click();
      return false;
    });
    const total = byKey.totals.requests;
    assert(byKey.groups.length >= 3, `three keys carried traffic: ${JSON.stringify(byKey.groups.map((g) => g.name))}`);
    for (const g of byKey.groups) {
      assert((await rowRequests(g.name)) === g.totals.requests, `row of ${g.name}`);
    }
    const areas = await page.locator('.chart[data-chart="Requests"] polygon.area').count();
    assert(areas === Math.min(byKey.groups.length, 7), `one layer per key (${areas})`);
    await screenshot("usage");

    await page.getByLabel("Split by").selectOption("model");
    await until("the model row", async () => (await page.locator(`tr[data-group="${MODEL}"]`).count()) === 1);
    assert((await rowRequests(MODEL)) === total, "every request was for the one model");
    await page.getByLabel("Split by").selectOption("client");
    // Auth is off: the client is empty, shown as "(none)".
    await until("the client row", async () => (await page.locator('tr[data-group=""]').count()) === 1);
    assert((await page.locator('tr[data-group=""] th').textContent()) === "(none)", "no client without auth");
    for (const range of ["1 h", "7 d", "30 d"]) {
      await page.locator(`[data-range="${range}"]`).click();
      await until(`range ${range}`, async () =>
        (await page.locator(`[data-range="${range}"]`).getAttribute("aria-checked")) === "true" &&
        (await shownTotal()) === total);
    }
    await page.locator('[data-range="custom"]').click();
    await page.locator("#usage-from").fill("2020-01-01T00:00");
    await page.locator("#usage-to").fill("2020-01-02T00:00");
    await button("Show").click();
    await page.getByText("No traffic in this range.").waitFor();
    assert((await shownTotal()) === 0, "nothing in 2020");

    // CSV export of the last 24 hours by key: the file holds the same numbers.
    await page.locator('[data-range="24 h"]').click();
    await page.getByLabel("Split by").selectOption("key");
    await until("24 h by key", async () => (await shownTotal()) === total);
    const [download] = await Promise.all([page.waitForEvent("download"), button("Export CSV").click()]);
    assert(download.suggestedFilename().startsWith("gem-proxy-usage-by-key-"), download.suggestedFilename());
    const lines = readFileSync(await download.path(), "utf8").trim().split("\n");
    const header = lines[0].split(",");
    assert(header[0] === "time" && header[1] === "key" && header.includes("total_tokens"), `CSV header ${header}`);
    const col = header.indexOf("requests");
    const sums = {};
    for (const line of lines.slice(1)) {
      const f = line.split(",");
      sums[f[1]] = (sums[f[1]] || 0) + Number(f[col]);
    }
    for (const g of byKey.groups) {
      assert(sums[g.name] === g.totals.requests, `CSV requests of ${g.name}: ${sums[g.name]} vs ${g.totals.requests}`);
    }

    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 1, `no sideways scrolling on a phone (${overflow}px)`);
    await screenshot("usage-phone");
    await page.setViewportSize({ width: 1360, height: 900 });
  });

  await step("the overview opens with the stored last hour", async () => {
    await page.goto(`${CONSOLE}/`);
    await heading("Overview").waitFor();
    // The live charts start from the stored minutes, not empty: far more points than the one or
    // two readings (one every 3 s) taken since the page opened, and the traffic sent earlier.
    const live = page.locator(".chart", { hasText: "Requests per second" }).locator("svg");
    await until("the live chart prefilled from the history", async () => {
      const points = (await live.locator("polyline.series").first().getAttribute("points")) || "";
      const label = (await live.getAttribute("aria-label")) || "";
      const peak = Number.parseFloat((label.match(/peak ([\d.]+)/) || [])[1] || "0");
      return points.trim().split(" ").length >= 20 && peak > 0;
    }, 5000);
    const chart = page.locator(".chart", { hasText: "Requests per minute" }).locator("svg");
    await until("a stored peak", async () => {
      const label = (await chart.getAttribute("aria-label")) || "";
      const peak = Number((label.match(/peak (\d+)/) || [])[1] || 0);
      return peak > 0;
    });
    await nav("Keys");
  });

  await step("paste two keys, filter, select all shown and delete them after confirming", async () => {
    await page.getByText("Paste several keys", { exact: true }).click();
    await page.getByLabel(/One key per line/).fill("bulk-a AIzaBULKA\nbulk-b, AIzaBULKB, 2\n");
    await button("Add keys").click();
    await notice("Added 2 keys: bulk-a, bulk-b").waitFor();
    await page.locator("tbody tr", { hasText: "bulk-b" }).waitFor();
    await screenshot("keys");
    await page.getByRole("searchbox").first().fill("bulk");
    await until("two rows", async () => (await page.locator("tbody tr").count()) === 2);
    await page.getByLabel("Select all shown keys").check();
    await page.getByText("2 selected").waitFor();
    await screenshot("keys-selected", { fullPage: false });
    await button("Delete selected").click();
    const dialog = page.getByRole("dialog");
    await dialog.getByText(/Delete 2 keys/).waitFor();
    await dialog.getByRole("button", { name: "Delete" }).click();
    await notice("Deleted 2 keys").waitFor();
    await page.getByText("No key matches the filter.").waitFor();
    const ids = (await admin("/api/keys")).map((k) => k.id);
    assert(!ids.includes("bulk-a") && !ids.includes("bulk-b") && ids.includes("console-key"), `keys now ${ids}`);
    await page.getByRole("searchbox").first().fill("");
  });

  let before, original;
  await step("an invalid config value is refused and shown next to its field", async () => {
    before = (await admin("/api/config/history")).current_version;
    original = (await admin("/api/config")).gemini.timeout_seconds;
    await nav("Config");
    const timeout = field("gemini.timeout_seconds");
    await timeout.waitFor();
    await timeout.fill("0");
    await button("Save").click();
    const error = page.locator("#f-gemini-timeout_seconds-err");
    await error.filter({ hasText: "must be > 0" }).waitFor();
    assert((await timeout.getAttribute("aria-invalid")) === "true", "the field is marked invalid");
    assert(await timeout.evaluate((el) => el === document.activeElement), "the invalid field has the focus");
    assert((await admin("/api/config")).gemini.timeout_seconds === original, "nothing changed");
    await timeout.evaluate((el) => el.scrollIntoView({ block: "center" }));
    await screenshot("config-invalid", { fullPage: false });
  });

  await step("a valid value is saved and applied", async () => {
    await field("gemini.timeout_seconds").fill(String(original + 15));
    await button("Save").click();
    await notice(`Saved: version ${before + 1}, 1 change`).waitFor();
    const now = (await admin("/api/config")).gemini.timeout_seconds;
    assert(now === original + 15, `the running config has the new value (${now})`);
    await page.locator("#f-gemini-timeout_seconds-err").waitFor({ state: "hidden" });
    const latest = page.locator("ol.history > li").first();
    await latest.getByText(`Version ${before + 1}`).waitFor();
    await latest.locator("del", { hasText: String(original) }).waitFor();
    await latest.locator("ins", { hasText: String(original + 15) }).waitFor();
  });

  await step("a save made from an outdated read is refused, not written over the other change", async () => {
    // Someone else changes the config behind the console's back.
    const other = await admin("/api/config");
    other.gemini.max_retries = other.gemini.max_retries + 1;
    await admin("/api/config", { method: "PUT", body: JSON.stringify(other) });
    await field("gemini.timeout_seconds").fill(String(original + 30));
    await button("Save").click();
    await page.getByText(/read it again and retry/).first().waitFor();
    const now = await admin("/api/config");
    assert(now.gemini.timeout_seconds === original + 15, `the stale save changed nothing (${now.gemini.timeout_seconds})`);
    assert(now.gemini.max_retries === other.gemini.max_retries, "the other change is kept");
    await button("Reset").click();
    await until("the form to show the other change", async () => (await field("gemini.max_retries").inputValue()) === String(other.gemini.max_retries));
    await page.locator("ol.history > li").first().getByText(`Version ${before + 2}`).waitFor();
  });

  await step("roll back to the version before", async () => {
    await page.locator("ol.history > li summary", { hasText: `Version ${before} ·` }).click();
    await button(`Roll back to version ${before}`).click();
    const dialog = page.getByRole("dialog");
    await dialog.getByText(`Roll back to version ${before}?`).waitFor();
    await dialog.getByRole("button", { name: "Roll back" }).click();
    await notice(`Rolled back to version ${before}`).waitFor();
    const now = (await admin("/api/config")).gemini.timeout_seconds;
    assert(now === original, `the running config has the old value again (${now})`);
    await until("the form to show the old value", async () => (await field("gemini.timeout_seconds").inputValue()) === String(original));
    await page.locator("ol.history > li").first().getByText("running").waitFor();
    await page.locator("#history-title").scrollIntoViewIfNeeded();
    await screenshot("config");
  });

  await step("the Routing page turns the response cache on, and a repeated request is answered from it", async () => {
    await nav("Routing");
    await heading("Routing").waitFor();
    const cache = page.getByLabel("Response cache (cache)");
    await until("the cache settings to load", async () => (await cache.inputValue()).includes("max_bytes"));
    const settings = JSON.parse(await cache.inputValue());
    await cache.fill("{ not json");
    await button("Save").click();
    await page.locator("#routing-cache-err", { hasText: "not JSON" }).waitFor();
    settings.enabled = true;
    await cache.fill(JSON.stringify(settings, null, 2));
    await button("Save").click();
    await notice("Saved: the routing rules apply to the next request").waitFor();
    assert((await admin("/api/config")).cache.enabled === true, "the running config has the cache on");
    await mockReset();
    assert((await generate()) === 200 && (await generate()) === 200, "both requests answered");
    const keys = await upstreamKeys();
    assert(keys.length === 1, `one upstream call for two identical requests (${keys.length})`);
    await page.reload();
    await page.locator("#routing-cache-held", { hasText: "Cached answers: 1," }).waitFor();
    await screenshot("routing");
    settings.enabled = false;
    await cache.fill(JSON.stringify(settings, null, 2));
    await button("Save").click();
    await notice("Saved: the routing rules apply to the next request").waitFor();
    await nav("Config");
  });

  await step("turn client authentication on in the config form", async () => {
    await field("auth.jwt_secret").fill(JWT_SECRET);
    await field("auth.enabled").check();
    await page.getByText("2 fields changed").waitFor();
    await button("Save").click();
    await notice(/Saved: version \d+, 2 changes/).waitFor();
    const auth = (await admin("/api/config")).auth;
    assert(auth.enabled === true && auth.jwt_secret === "********", `auth is on, secret masked: ${JSON.stringify(auth)}`);
    const status = await generate();
    assert(status === 401, `a request without a token is refused now (${status})`);
  });

  let jti;
  await step("issue a token, copy it, and use it for a real request", async () => {
    await nav("Tokens");
    await page.getByText("Clients must send a token (auth.enabled is on).").waitFor();
    await page.getByLabel("Subject (who it is for)").fill("console-client");
    await page.getByLabel("Lifetime").fill("1h");
    await page.getByLabel(/^Models/).fill("gemini-2.5-*");
    // Not a whole number: refused in the form, nothing issued.
    await page.getByLabel("Live sessions at once").fill("-1");
    await button("Issue token").click();
    await page.locator("#tok-live-sessions-err", { hasText: "must be a whole number" }).waitFor();
    assert((await page.getByLabel("Live sessions at once").getAttribute("aria-invalid")) === "true", "the field is marked invalid");
    await page.getByLabel("Live sessions at once").fill("2");
    await button("Issue token").click();
    const tokenField = page.getByLabel("The new token");
    await tokenField.waitFor();
    const token = await tokenField.inputValue();
    assert(token.split(".").length === 3, "a JWT");
    const claims = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
    assert(claims.live_sessions === 2, `the token carries live_sessions: ${JSON.stringify(claims)}`);
    assert(((await page.locator(".once .muted").textContent()) || "").includes("2 Live sessions at once"), "the claim is shown");
    await button("Copy").click();
    await notice("Copied the token to the clipboard").waitFor();
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    assert(copied === token, "the clipboard holds the token");
    await screenshot("tokens");
    jti = ((await page.locator(".once .muted").textContent()) || "").match(/id \(jti\) (\S+)/)[1];
    await mockReset();
    const status = await generate({ "x-goog-api-key": token });
    assert(status === 200, `the token works (${status})`);
    const keys = await upstreamKeys();
    assert(keys.length === 1 && keys[0].startsWith("AIza"), `the upstream saw a pool key, not the token: ${keys}`);
    await button("Done").click();
    await page.getByLabel("The new token").waitFor({ state: "detached" });
    // Once dismissed, the token is nowhere on the page.
    assert(!(await page.content()).includes(token), "the token is shown only once");

    await button(`Revoke ${jti}`).click();
    await notice(`Revoked the token ${jti}`).waitFor();
    await page.locator(".plain.mono li", { hasText: jti }).waitFor();
    const after = await generate({ "x-goog-api-key": token });
    assert(after === 401, `a revoked token is refused (${after})`);
  });

  await step("the errors page lists the refused requests, with filters", async () => {
    await nav("Errors");
    await page.locator("tbody tr").first().waitFor();
    await page.getByLabel("Status").selectOption("401");
    await until("only 401s", async () => {
      const statuses = await page.locator("tbody tr td:nth-child(2)").allTextContents();
      return statuses.length >= 2 && statuses.every((s) => s.trim() === "401");
    });
    await page.getByLabel("Status").selectOption("5xx");
    await page.getByText("No error matches the filters.").waitFor();
    await page.getByLabel("Status").selectOption("");
    await screenshot("errors");
  });

  await step("the layout holds on a phone-sized screen", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await nav("Overview");
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 1, `no sideways scrolling (${overflow}px)`);
    await screenshot("overview-phone");
    await page.setViewportSize({ width: 1360, height: 900 });
  });

  await step("keyboard: skip link, then the navigation by Tab", async () => {
    await page.goto(`${CONSOLE}/`);
    await heading("Overview").waitFor();
    await page.keyboard.press("Tab");
    const first = await page.evaluate(() => document.activeElement?.textContent);
    assert(first === "Skip to content", `first Tab stop is the skip link (${first})`);
    await page.keyboard.press("Tab");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Enter");
    await heading("Keys").waitFor();
  });

  await step("sign out clears the token", async () => {
    await button("Sign out").click();
    await page.getByLabel("Admin token").waitFor();
    const stored = await page.evaluate(() => sessionStorage.getItem("gem-proxy.admin-token"));
    assert(stored === null, "no token in session storage");
    await page.reload();
    await page.getByLabel("Admin token").waitFor();
  });

  await step("a sign-in link (as the quick start prints) signs in and leaves the address clean", async () => {
    await page.goto(`${CONSOLE}/#token=${encodeURIComponent(TOKEN)}`);
    await heading("Overview").waitFor();
    assert(!page.url().includes("token"), `the address keeps no token: ${page.url()}`);
    const stored = await page.evaluate(() => sessionStorage.getItem("gem-proxy.admin-token"));
    assert(stored === TOKEN, "signed in with the link's token");
  });

  await step("no console errors", async () => {
    // Chromium logs every 4xx answer to fetch as "Failed to load resource": the refused sign-in
    // (first step) is expected to be there, once.
    // The same goes for the invalid config that the gateway refused with a 400 on purpose.
    const refusedSignIn = (p) => /status of 401 .*\/api\/config\/history\)$/.test(p);
    const refusedConfig = (p) => /status of 400 .*\/api\/config\)$/.test(p);
    // And the save made from an outdated read (412).
    const staleSave = (p) => /status of 412 .*\/api\/config\)$/.test(p);
    assert(problems.filter(refusedSignIn).length === 1, `one refused sign-in: ${problems}`);
    assert(problems.filter(refusedConfig).length === 1, `one refused config: ${problems}`);
    assert(problems.filter(staleSave).length === 1, `one stale save: ${problems}`);
    const unexpected = problems.filter((p) => !refusedSignIn(p) && !refusedConfig(p) && !staleSave(p));
    assert(unexpected.length === 0, `browser problems:\n  ${unexpected.join("\n  ")}`);
  });
} catch (e) {
  console.error(`FAILED at "${current}": ${e.stack || e}`);
  if (problems.length) console.error(`browser problems so far:\n  ${problems.join("\n  ")}`);
  try {
    await screenshot("failure");
  } catch {}
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log("console: all steps passed");
