// Drives Debian's Chromium (npm playwright-core, no browser download) through Cube's web console,
// for tests/control/test_control_console.py and tests/e2e/test_e2e_console.py (through
// tests/support/console_browser.py). Environment: CONSOLE_URL (the API's base URL), ADMIN_KEY,
// SANDBOX_ID (created by the test with the E2B SDK), OUT_DIR (screenshots); optional: TEAM_KEY (a
// non-admin key: its view is checked first), TEMPLATE_ID (a template built through POST /templates:
// its build log is shown, then it is deleted from the page), PAUSE=1 (pause and resume the sandbox
// from the page). Prints one JSON line of what it saw; the test judges it. Every step waits on the
// page's own elements, never on a fixed sleep.
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const [URL_, ADMIN_KEY, SID, OUT] = ['CONSOLE_URL', 'ADMIN_KEY', 'SANDBOX_ID', 'OUT_DIR'].map(env);
const { TEAM_KEY, TEMPLATE_ID: TID, PAUSE } = process.env;
const STEP_MS = 15000;

const out = { errors: [], dialogs: [], requests: [], failures: [], shots: {} };
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium' });
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => out.errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') out.errors.push(m.text()); });
  page.on('dialog', async (d) => { out.dialogs.push(d.message()); await d.dismiss(); });
  page.on('request', (r) => out.requests.push({ url: r.url(), method: r.method(), headers: r.headers() }));
  page.on('response', (r) => { if (r.status() >= 400) out.failures.push({ url: r.url(), status: r.status() }); });

  const shot = async (name) => {
    const path = `${OUT}/${name}.png`;
    await page.screenshot({ path, fullPage: true });
    out.shots[name] = path;
  };
  const box = async (sel) => page.locator(sel).first().boundingBox();
  const rowOf = (table, attr, id) => page.locator(`#${table} tbody tr[data-${attr}="${id}"]`);
  const tab = async (name) => {
    const before = await page.evaluate(() => document.body.dataset.refreshed || '');
    await page.click(`button[data-tab="${name}"]`);
    await page.waitForFunction((b) => (document.body.dataset.refreshed || '') !== b, before);
  };
  const login = async (key) => {
    await page.fill('#api-key', key);
    await page.click('#key-form button[type="submit"]');
    await page.waitForSelector('#sandboxes:not([hidden])');
    await page.waitForFunction(() => document.body.dataset.refreshed);
  };

  // ---- the page before a key ----
  const resp = await page.goto(`${URL_}/console`);
  out.pageStatus = resp.status();
  out.csp = resp.headers()['content-security-policy'] || '';
  await page.waitForSelector('#key-form');
  out.loginVisible = await page.isVisible('#key-form');
  out.beforeKeyVisible = { tabs: await page.isVisible('#tabs'), sandboxes: await page.isVisible('#sandboxes'),
                           forget: await page.isVisible('#forget') };
  out.loginBox = await box('#key-form');
  await shot('login');

  // ---- a team's key: its own (no) sandboxes, and nodes refused ----
  if (TEAM_KEY) {
    await login(TEAM_KEY);
    out.teamSandboxRows = await page.locator('#sandbox-table tbody tr').count();
    await tab('nodes');
    out.teamNodesError = await page.textContent('#nodes-error');
    out.teamNodeRows = await page.locator('#node-table tbody tr').count();
    await page.click('#forget');
    await page.waitForSelector('#key-form');
    out.storageAfterForget = await page.evaluate(() => Object.keys(sessionStorage));
  }

  // ---- an admin's key ----
  await login(ADMIN_KEY);
  out.storageKeys = await page.evaluate(() => Object.keys(sessionStorage));
  const row = rowOf('sandbox-table', 'sandbox-id', SID);
  await row.waitFor();
  out.rowCells = await row.locator('td').allInnerTexts();
  out.imgCount = await page.locator('img').count();
  await row.locator('button[data-action="metrics"]').click();
  // A sample is a dot, two or more a line too. A real node samples every 5 s and the page refreshes
  // every 5 s, hence the longer wait. A steady figure draws a flat line, which has no height: wait
  // for it in the DOM, not "visible".
  await page.locator('#cpu-chart svg circle').first().waitFor({ state: 'attached', timeout: 2 * STEP_MS });
  await page.locator('#mem-chart svg circle').first().waitFor({ state: 'attached' });
  out.chartLines = await page.locator('#cpu-chart svg polyline, #mem-chart svg polyline').count();
  out.cpuChart = await box('#cpu-chart svg');
  out.memChart = await box('#mem-chart svg');
  out.cpuPoints = await page.locator('#cpu-chart svg circle').count();
  out.sandboxRowBox = await row.boundingBox();
  await shot('sandboxes');

  // pause, then resume, from the page
  if (PAUSE === '1') {
    await row.locator('button[data-action="pause"]').click();
    await page.waitForFunction((sid) => {
      const r = document.querySelector(`#sandbox-table tr[data-sandbox-id="${sid}"]`);
      return r && r.cells[1].textContent.startsWith('paused');
    }, SID);
    out.pausedState = (await row.locator('td').nth(1).innerText()).trim();
    await row.locator('button[data-action="resume"]').click();
    await page.waitForFunction((sid) => {
      const r = document.querySelector(`#sandbox-table tr[data-sandbox-id="${sid}"]`);
      return r && r.cells[1].textContent.startsWith('running');
    }, SID);
    out.resumedState = (await row.locator('td').nth(1).innerText()).trim();
  }

  // ---- templates: the build's status and logs, then delete ----
  await tab('templates');
  await page.locator('#template-table tbody tr').first().waitFor();
  out.templateIds = await page.locator('#template-table tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.templateId));
  if (TID) {
    const trow = rowOf('template-table', 'template-id', TID);
    await trow.waitFor();
    await trow.locator('button[data-action="build"]').click();
    await page.waitForFunction(() => document.getElementById('build-status').textContent === 'ready');
    await page.waitForFunction(() => document.getElementById('build-logs').textContent.length > 0);
    out.buildLogs = await page.textContent('#build-logs');
    out.buildBar = await box('#build-bar');
    await shot('templates');
    await trow.locator('button[data-action="delete"]').click();
    out.deleteArmed = await trow.locator('button[data-action="delete"]').innerText();
    await trow.locator('button[data-action="delete"]').click();
    await trow.waitFor({ state: 'detached' });
  } else {
    await shot('templates');
  }

  // ---- nodes ----
  await tab('nodes');
  const nrow = page.locator('#node-table tbody tr').first();
  await nrow.waitFor();
  out.nodeCells = await nrow.locator('td').allInnerTexts();
  out.nodeRowBox = await nrow.boundingBox();
  await shot('nodes');

  // ---- kill from the page: a first click arms, the second kills ----
  await tab('sandboxes');
  await row.waitFor();
  await row.locator('button[data-action="kill"]').click();
  out.killArmed = await row.locator('button[data-action="kill"]').innerText();
  await row.locator('button[data-action="kill"]').click();
  await row.waitFor({ state: 'detached' });
  out.rowsAfterKill = await page.locator('#sandbox-table tbody tr').count();
  await shot('after_kill');
  out.status = await page.textContent('#status');
  out.cookies = await context.cookies();
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
