// What the browser tests share: a database of their own, the real binary built and started on it, and
// Debian's Chromium through playwright-core.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import net from "node:net";
import { chromium } from "playwright-core";

export const root = new URL("..", import.meta.url).pathname;
export const artifacts = join(root, "e2e", "artifacts");
const adminURL = process.env.TEST_DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

async function waitHealthy(url, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer within ${ms} ms`);
}

// startServer builds the binary and runs it with args on a new database (created by the binary),
// with env added. It returns { base, spawnAnother(args, env), stop() }.
export async function startServer(args, env = {}) {
  mkdirSync(artifacts, { recursive: true });
  const workdir = mkdtempSync(join(tmpdir(), "imageapi-e2e-"));
  const bin = join(workdir, "imageapi");
  execFileSync("go", ["build", "-o", bin, "."], { cwd: root, stdio: "inherit" });
  const dbName = `imageapi_e2e_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const databaseURL = adminURL.replace(/\/[^/?]*(\?|$)/, `/${dbName}$1`);
  const procs = [];
  const launch = async (procArgs, extra) => {
    const port = await freePort();
    const p = spawn(bin, [...procArgs, "-env-file="], {
      cwd: workdir,
      env: { ...process.env, ADDR: `127.0.0.1:${port}`, DATABASE_URL: databaseURL, UPLOAD_DIR: join(workdir, "uploads"),
             BROKER_URL: "", REDIS_URL: "", SECRET_KEY: "", ...env, ...extra },
      stdio: ["ignore", "inherit", "inherit"],
    });
    procs.push(p);
    const base = `http://127.0.0.1:${port}`;
    await waitHealthy(`${base}/healthz`, 30_000);
    return base;
  };
  const base = await launch(args, {});
  return {
    base,
    spawnAnother: (procArgs, extra = {}) => launch(procArgs, extra),
    async stop() {
      for (const p of procs) {
        p.kill("SIGTERM");
        await new Promise((r) => (p.exitCode !== null ? r() : p.once("exit", r)));
      }
      try {
        execFileSync("psql", [adminURL, "-qc", `DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`], { stdio: "inherit" });
      } finally {
        rmSync(workdir, { recursive: true, force: true });
      }
    },
  };
}

// launchBrowser starts headless Chromium as the machine allows it (no sandbox as root, no network
// beyond localhost).
export function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", "--disable-quic"],
  });
}
