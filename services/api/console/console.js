// Cube's web console (served by cube-api, services/api/routes/console.py).
//
// Invariants:
// - Every figure comes from the REST API the SDK uses, called with the key the user typed. The key
//   lives in sessionStorage (this tab only) and travels only in the X-API-KEY header: never in a
//   URL, never in a cookie (fetch sends none: credentials 'omit').
// - Whatever the API returns reaches the DOM as text (textContent, text nodes, SVG attributes set
//   one by one), never as markup: a sandbox's metadata or a build log cannot inject anything.
// - No inline script or style anywhere (the page's Content-Security-Policy forbids them); styles
//   change through classes and the CSSOM only.
'use strict';

(() => {
  const KEY = 'cube-console-api-key';
  const REFRESH_MS = 5000;
  const BUILD_POLL_MS = 1000;
  const ARM_MS = 4000; // a destructive button asks for a second click within this time
  const MAX_PAGES = 10; // of 100 sandboxes each
  const SVG = 'http://www.w3.org/2000/svg';

  const state = { tab: 'sandboxes', selected: null, build: null, armed: null, busy: new Set(), timer: null };
  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers: text only -------------------------------------------------------------

  function el(tag, opts = {}, ...children) {
    const e = document.createElement(tag);
    if (opts.cls) e.className = opts.cls;
    if (opts.text !== undefined) e.textContent = String(opts.text);
    if (opts.title) e.title = String(opts.title);
    for (const [k, v] of Object.entries(opts.data || {})) e.dataset[k] = String(v);
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  function svg(tag, attrs = {}, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function status(message, isError = false) {
    const s = $('status');
    s.textContent = message;
    s.className = isError ? 'error' : '';
  }

  // ---- the API --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const key = sessionStorage.getItem(KEY);
    if (!key) throw new ApiError(401, 'no API key');
    const init = { method, headers: { 'X-API-KEY': key }, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    if (r.status !== 204) {
      try { data = await r.json(); } catch (e) { data = null; }
    }
    if (r.status === 401) {
      forget('The API refused the key (401).');
      throw new ApiError(401, 'the API refused the key');
    }
    if (!r.ok) throw new ApiError(r.status, (data && typeof data.message === 'string') ? data.message : r.statusText);
    return { data, headers: r.headers };
  }

  const seg = (s) => encodeURIComponent(s);

  // ---- formatting -----------------------------------------------------------------------------

  function age(iso) {
    const t = Date.parse(iso);
    if (!iso || Number.isNaN(t)) return '-';
    let s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60); s %= 60;
    if (m < 60) return `${m}m ${s}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${m % 60}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }

  function bytes(n) {
    if (typeof n !== 'number' || !Number.isFinite(n)) return '-';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
  }

  function bar(fraction) {
    const inner = el('div');
    inner.style.width = `${Math.round(Math.min(1, Math.max(0, fraction || 0)) * 100)}%`;
    return el('div', { cls: 'bar' }, inner);
  }

  function stateCell(text, extra) {
    const td = el('td', { cls: `state-${String(text).replace(/[^a-z]/g, '')}`, text });
    if (extra) td.append(el('span', { cls: 'hint', text: ` ${extra}` }));
    return td;
  }

  // ---- actions --------------------------------------------------------------------------------

  // A button that runs `fn` on click; `confirm` makes it ask for a second click first.
  function actionButton(label, id, action, fn, confirm = false) {
    const b = el('button', { text: label, data: { action, target: id }, cls: confirm ? 'danger' : '' });
    b.type = 'button';
    const armedHere = state.armed && state.armed.id === id && state.armed.action === action
      && state.armed.until > Date.now();
    if (armedHere) {
      b.textContent = `Confirm ${label.toLowerCase()}`;
      b.classList.add('armed');
    }
    if (state.busy.has(id)) b.disabled = true;
    b.addEventListener('click', async () => {
      if (confirm && !(state.armed && state.armed.id === id && state.armed.action === action
                       && state.armed.until > Date.now())) {
        state.armed = { id, action, until: Date.now() + ARM_MS };
        b.textContent = `Confirm ${label.toLowerCase()}`;
        b.classList.add('armed');
        setTimeout(() => { if (state.armed && state.armed.id === id) { state.armed = null; refresh(); } }, ARM_MS);
        return;
      }
      state.armed = null;
      state.busy.add(id);
      b.disabled = true;
      status(`${label}: ${id}...`);
      try {
        await fn();
        status(`${label}: ${id} done`);
      } catch (e) {
        status(`${label} ${id}: ${e.message} (${e.code || 'error'})`, true);
      } finally {
        state.busy.delete(id);
        await refresh();
      }
    });
    return b;
  }

  // ---- sandboxes ------------------------------------------------------------------------------

  async function listSandboxes() {
    const out = [];
    let token = '';
    for (let page = 0; page < MAX_PAGES; page++) {
      const q = new URLSearchParams({ limit: '100' });
      if (token) q.set('nextToken', token);
      const { data, headers } = await api('GET', `/v2/sandboxes?${q}`);
      out.push(...data);
      token = headers.get('X-Next-Token') || '';
      if (!token) break;
    }
    return out;
  }

  async function renderSandboxes() {
    const list = await listSandboxes();
    const rows = list.map((s) => {
      const id = s.sandboxID;
      const meta = Object.entries(s.metadata || {}).map(([k, v]) => `${k}=${v}`).join(', ');
      const actions = el('td');
      const show = el('button', { text: 'Metrics', data: { action: 'metrics', target: id } });
      show.type = 'button';
      show.addEventListener('click', () => { state.selected = id; refresh(); });
      actions.append(show);
      if (s.state === 'running' && !s.lost) {
        actions.append(actionButton('Pause', id, 'pause', () => api('POST', `/sandboxes/${seg(id)}/pause`)));
      } else if (s.state === 'paused') {
        actions.append(actionButton('Resume', id, 'resume',
          () => api('POST', `/sandboxes/${seg(id)}/connect`, { timeout: 300 })));
      }
      actions.append(actionButton('Kill', id, 'kill', async () => {
        await api('DELETE', `/sandboxes/${seg(id)}`);
        if (state.selected === id) state.selected = null;
      }, true));
      const tr = el('tr', { data: { sandboxId: id } },
        el('td', { cls: 'id', text: id }), stateCell(s.state, s.lost ? '(node lost)' : ''),
        el('td', { text: s.alias || s.templateID, title: s.templateID }), el('td', { text: s.nodeID || '-' }),
        el('td', { text: age(s.startedAt), title: s.startedAt }),
        el('td', { text: `${s.cpuCount} / ${s.memoryMB} MiB` }), el('td', { text: meta }), actions);
      if (id === state.selected) tr.classList.add('selected');
      return tr;
    });
    $('sandbox-table').tBodies[0].replaceChildren(...rows);
    $('sandbox-count').textContent = `(${list.length})`;
    $('sandbox-empty').hidden = list.length > 0;
    if (state.selected && !list.some((s) => s.sandboxID === state.selected)) state.selected = null;
    await renderMetrics();
  }

  async function renderMetrics() {
    const detail = $('sandbox-detail');
    const id = state.selected;
    if (!id) { detail.hidden = true; return; }
    let metrics;
    try {
      metrics = (await api('GET', `/sandboxes/${seg(id)}/metrics`)).data;
    } catch (e) {
      if (e.code === 404) { state.selected = null; detail.hidden = true; return; }
      throw e;
    }
    detail.hidden = false;
    $('detail-id').textContent = id;
    const t = (m) => m.timestampUnix;
    drawChart($('cpu-chart'), metrics.map((m) => [t(m), m.cpuUsedPct]), 100, '%');
    const memMax = Math.max(1, ...metrics.map((m) => m.memTotal / 1048576));
    drawChart($('mem-chart'), metrics.map((m) => [t(m), m.memUsed / 1048576]), memMax, 'MiB');
  }

  // A line chart of [unixSeconds, value] points, 0..max on the y axis, as inline SVG.
  function drawChart(container, points, max, unit) {
    const W = 380, H = 150, L = 44, R = 8, T = 8, B = 22;
    const root = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
                              'aria-label': `${points.length} samples` });
    const t0 = points.length ? points[0][0] : 0;
    const t1 = points.length ? points[points.length - 1][0] : 1;
    const x = (ts) => L + (t1 > t0 ? (ts - t0) / (t1 - t0) : 0.5) * (W - L - R);
    const y = (v) => T + (1 - Math.min(1, Math.max(0, v / max))) * (H - T - B);
    for (const f of [0, 0.5, 1]) {
      root.append(svg('line', { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), stroke: '#dde1e8' }));
      root.append(svg('text', { x: L - 4, y: y(max * f) + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#6b7385' },
        `${Math.round(max * f)}`));
    }
    root.append(svg('text', { x: L, y: H - 6, 'font-size': 10, fill: '#6b7385' },
      points.length ? `${age(new Date(t0 * 1000).toISOString())} ago` : 'no samples yet'));
    root.append(svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end', 'font-size': 10, fill: '#6b7385' },
      points.length ? `${points[points.length - 1][1].toFixed(1)} ${unit} now` : ''));
    if (points.length > 1) {
      root.append(svg('polyline', { points: points.map(([ts, v]) => `${x(ts).toFixed(1)},${y(v).toFixed(1)}`).join(' '),
                                    fill: 'none', stroke: '#2f6fdf', 'stroke-width': 2 }));
    }
    for (const [ts, v] of points) root.append(svg('circle', { cx: x(ts), cy: y(v), r: 3, fill: '#2f6fdf' }));
    container.replaceChildren(root);
  }

  // ---- templates ------------------------------------------------------------------------------

  async function renderTemplates() {
    const { data: list } = await api('GET', '/templates');
    const rows = list.map((t) => {
      const id = t.templateID;
      const actions = el('td');
      actions.append(actionButton('Build', id, 'build', () => showBuild(id)));
      actions.append(actionButton('Delete', id, 'delete', () => api('DELETE', `/templates/${seg(id)}`), true));
      return el('tr', { data: { templateId: id } },
        el('td', { cls: 'id', text: id }), el('td', { text: (t.aliases || []).join(', ') }),
        stateCell(t.buildStatus), el('td', { text: t.public ? 'yes' : 'no' }),
        el('td', { text: `${t.cpuCount} / ${t.memoryMB} MiB` }), el('td', { text: t.spawnCount }),
        el('td', { text: age(t.createdAt), title: t.createdAt }), actions);
    });
    $('template-table').tBodies[0].replaceChildren(...rows);
    $('template-count').textContent = `(${list.length})`;
  }

  // Follow a template's build: status, progress and its log, fetched from logsOffset on.
  async function showBuild(templateID) {
    const { data: t } = await api('GET', `/templates/${seg(templateID)}`);
    const buildID = (t.builds && t.builds[0] && t.builds[0].buildID) || t.buildID;
    state.build = { templateID, buildID, offset: 0, timer: null };
    $('build-view').hidden = false;
    $('build-id').textContent = buildID;
    $('build-template').textContent = templateID;
    $('build-logs').replaceChildren();
    await pollBuild(state.build);
  }

  async function pollBuild(b) {
    if (state.build !== b) return; // another build was opened since
    let st;
    try {
      st = (await api('GET', `/templates/${seg(b.templateID)}/builds/${seg(b.buildID)}/status?logsOffset=${b.offset}`)).data;
    } catch (e) {
      $('build-status').textContent = e.code === 404 ? 'no build record (built by the node itself, or expired)'
        : `error: ${e.message}`;
      $('build-phase').textContent = '';
      return;
    }
    $('build-status').textContent = st.status;
    $('build-status').className = `state-${String(st.status).replace(/[^a-z]/g, '')}`;
    const said = st.message && st.message !== st.phase ? `: ${st.message}` : '';
    $('build-phase').textContent = st.phase ? `(${st.phase}${said})` : '';
    const p = st.progress || {};
    const done = st.status === 'ready' ? 1 : (p.bytesTotal ? p.bytesDone / p.bytesTotal : 0);
    $('build-bytes').textContent = p.bytesTotal ? `${bytes(p.bytesDone)} of ${bytes(p.bytesTotal)}` : '';
    $('build-bar').style.width = `${Math.round(done * 100)}%`;
    const logs = $('build-logs');
    for (const e of st.logEntries || []) {
      logs.append(document.createTextNode(`${e.timestamp} ${e.level} ${e.step ? `[${e.step}] ` : ''}${e.message}\n`));
    }
    b.offset += (st.logEntries || []).length;
    if (st.reason && st.reason.message) logs.append(document.createTextNode(`failed: ${st.reason.message}\n`));
    logs.scrollTop = logs.scrollHeight;
    if (st.status === 'waiting' || st.status === 'building') b.timer = setTimeout(() => pollBuild(b), BUILD_POLL_MS);
  }

  // ---- nodes ----------------------------------------------------------------------------------

  async function renderNodes() {
    const body = $('node-table').tBodies[0];
    let list;
    try {
      list = (await api('GET', '/nodes')).data;
    } catch (e) {
      body.replaceChildren();
      $('node-count').textContent = '';
      $('nodes-error').textContent = e.code === 403 ? 'Listing nodes needs an admin key.' : `error: ${e.message}`;
      return;
    }
    $('nodes-error').textContent = '';
    body.replaceChildren(...list.map((n) => {
      const mem = el('td', {}, bar(n.memoryTotalBytes ? n.memoryAvailableBytes / n.memoryTotalBytes : 0),
        `${bytes(n.memoryAvailableBytes)} of ${bytes(n.memoryTotalBytes)}`);
      return el('tr', { data: { nodeId: n.nodeID } },
        el('td', { cls: 'id', text: n.nodeID }), stateCell(n.state, n.draining ? n.drainReason || '' : ''),
        el('td', { text: n.accel || '-' }), el('td', { text: n.cpuCount }), mem,
        el('td', { text: bytes(n.diskFreeBytes) }),
        el('td', { text: `${n.sandboxesRunning} / ${n.sandboxesPaused} / ${n.canTake ?? '-'}` }),
        el('td', { text: n.heartbeatAt ? `${age(n.heartbeatAt)} ago` : '-' }));
    }));
    $('node-count').textContent = `(${list.length})`;
  }

  // ---- page -----------------------------------------------------------------------------------

  const RENDER = { sandboxes: renderSandboxes, templates: renderTemplates, nodes: renderNodes };

  async function refresh() {
    if (!sessionStorage.getItem(KEY)) return;
    try {
      await RENDER[state.tab]();
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      if (e.code !== 401) status(`${state.tab}: ${e.message}`, true);
    }
  }

  function showTab(tab) {
    state.tab = tab;
    for (const name of Object.keys(RENDER)) $(name).hidden = name !== tab;
    for (const b of document.querySelectorAll('.tab')) b.classList.toggle('active', b.dataset.tab === tab);
    return refresh();
  }

  function showConsole(on) {
    $('login').hidden = on;
    $('tabs').hidden = !on;
    $('forget').hidden = !on;
    if (!on) for (const name of Object.keys(RENDER)) $(name).hidden = true;
    clearInterval(state.timer);
    state.timer = on ? setInterval(refresh, REFRESH_MS) : null;
  }

  function forget(why) {
    sessionStorage.removeItem(KEY);
    state.selected = null;
    state.build = null;
    showConsole(false);
    $('login-error').textContent = why || '';
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('key-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const key = $('api-key').value.trim();
      $('api-key').value = '';
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      $('login-error').textContent = '';
      showConsole(true);
      await showTab('sandboxes');
    });
    $('forget').addEventListener('click', () => forget(''));
    for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => showTab(b.dataset.tab));
    if (sessionStorage.getItem(KEY)) {
      showConsole(true);
      showTab('sandboxes');
    } else {
      showConsole(false);
    }
  });
})();
