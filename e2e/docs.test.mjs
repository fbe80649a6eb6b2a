// End-to-end: the real binary, the real services, and Swagger UI at /docs driven in headless Chromium
// (Debian's /usr/bin/chromium) through playwright-core: sign up with "Try it out", authorize with the
// OAuth2 password dialog, upload a real photo, list it. Screenshots go to e2e/artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { root, artifacts, startServer, launchBrowser } from "./server.mjs";

let server, base, browser;

before(async () => {
  // BROKER_URL empty: jobs run in-process.
  server = await startServer(["-mode=all"]);
  base = server.base;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

// execute runs the open operation block's "Execute" and returns the status its live response shows.
async function execute(block) {
  await block.locator("button.execute").click();
  const status = block.locator(".live-responses-table .response .response-col_status").first();
  await status.waitFor({ timeout: 30_000 });
  return (await status.innerText()).trim().split(/\s/)[0];
}

// responseBody returns the body the open operation block's live response shows.
async function responseBody(block) {
  const body = block.locator(".live-responses-table .response .response-col_description .highlight-code").first();
  await body.waitFor();
  return body.innerText();
}

// open expands an operation and presses "Try it out".
async function open(page, id) {
  const block = page.locator(`#${id}`);
  await block.locator(".opblock-summary").first().click();
  await block.locator("button.try-out__btn").click();
  return block;
}

test("Swagger UI: sign up, authorize, upload a photo, list it", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const cspViolations = [];
  page.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  await page.goto(`${base}/docs`);
  await page.locator(".swagger-ui .info .title").waitFor();
  assert.match(await page.locator(".swagger-ui .info .title").innerText(), /imageapi/);

  const username = `e2e_${Math.random().toString(36).slice(2, 8)}`;
  const password = "correct horse battery";

  // Sign up through "Try it out".
  const signup = await open(page, "operations-auth-signup");
  await signup.locator("textarea.body-param__text").fill(JSON.stringify({ username, password }));
  assert.equal(await execute(signup), "200");
  assert.match(await responseBody(signup), new RegExp(username));

  // Authorize with the OAuth2 password dialog.
  await page.locator(".auth-wrapper button.authorize").click();
  const modal = page.locator(".modal-ux");
  await modal.waitFor();
  await modal.locator("#oauth_username").fill(username);
  await modal.locator("#oauth_password").fill(password);
  await modal.locator(".auth-container", { has: page.locator("#oauth_username") }).locator("button.authorize").click();
  try {
    await modal.locator("button", { hasText: "Logout" }).first().waitFor({ timeout: 15_000 });
  } catch (e) {
    await page.screenshot({ path: join(artifacts, "authorize-failed.png") });
    throw e;
  }
  await page.screenshot({ path: join(artifacts, "authorized.png") });
  await modal.locator("button.close-modal").first().click();

  // Upload a real photo.
  const upload = await open(page, "operations-images-uploadImage");
  await upload.locator('tr[data-param-name="name"] input').fill("e2e photo");
  await upload.locator('tr[data-param-name="tags"] input').fill("e2e, ladybird");
  await upload.locator('input[type="file"]').setInputFiles(join(root, "testdata", "mid.jpg"));
  assert.equal(await execute(upload), "201");
  const created = await responseBody(upload);
  assert.match(created, /"name": "e2e photo"/);
  assert.match(created, /"width": 2560/);

  // List the caller's images: the photo is there.
  const list = await open(page, "operations-images-listImages");
  assert.equal(await execute(list), "200");
  await list.scrollIntoViewIfNeeded();
  assert.match(await responseBody(list), /e2e photo/);
  await page.screenshot({ path: join(artifacts, "docs.png"), fullPage: true });

  assert.deepEqual(cspViolations, [], "the page's Content-Security-Policy blocked something Swagger UI needs");
});
