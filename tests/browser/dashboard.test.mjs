// End-to-end test of the coordinator dashboard in headless Chromium against a
// real `wmig up` cluster (real processes, no mocks). See README.md.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const BIN = process.env.WMIG_BIN || path.join(repo, 'target', 'debug', 'wmig');
const TASKS = process.env.WMIG_TASKS || path.join(repo, 'target', 'wasm-tasks', 'wasm32-wasip1', 'release');
const ARTIFACTS = process.env.WMIG_ARTIFACTS || path.join(repo, 'tests', 'browser', 'artifacts');
const CHROMIUM = process.env.WMIG_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Iterations of the long task. counter runs at roughly 140 M iterations/s
// (README benchmark), so 4e9 would finish in about 30 s, too close to how long
// steps 2-6 take; 4e10 keeps it running until step 6 cancels it.
const LONG_N = '40000000000';
const SHORT_N = '20000000';

// ---------- the cluster: `wmig up` as a child process ----------
let cluster = null; // { dir, child, stderr, stdout, url, base, exited }
let userDataDir = null;
let context = null;
let page = null;
const pageErrors = [];
const consoleErrors = [];
let broken = null; // name of the first failed step: later steps are skipped

function tail(text, n = 6000) { return text.length > n ? `…${text.slice(-n)}` : text; }

/** What to append to a failure: the child's stderr and the coordinator's log. */
function diagnostics() {
  const parts = [];
  if (cluster) {
    parts.push(`--- wmig up stderr ---\n${tail(cluster.stderr) || '(empty)'}`);
    if (cluster.exited) parts.push(`--- wmig up exited: ${cluster.exited} ---`);
    const log = path.join(cluster.dir, 'logs', 'coordinator.log');
    try { parts.push(`--- ${log} (tail) ---\n${tail(fs.readFileSync(log, 'utf8'), 4000)}`); } catch { /* no log yet */ }
  }
  if (pageErrors.length) parts.push(`--- page errors ---\n${pageErrors.join('\n')}`);
  if (consoleErrors.length) parts.push(`--- browser console errors ---\n${consoleErrors.slice(-20).join('\n')}`);
  return parts.join('\n');
}

function withDiagnostics(err) {
  const e = err instanceof Error ? err : new Error(String(err));
  if (e.wmigDiagnostics) return e;
  const extra = diagnostics();
  try { e.message = `${e.message}\n${extra}`; } catch { /* read-only message */ }
  e.wmigDiagnostics = true;
  return e;
}

function startCluster() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wmig-browser-'));
  // The test kills a worker and expects to see it offline: no supervision.
  const args = ['up', '--cluster', dir, '--workers', '3', '--offline-timeout', '2s', '--dashboard', '--no-restart'];
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: false, env: process.env });
  cluster = { dir, child, stderr: '', stdout: '', url: null, base: null, exited: null };
  return new Promise((resolve, reject) => {
    let ready = false;
    const timer = setTimeout(() => fail(new Error(`wmig up did not print both the dashboard URL and \`ready\` within 90 s (url: ${cluster.url})`)), 90_000);
    function fail(e) { clearTimeout(timer); reject(withDiagnostics(e)); }
    function check() {
      if (ready && cluster.url) { clearTimeout(timer); resolve(cluster); }
    }
    child.on('error', (e) => fail(new Error(`could not start ${BIN}: ${e.message} (build it with \`cargo build -p wmig\`, or set WMIG_BIN)`)));
    child.on('exit', (code, signal) => {
      cluster.exited = signal ? `signal ${signal}` : `exit code ${code}`;
      if (!ready || !cluster.url) fail(new Error(`wmig up exited during start-up (${cluster.exited})`));
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => {
      cluster.stderr += d;
      const m = cluster.stderr.match(/dashboard\s+(http:\/\/\S+)/);
      if (m && !cluster.url) {
        cluster.url = m[1];
        cluster.base = new URL(m[1]).origin;
        check();
      }
    });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      cluster.stdout += d;
      if (!ready && /^ready$/m.test(cluster.stdout)) { ready = true; check(); }
    });
  });
}

async function stopCluster() {
  if (!cluster || !cluster.child) return;
  const { child } = cluster;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const gone = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
  if (!gone) {
    child.kill('SIGKILL');
    await Promise.race([exited, sleep(5000)]);
  }
}

function run(file, args, timeout = 60_000) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(withDiagnostics(new Error(`${path.basename(file)} ${args.join(' ')} failed: ${err.message}\nstdout: ${stdout}\nstderr: ${stderr}`)));
      else resolve({ stdout, stderr });
    });
  });
}

async function getJson(p) {
  const res = await fetch(cluster.base + p, { headers: { accept: 'application/json' } });
  const text = await res.text();
  assert.ok(res.ok, `GET ${p} returned HTTP ${res.status}: ${text}`);
  return JSON.parse(text);
}

// ---------- browser helpers ----------
async function shot(name) {
  if (!page) return;
  try {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true, timeout: 15_000 });
  } catch (e) {
    console.error(`screenshot ${name} failed: ${e.message}`);
  }
}

/** The visible #error banner's text, if any: makes a UI failure say why. */
async function uiError() {
  try {
    if (await page.locator('#error').isVisible()) return `\n#error banner: ${await page.locator('#error-text').innerText()}`;
  } catch { /* ignore */ }
  return '';
}

async function waitFor(fn, arg, timeout, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (e) {
    throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}${await uiError()}\n(${e.message.split('\n')[0]})`);
  }
}

function attr(sel, name) { return page.locator(sel).first().getAttribute(name); }

/** A step: a screenshot NN-name.png after it (NN-name-failed.png if it fails). */
function step(n, name, timeout, fn) {
  const nn = String(n).padStart(2, '0');
  it(`${nn} ${name}`, { timeout }, async (t) => {
    if (broken) { t.skip(`step "${broken}" failed`); return; }
    try {
      await fn(t);
    } catch (e) {
      broken = `${nn} ${name}`;
      await shot(`${nn}-${name}-failed`);
      throw withDiagnostics(e);
    }
    await shot(`${nn}-${name}`);
  });
}

// ---------- the test ----------
describe('dashboard on a real wmig cluster', { timeout: 300_000 }, () => {
  // Shared between the steps.
  let long = null; // { id, owner }
  let killed = null; // the worker the test SIGKILLs

  before(async () => {
    assert.ok(fs.existsSync(BIN), `no wmig binary at ${BIN}: build it (cargo build -p wmig) or set WMIG_BIN`);
    assert.ok(fs.existsSync(path.join(TASKS, 'counter.wasm')),
      `no counter.wasm in ${TASKS}: build the example tasks (cargo build --release --target wasm32-wasip1 --manifest-path tasks/Cargo.toml --target-dir target/wasm-tasks) or set WMIG_TASKS`);
    assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium (or set WMIG_CHROMIUM)`);
    fs.rmSync(ARTIFACTS, { recursive: true, force: true });
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await startCluster();
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'wmig-chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
      timeout: 60_000,
    });
    page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(20_000);
    page.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  }, { timeout: 150_000 });

  after(async () => {
    try { if (context) await context.close(); } catch (e) { console.error(`closing Chromium: ${e.message}`); }
    await stopCluster();
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
    if (cluster) {
      if (broken) console.error(`kept the cluster directory for inspection: ${cluster.dir} (logs in ${path.join(cluster.dir, 'logs')})`);
      else fs.rmSync(cluster.dir, { recursive: true, force: true });
    }
  });

  step(1, 'nodes', 60_000, async () => {
    await page.goto(cluster.url, { waitUntil: 'domcontentloaded', timeout: 30_000 });
    await waitFor((sel) => document.querySelectorAll(sel).length === 3,
      'tr[data-node^="worker-"][data-state="online"]', 15_000, '3 online worker rows');
    assert.ok(!page.url().includes('token='), `the token should be removed from the URL, got ${page.url()}`);
    const stored = await page.evaluate(() => localStorage.getItem('wmig-token'));
    assert.ok(stored, 'the token from #token=... should be in localStorage wmig-token');
    await waitFor(() => document.querySelector('#conn')?.dataset.state === 'live', null, 15_000, 'the event stream (#conn live)');
  });

  step(2, 'submit', 90_000, async () => {
    await run(BIN, ['upload', path.join(TASKS, 'counter.wasm'), '--name', 'counter', '--cluster', cluster.dir]);
    await page.fill('#submit [name="bundle"]', 'counter');
    await page.fill('#submit [name="args"]', LONG_N);
    await page.click('#submit [type="submit"]');
    await waitFor(() => document.querySelector('#submit-result')?.dataset.task, null, 30_000, 'the submitted task id in #submit-result');
    const id = await attr('#submit-result', 'data-task');
    await waitFor((i) => document.querySelector(`tr[data-task="${i}"]`)?.dataset.state === 'running', id, 45_000, `task ${id} running`);
    const owner = await attr(`tr[data-task="${id}"]`, 'data-owner');
    assert.match(owner, /^worker-\d+$/, `task ${id} should have an owner`);
    long = { id, owner };
  });

  step(3, 'migrate', 90_000, async () => {
    const row = page.locator(`tr[data-task="${long.id}"]`);
    const select = row.locator('select[data-migrate-target]');
    const targets = (await select.locator('option').evaluateAll((os) => os.map((o) => o.value))).filter(Boolean);
    assert.ok(targets.length >= 1, `the migrate select of ${long.id} should list the other workers, got ${JSON.stringify(targets)}`);
    assert.ok(!targets.includes(long.owner), `the migrate select should not list the owner ${long.owner}`);
    const to = targets[0];
    await select.selectOption(to);
    await row.locator('[data-action="migrate"]').click();
    await waitFor(([i, w]) => document.querySelector(`tr[data-task="${i}"]`)?.dataset.owner === w,
      [long.id, to], 60_000, `task ${long.id} owned by ${to}`);
    const dt = page.locator(`#timeline li[data-kind="migration"][data-task="${long.id}"] .downtime`).first();
    await dt.waitFor({ state: 'visible', timeout: 15_000 });
    assert.match(await dt.innerText(), /\d/, 'the downtime should be a number');
    long.owner = to;
  });

  step(4, 'recovery', 60_000, async () => {
    killed = long.owner;
    const nodes = await getJson('/api/nodes');
    const node = nodes.find((n) => n.name === killed);
    assert.ok(node && Number.isInteger(node.pid) && node.pid > 0, `GET /api/nodes should give the pid of ${killed}: ${JSON.stringify(nodes)}`);
    process.kill(node.pid, 'SIGKILL');
    await waitFor((n) => document.querySelector(`tr[data-node="${n}"]`)?.dataset.state === 'offline', killed, 10_000, `${killed} offline`);
    await waitFor(([i, dead]) => {
      const r = document.querySelector(`tr[data-task="${i}"]`);
      return r && r.dataset.state === 'running' && r.dataset.owner && r.dataset.owner !== dead;
    }, [long.id, killed], 15_000, `task ${long.id} running on another worker than ${killed}`);
    await page.locator(`#timeline li[data-kind="recovery"][data-task="${long.id}"]`).first().waitFor({ state: 'visible', timeout: 15_000 });
    long.owner = await attr(`tr[data-task="${long.id}"]`, 'data-owner');
  });

  step(5, 'output', 90_000, async () => {
    await page.fill('#submit [name="bundle"]', 'counter');
    await page.fill('#submit [name="args"]', SHORT_N);
    const first = await attr('#submit-result', 'data-task');
    await page.click('#submit [type="submit"]');
    await waitFor((prev) => {
      const id = document.querySelector('#submit-result')?.dataset.task;
      return id && id !== prev;
    }, first, 30_000, 'the second task id in #submit-result');
    const id = await attr('#submit-result', 'data-task');
    await page.locator(`tr[data-task="${id}"] [data-action="output"]`).click({ timeout: 20_000 });
    await waitFor((i) => {
      const o = document.querySelector('#output');
      return o && o.dataset.task === i && o.textContent.includes('counter done');
    }, id, 60_000, `#output of ${id} to contain "counter done"`);
    const text = await page.locator('#output').textContent();
    assert.match(text, new RegExp(`counter \\d+/${SHORT_N} checksum=`), 'the output should contain the progress lines');
  });

  step(6, 'drain', 90_000, async () => {
    // Drain moves the long task off its worker; Uncordon lets it take tasks again.
    const from = long.owner;
    await page.locator(`tr[data-node="${from}"] [data-action="drain"]`).click();
    await waitFor((n) => document.querySelector(`tr[data-node="${n}"]`)?.dataset.draining === 'true', from, 60_000, `${from} draining`);
    await waitFor(([i, w]) => {
      const r = document.querySelector(`tr[data-task="${i}"]`);
      return r && r.dataset.state === 'running' && r.dataset.owner && r.dataset.owner !== w;
    }, [long.id, from], 60_000, `task ${long.id} moved off the drained ${from}`);
    long.owner = await attr(`tr[data-task="${long.id}"]`, 'data-owner');
    await page.locator(`tr[data-node="${from}"] [data-action="uncordon"]`).click({ timeout: 10_000 });
    await waitFor((n) => document.querySelector(`tr[data-node="${n}"]`)?.dataset.draining === 'false', from, 20_000, `${from} uncordoned`);
  });

  step(7, 'cancel', 45_000, async () => {
    await page.locator(`tr[data-task="${long.id}"] [data-action="cancel"]`).click();
    await waitFor((i) => document.querySelector(`tr[data-task="${i}"]`)?.dataset.state === 'cancelled', long.id, 20_000, `task ${long.id} cancelled`);
  });

  step(8, 'api', 30_000, async () => {
    const res = await fetch(`${cluster.base}/api/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ bundle: 'counter', args: ['10'] }),
    });
    const text = await res.text();
    assert.equal(res.status, 401, `POST /api/tasks without a token: want 401, got ${res.status}: ${text}`);
    let body;
    assert.doesNotThrow(() => { body = JSON.parse(text); }, `the 401 body should be JSON: ${text}`);
    assert.equal(typeof body.error, 'string', `the 401 body should have an error message: ${text}`);
    assert.ok(body.error.length > 0, 'the error message should not be empty');
    const spec = await getJson('/api/openapi.json');
    assert.match(String(spec.openapi), /^3\.1\./, 'GET /api/openapi.json should be OpenAPI 3.1');
    assert.deepEqual(pageErrors, [], 'the dashboard should throw no JavaScript errors');
  });
});
