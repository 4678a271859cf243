// The custodian console in a real browser: Debian's Chromium driven by Playwright
// (playwright-core from the npm registry). Run by tests/console.rs, which starts the server,
// makes the CLI keys and tokens, and passes them in the environment:
//   KAGI_ADDR, ROOT_TOKEN, READER_TOKEN, KAGI_BIN, SHOT_DIR, PW_DIR, CIPHERTEXT
// Exits non-zero at the first failed check; screenshots go to SHOT_DIR.
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import path from "node:path";

const env = process.env;
const require = createRequire(path.join(env.PW_DIR, "package.json"));
const { chromium } = require("playwright-core");

const BASE = env.KAGI_ADDR;
let checks = 0;
function check(cond, what) {
  if (!cond) throw new Error("FAILED: " + what);
  checks++;
  console.log("ok - " + what);
}

// The CLI, as a user would run it; returns { ok, out }.
function kagi(args, token = env.ROOT_TOKEN) {
  try {
    const out = execFileSync(env.KAGI_BIN, args, {
      env: { ...env, KAGI_ADDR: BASE, KAGI_TOKEN: token },
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
    return { ok: true, out };
  } catch (e) {
    return { ok: false, out: String(e.stdout) + String(e.stderr) };
  }
}

async function waitFor(what, fn, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});

// Every console document must carry the CSP and framing headers; any CSP violation fails.
const headerProblems = [];
const cspViolations = [];
function watch(page) {
  page.on("response", (r) => {
    if (!r.url().startsWith(BASE + "/ui") || r.request().resourceType() !== "document") return;
    const h = r.headers();
    const csp = h["content-security-policy"] || "";
    if (!csp.includes("frame-ancestors 'none'") || !csp.includes("script-src 'self'") ||
        csp.includes("unsafe-inline") || h["x-frame-options"] !== "DENY") {
      headerProblems.push(r.url());
    }
  });
  page.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
  });
}

try {
  const root = await browser.newContext();
  const page = await root.newPage();
  watch(page);

  // 1. No session: /ui sends the browser to the login page; a wrong token is refused.
  await page.goto(BASE + "/ui");
  check(new URL(page.url()).pathname === "/ui/login", "without a session /ui goes to the login page");
  await page.fill("#token", "kagi_not_a_real_token");
  await page.click("button[type=submit]");
  const err = await page.textContent("#login-error");
  check(/refused/.test(err) && /not valid/.test(err), "a wrong token is refused with a clear message: " + err);
  const cookiesAfterWrong = await root.cookies();
  check(!cookiesAfterWrong.some((c) => c.name === "kagi_session"), "a refused sign-in sets no session cookie");

  // 2. Sign in with the root token: the CLI's keys are listed.
  await page.fill("#token", env.ROOT_TOKEN);
  await page.click("button[type=submit]");
  await page.waitForURL(/\/ui\/keys$/);
  const cookie = (await root.cookies()).find((c) => c.name === "kagi_session");
  check(cookie && cookie.httpOnly && cookie.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");
  const names = await page.$$eval("table.keys tbody th", (ths) => ths.map((t) => t.textContent.trim()));
  check(names.includes("cli-key-1") && names.includes("cli-key-2"), "keys made with the CLI are listed: " + names.join(","));
  check(!(await page.content()).includes(env.ROOT_TOKEN), "the token is never rendered");
  await page.keyboard.press("Tab");
  check((await page.evaluate(() => document.activeElement.textContent)) === "Skip to content",
    "the first Tab reaches the skip link");

  // 3. Create a key in the console and use it from the CLI.
  await page.click("details.create summary");
  await page.fill("#new-name", "console-key");
  await page.fill("#new-desc", "made in the browser");
  await page.click("details.create button[type=submit]");
  await page.waitForURL(/\/ui\/keys\/console-key\?msg=created/);
  const gen = kagi(["datakey", "generate", "console-key", "-o", "json"]);
  check(gen.ok && JSON.parse(gen.out).ciphertext, "a key created in the console works from the CLI");

  // 4. Uses with justification codes show up on the key page by themselves within 5 s.
  await page.goto(BASE + "/ui/keys/cli-key-1");
  const before = await page.$$eval("#activity table.accesses tbody tr", (r) => r.length);
  for (const j of ["CUSTOMER_INITIATED_ACCESS", "CUSTOMER_INITIATED_ACCESS", "THIRD_PARTY_DATA_REQUEST"]) {
    check(kagi(["datakey", "generate", "cli-key-1", "--justification", j]).ok, "CLI generate with " + j);
  }
  const live = await waitFor("live update", async () => {
    const t = await page.textContent("#activity");
    return t.includes("THIRD_PARTY_DATA_REQUEST") && t.includes("CUSTOMER_INITIATED_ACCESS");
  });
  check(live, "the access table shows the new justifications without a reload");
  const chartCols = await page.$$eval("#activity figure.chart:nth-of-type(2) table.sr-only thead th",
    (ths) => ths.map((t) => t.textContent));
  check(chartCols.includes("THIRD_PARTY_DATA_REQUEST") && chartCols.includes("CUSTOMER_INITIATED_ACCESS"),
    "the justification chart has both codes: " + chartCols.join(","));
  const rects = await page.$$eval("#activity svg rect", (r) => r.length);
  check(rects > 0, "the charts draw bars");
  const after = await page.$$eval("#activity table.accesses tbody tr", (r) => r.length);
  check(after >= before + 3, `the access table grew (${before} -> ${after})`);
  await page.screenshot({ path: path.join(env.SHOT_DIR, "key.png"), fullPage: true });

  // 5. The kill switch: disable (confirming) refuses the CLI at once; enable restores it.
  check(kagi(["datakey", "decrypt", env.CIPHERTEXT]).ok, "decrypt works before disable");
  await page.click("text=Disable (kill switch)…");
  await page.click("#confirm-disable");
  await page.waitForURL(/msg=disabled/);
  const refused = kagi(["datakey", "decrypt", env.CIPHERTEXT]);
  check(!refused.ok && /disabled/.test(refused.out), "after disable the CLI's decrypt is refused: " + refused.out.trim());
  await page.click("text=Enable…");
  await page.click("#confirm-enable");
  await page.waitForURL(/msg=enabled/);
  check(kagi(["datakey", "decrypt", env.CIPHERTEXT]).ok, "after enable the CLI's decrypt works again");

  // 6. Both actions are on the audit page with the console's principal; the chain is verified.
  const principal = (await page.textContent(".who")).trim();
  await page.goto(BASE + "/ui/audit?key=cli-key-1");
  const found = await waitFor("audit rows", async () => {
    const rows = await page.$$eval("#records table tbody tr", (trs) =>
      trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent.trim())));
    const has = (op) => rows.some((r) => r[2] === op && r[4] === principal && r[8] === "success");
    return has("key.disable") && has("key.enable");
  });
  check(found, "key.disable and key.enable are on the audit page with principal " + principal);
  check(/Chain verified through record \d+/.test(await page.textContent("#chain-status")),
    "the audit page shows the chain verified and the last verified record");
  await page.selectOption("#f-just", "THIRD_PARTY_DATA_REQUEST");
  await page.click("form.filters button[type=submit]");
  const justs = await page.$$eval("#records table tbody tr td:nth-child(8)", (tds) => tds.map((t) => t.textContent));
  check(justs.length >= 1 && justs.every((j) => j === "THIRD_PARTY_DATA_REQUEST"), "the justification filter keeps only its code");
  await page.goto(BASE + "/ui/audit");
  await page.screenshot({ path: path.join(env.SHOT_DIR, "audit.png"), fullPage: true });
  await page.goto(BASE + "/ui/keys");
  await page.screenshot({ path: path.join(env.SHOT_DIR, "keys.png"), fullPage: true });

  // 7. A POST without the CSRF token is refused (the key stays enabled).
  const forged = await root.request.post(BASE + "/ui/keys/cli-key-1/disable", { form: { confirm: "" }, maxRedirects: 0 });
  check(forged.status() === 403 && /CSRF/.test(await forged.text()), "a POST without the CSRF token is refused");
  check(kagi(["datakey", "decrypt", env.CIPHERTEXT]).ok, "the refused POST changed nothing");

  // 8. Policies: the dry run names the deciding rule; invalid text is refused with the reason.
  await page.goto(BASE + "/ui/policies/reader");
  await page.selectOption("#dr-op", "describe");
  await page.fill("#dr-key", "cli-key-1");
  await page.click("#dry-run");
  check(/Allowed: describe on key cli-key-1 \(allowed by policy this rule 1\)/.test(await page.textContent("#policy-result")),
    "the dry run says which rule allows the request");
  await page.selectOption("#dr-op", "manage");
  await page.click("#dry-run");
  check(/^Denied/.test(await page.textContent("#policy-result")), "the dry run denies what no rule allows");
  await page.fill("#policy-text", "[[rule]]\neffect = \"maybe\"\n");
  await page.click("#save-policy");
  check(/Not saved/.test(await page.textContent("#policy-result")), "an invalid policy is not saved, with the reason");
  const still = kagi(["policy", "show", "reader"]);
  check(still.ok && /describe/.test(still.out), "the stored policy is unchanged");

  // 9. A token without `manage` sees the key but has no working disable button.
  const rdr = await browser.newContext();
  const rp = await rdr.newPage();
  watch(rp);
  await rp.goto(BASE + "/ui/login");
  await rp.fill("#token", env.READER_TOKEN);
  await rp.click("button[type=submit]");
  await rp.waitForURL(/\/ui\/keys$/);
  await rp.goto(BASE + "/ui/keys/cli-key-1");
  check((await rp.textContent("h1")) === "cli-key-1", "the reader sees the key");
  await rp.click("text=Disable (kill switch)…");
  check(await rp.isDisabled("#confirm-disable"), "the reader's disable button is disabled");
  // Forge it: enable the button and press it anyway; the server refuses.
  await rp.$eval("#confirm-disable", (b) => { b.disabled = false; });
  await rp.click("#confirm-disable");
  const body = await rp.textContent("main");
  check(/permission denied/.test(body), "the server refuses the reader's forged disable: " + body.trim().slice(0, 120));
  check(kagi(["datakey", "decrypt", env.CIPHERTEXT]).ok, "the key is still enabled");

  // 10. Sign out ends the session.
  await page.click("header .signout button");
  await page.waitForURL(/\/ui\/login/);
  await page.goto(BASE + "/ui/keys");
  check(new URL(page.url()).pathname === "/ui/login", "after sign-out the console asks for a token again");

  check(headerProblems.length === 0, "CSP and frame headers on every page (" + headerProblems.join(",") + ")");
  check(cspViolations.length === 0, "no CSP violations (" + cspViolations.join(" | ") + ")");
  console.log(`console.mjs: ${checks} checks passed`);
  await browser.close();
} catch (e) {
  console.error(e && e.stack ? e.stack : String(e));
  await browser.close();
  process.exit(1);
}
