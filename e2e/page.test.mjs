// End-to-end: the web page at / in headless Chromium, against the real binary: sign up; drop three
// real photos and one refused file in one drag and drop; see the refusal's reason; see each photo's card turn from
// its placeholder into a rendered thumbnail without a reload (the worker starts only once the cards
// wait for it); rename and retag one; filter by tag; open one, switch to grayscale, delete it; sign
// out; open and close an image with the keyboard alone. axe-core checks the sign-in screen, the
// gallery (light and dark) and the image view; screenshots at 360 and 1280 px go to e2e/artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, join } from "node:path";
import { root, artifacts, startServer, launchBrowser } from "./server.mjs";

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const brokerURL = process.env.TEST_BROKER_URL || "amqp://guest:guest@127.0.0.1:5672/";
const queue = `imageapi_e2e_${Math.random().toString(36).slice(2, 8)}`;

let server, browser;

before(async () => {
  // The API alone: jobs wait in RabbitMQ until the test starts a worker.
  server = await startServer(["-mode=api"], { BROKER_URL: brokerURL, QUEUE_NAME: queue });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

// accessibility runs axe-core on the page as it is and returns its serious and critical violations.
// (page.evaluate runs through the DevTools protocol, which the page's CSP does not govern.)
async function accessibility(page, what) {
  await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad, [], `${what}: serious or critical accessibility violations`);
  return violations.length;
}

// drop drops testdata files (path, type) on the element at selector, as one drag and drop.
async function drop(page, selector, files) {
  const payload = files.map(([path, type]) => ({ name: basename(path), type, b64: readFileSync(join(root, "testdata", path)).toString("base64") }));
  const dt = await page.evaluateHandle((files) => {
    const dt = new DataTransfer();
    for (const f of files) {
      const bin = atob(f.b64);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      dt.items.add(new File([bytes], f.name, { type: f.type }));
    }
    return dt;
  }, payload);
  await page.locator(selector).dispatchEvent("dragover", { dataTransfer: dt });
  await page.locator(selector).dispatchEvent("drop", { dataTransfer: dt });
}

// shots saves the page at phone and desktop widths.
async function shots(page, name) {
  for (const width of [360, 1280]) {
    await page.setViewportSize({ width, height: width === 360 ? 780 : 900 });
    await page.screenshot({ path: join(artifacts, `page-${name}-${width}.png`), fullPage: true });
  }
}

test("the page: sign up, upload, watch, edit, filter, view, delete, sign out", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("console", (m) => {
    // The refused upload's 415 is the one error expected; the browser logs it as a failed load.
    if ((m.type() === "error" && !/status of 415/.test(m.text())) || /Content.Security.Policy/i.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  let navigations = 0;
  page.on("framenavigated", (f) => {
    if (f === page.mainFrame()) navigations++;
  });
  await page.goto(`${server.base}/`);
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  await accessibility(page, "the sign-in screen");
  await shots(page, "signin");

  // Sign up (the same screen).
  const username = `p_${Math.random().toString(36).slice(2, 8)}`;
  await page.getByLabel("Username", { exact: true }).fill(username);
  await page.getByLabel("Password", { exact: true }).fill("correct horse battery");
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.getByRole("heading", { name: "Your images", level: 2 }).waitFor();
  assert.match(await page.locator("#whoami").innerText(), new RegExp(username));

  // Three photos and a text file named .jpg, in one go, with tags typed first.
  await page.getByLabel("Tags for the next uploads (comma-separated)").fill("e2e, photos");
  await drop(page, "#dropzone", [["mid.jpg", "image/jpeg"], ["photo.png", "image/png"], ["small.webp", "image/webp"], ["bad/text.jpg", "image/jpeg"]]);
  const refused = page.locator("#uploads li", { hasText: "text.jpg" }).locator(".status");
  await refused.filter({ hasText: "Refused" }).waitFor();
  assert.match(await refused.innerText(), /not an image this service accepts/);
  await page.locator('#uploads li[data-state="done"]').nth(2).waitFor();
  assert.equal(await page.locator('#uploads li[data-state="done"]').count(), 3);

  // The cards wait with their placeholders: no worker runs yet.
  const cards = page.locator("#gallery article");
  await page.waitForFunction(() => document.querySelectorAll("#gallery article").length === 3);
  assert.equal(await page.locator('#gallery article[data-status="pending"]').count(), 3);
  assert.equal(await cards.locator("img").count(), 0);
  await shots(page, "pending");

  // A worker starts; each card turns into its thumbnail, on this same page. When each card shows its
  // image as ready is recorded, to compare with when the worker committed it (updated_at).
  await page.evaluate(() => {
    window.readyAt = {};
    new MutationObserver(() => {
      for (const a of document.querySelectorAll('#gallery article[data-status="ready"]')) window.readyAt[a.dataset.id] ??= Date.now();
    }).observe(document.getElementById("gallery"), { childList: true, subtree: true, attributes: true });
  });
  await server.spawnAnother(["-mode=worker"], { BROKER_URL: brokerURL, QUEUE_NAME: queue });
  await page.waitForFunction(() => {
    const imgs = [...document.querySelectorAll("#gallery article img")];
    return imgs.length === 3 && imgs.every((i) => i.complete && i.naturalWidth > 0);
  }, null, { timeout: 60_000 });
  const delays = await page.evaluate(async () => {
    const r = await fetch("/api/v1/images/", { headers: { Authorization: `Bearer ${sessionStorage.getItem("imageapi.token")}` } });
    return (await r.json()).map((im) => window.readyAt[im.id] - Date.parse(im.updated_at)).sort((a, b) => a - b);
  });
  console.log(`status change to the page: ${delays.join(", ")} ms after the worker's commit (median ${delays[1]} ms)`);
  assert.ok(delays.every((d) => d >= 0), "a card showed ready before its commit");
  const navigationsBefore = navigations;
  for (const name of ["mid.jpg", "photo.png", "small.webp"]) {
    const card = page.locator("#gallery article", { has: page.getByRole("heading", { name }) });
    assert.equal(await card.locator("img").getAttribute("alt"), name);
    assert.match(await card.locator("img").getAttribute("srcset"), /variant=thumb_100.* 100w, .*variant=thumb_500/);
  }
  // The placeholder under each thumbnail was painted (a BlurHash decoded onto its canvas).
  const painted = await page.evaluate(() => [...document.querySelectorAll("#gallery article canvas")].map((c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    return d.some((v, i) => i % 4 !== 3 && v !== 0);
  }));
  assert.deepEqual(painted, [true, true, true]);
  await accessibility(page, "the gallery");
  await shots(page, "gallery");
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: join(artifacts, "page-gallery-dark-1280.png"), fullPage: true });
  await accessibility(page, "the gallery, dark");
  await page.emulateMedia({ colorScheme: "light" });

  // With the keyboard alone: a card's heading button opens it, Escape closes it, focus comes back.
  await page.getByRole("button", { name: "small.webp" }).focus();
  await page.keyboard.press("Enter");
  await page.getByRole("dialog").waitFor();
  assert.equal(await page.evaluate(() => document.activeElement?.closest("dialog")?.id), "viewer");
  await page.keyboard.press("Escape");
  await page.getByRole("dialog").waitFor({ state: "hidden" });
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), "small.webp");

  // Rename and retag one, through its view.
  await page.getByRole("button", { name: "mid.jpg" }).click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  await dialog.getByLabel("Name").fill("Ladybird");
  await dialog.getByLabel("Tags (comma-separated)").fill("bugs, red");
  await dialog.getByRole("button", { name: "Save" }).click();
  await dialog.getByText("Saved.").waitFor();
  await dialog.getByRole("button", { name: "Close" }).click();
  await page.getByRole("heading", { name: "Ladybird" }).waitFor();
  assert.match(await page.locator("#gallery article", { hasText: "Ladybird" }).locator(".tags").innerText(), /#bugs #red/);

  // Filter by tag.
  await page.getByLabel("Filter by tag").fill("bugs");
  await page.getByRole("button", { name: "Filter", exact: true }).click();
  await page.waitForFunction(() => document.querySelectorAll("#gallery article").length === 1);
  assert.match(await page.locator("#count").innerText(), /1 image tagged “bugs”/);
  await page.getByRole("button", { name: "Show all" }).click();
  await page.waitForFunction(() => document.querySelectorAll("#gallery article").length === 3);

  // Open one, switch to the grayscale copy, then delete it.
  await page.getByRole("button", { name: "photo.png" }).click();
  await dialog.waitFor();
  // The large view: the display size this screen wants (608 CSS pixels at 1×: w640), made on demand.
  await page.waitForFunction(() => {
    const img = document.getElementById("viewer-img");
    return img.src.includes("variant=w640") && img.complete && img.naturalWidth === 640;
  }, null, { timeout: 30_000 });
  await dialog.getByRole("button", { name: "Grayscale" }).click();
  await page.waitForFunction(() => {
    const img = document.getElementById("viewer-img");
    return img.src.includes("variant=grayscale") && img.complete && img.naturalWidth === 2048;
  }, null, { timeout: 30_000 });
  assert.match(await dialog.locator("#details").innerText(), /2048 × 1024 pixels/);
  await accessibility(page, "the image view");
  await shots(page, "view");
  await dialog.getByRole("button", { name: "Delete…" }).click();
  await dialog.getByRole("button", { name: "Delete for good" }).click();
  await dialog.waitFor({ state: "hidden" });
  await page.waitForFunction(() => document.querySelectorAll("#gallery article").length === 2);
  assert.equal(await page.getByRole("heading", { name: "photo.png" }).count(), 0);
  assert.equal(navigations, navigationsBefore, "the page reloaded");

  // The file picker ("Upload images") takes files too.
  await page.getByLabel("Upload images").setInputFiles(join(root, "testdata", "small.webp"));
  await page.locator('#uploads li[data-state="done"]').nth(3).waitFor();
  await page.waitForFunction(() => document.querySelectorAll("#gallery article").length === 3);

  // Sign out: back to the sign-in screen, the token gone from this tab.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("imageapi.token")), null);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.deepEqual(problems, [], "the page logged errors or CSP violations");
});

test("the account panel: usage, an API key made and deleted, password, sign out everywhere, delete", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("console", (m) => {
    // The wrong password's 400 is the one error expected; the browser logs it as a failed load.
    if ((m.type() === "error" && !/status of 400/.test(m.text())) || /Content.Security.Policy/i.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  await page.goto(`${server.base}/`);
  const username = `a_${Math.random().toString(36).slice(2, 8)}`;
  await page.getByLabel("Username", { exact: true }).fill(username);
  await page.getByLabel("Password", { exact: true }).fill("correct horse battery");
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.getByRole("heading", { name: "Your images", level: 2 }).waitFor();
  await page.getByLabel("Upload images").setInputFiles(join(root, "testdata", "small.webp"));
  await page.locator('#uploads li[data-state="done"]').first().waitFor();

  // Usage.
  await page.getByRole("button", { name: "Account" }).click();
  const panel = page.getByRole("dialog", { name: "Your account" });
  await panel.waitFor();
  await panel.locator("#usage").filter({ hasText: "1 image" }).waitFor();
  await accessibility(page, "the account panel");
  await shots(page, "account");

  // An API key: shown once, works for the API, listed without its secret, deleted.
  await panel.getByLabel("Name of a new key").fill("e2e script");
  await panel.getByRole("button", { name: "Create key" }).click();
  await page.waitForFunction(() => document.getElementById("key-secret").value !== "");
  const secret = await panel.getByLabel(/Your new key/).inputValue();
  assert.match(secret, /^iak_[A-Za-z0-9_-]{43}$/);
  const listed = await page.request.get(`${server.base}/api/v1/images/`, { headers: { Authorization: `Bearer ${secret}` } });
  assert.equal(listed.status(), 200);
  assert.equal((await listed.json()).length, 1);
  const keys = panel.locator("#keys li");
  await keys.filter({ hasText: "e2e script" }).waitFor();
  assert.ok(!(await keys.first().innerText()).includes(secret), "the list shows the secret");
  await panel.getByRole("button", { name: "Delete key e2e script" }).click();
  await page.waitForFunction(() => document.querySelectorAll("#keys li").length === 0);
  const revoked = await page.request.get(`${server.base}/api/v1/images/`, { headers: { Authorization: `Bearer ${secret}` } });
  assert.equal(revoked.status(), 401);

  // The password: a wrong current one is refused with the reason; then changed, and this tab stays in.
  await panel.getByLabel("Current password").fill("not my password");
  await panel.getByLabel("New password (8 characters or more)").fill("battery staple horse");
  await panel.getByRole("button", { name: "Change password" }).click();
  await panel.locator("#password-message").filter({ hasText: "incorrect" }).waitFor();
  await panel.getByLabel("Current password").fill("correct horse battery");
  await panel.getByRole("button", { name: "Change password" }).click();
  await panel.locator("#password-message").filter({ hasText: "Password changed" }).waitFor();
  await panel.getByRole("button", { name: "Close" }).click();
  await page.getByRole("heading", { name: "small.webp" }).waitFor();

  // Sign out everywhere: back at the sign-in screen; sign in with the new password.
  await page.getByRole("button", { name: "Account" }).click();
  await panel.getByRole("button", { name: "Sign out everywhere" }).click();
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  assert.match(await page.locator("#auth-message").innerText(), /signed out everywhere/);
  await page.getByLabel("Username", { exact: true }).fill(username);
  await page.getByLabel("Password", { exact: true }).fill("battery staple horse");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Your images", level: 2 }).waitFor();

  // Delete the account: the username must be typed; then everything goes and the name is free.
  await page.getByRole("button", { name: "Account" }).click();
  await panel.getByRole("button", { name: "Delete account…" }).click();
  await panel.getByLabel("Type your username").fill("someone else");
  await panel.getByLabel("Your password", { exact: true }).fill("battery staple horse");
  await panel.getByRole("button", { name: "Delete my account for good" }).click();
  await panel.locator("#delete-account-message").filter({ hasText: "Type your username" }).waitFor();
  await accessibility(page, "the account deletion form");
  await panel.getByLabel("Type your username").fill(username);
  await panel.getByRole("button", { name: "Delete my account for good" }).click();
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  assert.match(await page.locator("#auth-message").innerText(), /deleted/);
  const again = await page.request.post(`${server.base}/api/v1/auth/signup`, { data: { username, password: "a new password" } });
  assert.equal(again.status(), 200, "the username is free again");
  assert.deepEqual(problems, [], "the page logged errors or CSP violations");
});
