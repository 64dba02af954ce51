// The wsgate console: the Overview (live charts of the gateway's counters,
// deploys marked), Traffic > HTTP (upgrades), Traffic > WebSockets
// (frames), endpoints and plugins, a test client, the shadow generation's
// differences, and Deploys. Plain DOM and hand-drawn SVG, no build step;
// data from the admin API, live updates from /api/tail.
'use strict';

const $ = (selector) => document.querySelector(selector);
const state = {
  token: sessionStorage.getItem('wsgate-token') || '',
  configured: null,   // /api/endpoints: the listener, endpoints, plugins
  upgrades: [],        // connections shown in Traffic > HTTP
  frames: [],          // frames shown in Traffic > WebSockets
  selectedConnection: null,
  selectedFrame: null,
  client: null,
  pageTimer: null,     // polls the page's data while the Overview or Shadow shows
};

// ---- helpers ----

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ''));
  }
  return node;
}

function time(us) {
  const date = new Date(us / 1000);
  return date.toLocaleTimeString([], { hour12: false }) + '.' + String(date.getMilliseconds()).padStart(3, '0');
}

const OPCODES = { 0: 'continuation', 1: 'text', 2: 'binary', 8: 'close', 9: 'ping', 10: 'pong' };
const opcodeName = (opcode) => OPCODES[opcode] || `reserved (${opcode})`;

// A compressed message (permessage-deflate) shows its wire length and its
// length as the filters saw it; its payload is shown uncompressed.
function frameLength(frame) {
  const length = frame.uncompressed_length == null
    ? `${frame.length} bytes`
    : `${frame.length} bytes on the wire, ${frame.uncompressed_length} bytes uncompressed`;
  return length + (frame.truncated ? ' (payload truncated)' : '');
}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401) {
    const token = prompt('This admin API needs its bearer token:');
    if (token) {
      state.token = token;
      sessionStorage.setItem('wsgate-token', token);
      return api(path);
    }
  }
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : '';
}

function decodePayload(base64) {
  const binary = atob(base64 || '');
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function hexDump(bytes) {
  const lines = [];
  for (let offset = 0; offset < bytes.length; offset += 16) {
    const row = Array.from(bytes.slice(offset, offset + 16));
    const hex = row.map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = row.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${offset.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join('\n');
}

// ---- routing ----

function route() {
  const [path, search] = (location.hash.slice(1) || '/overview').split('?');
  const params = new URLSearchParams(search || '');
  const views = ['overview', 'http', 'ws', 'endpoints', 'client', 'shadow', 'deploys'];
  const view = views.find((name) => path === `/${name}`) || 'overview';
  for (const section of document.querySelectorAll('.view')) section.classList.toggle('active', section.id === `view-${view}`);
  for (const link of document.querySelectorAll('nav a')) link.classList.toggle('active', link.id === `nav-${view}`);
  if (view === 'http') loadUpgrades();
  if (view === 'ws') {
    if (params.has('connection')) $('#ws-connection').value = params.get('connection');
    loadFrames();
  }
  if (view === 'endpoints') renderEndpoints();
  if (view === 'client') renderClientEndpoints();
  if (view === 'deploys') renderDeploys();
  clearInterval(state.pageTimer);
  // The Overview's samples and the shadow's counts are polled.
  const polled = { overview: [renderOverview, 2000], shadow: [renderShadow, 1000] }[view];
  if (polled) {
    polled[0]();
    state.pageTimer = setInterval(polled[0], polled[1]);
  }
}

// ---- Traffic > HTTP ----

function upgradeFilters() {
  return { endpoint: $('#http-endpoint').value, status: $('#http-status').value.trim(), close_code: $('#http-close').value.trim() };
}

function upgradeMatches(connection) {
  const filters = upgradeFilters();
  const upgrade = connection.upgrade;
  return (!filters.endpoint || upgrade.endpoint === filters.endpoint)
    && (!filters.status || String(upgrade.status) === filters.status)
    && (!filters.close_code || String(connection.end?.code ?? '') === filters.close_code);
}

async function loadUpgrades() {
  try {
    const data = await api(`/api/connections${query({ ...upgradeFilters(), limit: 200 })}`);
    state.upgrades = data.connections;
    renderUpgrades();
  } catch (error) {
    $('#http-detail').textContent = error.message;
  }
}

function renderUpgrades() {
  const body = $('#http-table tbody');
  body.replaceChildren(...state.upgrades.map((connection) => {
    const u = connection.upgrade;
    const end = connection.end;
    const row = el('tr', { 'data-connection': u.connection, 'data-endpoint': u.endpoint },
      el('td', {}, time(u.time_us)),
      el('td', {}, u.connection),
      el('td', {}, u.endpoint),
      el('td', {}, u.client),
      el('td', {}, `${u.method} ${u.path}${u.query ? '?' + u.query : ''}`),
      el('td', { class: u.status === 101 ? '' : 'bad' }, String(u.status)),
      el('td', {}, `${(u.duration_us / 1000).toFixed(2)} ms`),
      el('td', {}, u.route || '—'),
      el('td', {}, String(connection.frames)),
      el('td', {}, end ? `${end.closed_by} ${end.code ?? ''}` : 'open'));
    if (u.connection === state.selectedConnection) row.classList.add('selected');
    row.addEventListener('click', () => showUpgrade(u.connection));
    return row;
  }));
}

async function showUpgrade(key) {
  state.selectedConnection = key;
  renderUpgrades();
  const data = await api(`/api/connections/${encodeURIComponent(key)}?limit=1`);
  const { upgrade: u, end, frames } = data.connection;
  const headers = (pairs) => el('dl', {}, ...pairs.flatMap(([name, value]) => [el('dt', {}, name), el('dd', {}, value)]));
  const detail = $('#http-detail');
  detail.classList.remove('empty');
  detail.replaceChildren(
    el('dl', {},
      el('dt', {}, 'Connection'), el('dd', { id: 'upgrade-connection' }, u.connection),
      el('dt', {}, 'Endpoint'), el('dd', {}, u.endpoint),
      el('dt', {}, 'Client'), el('dd', {}, u.client),
      el('dt', {}, 'Request'), el('dd', {}, `${u.method} ${u.path}${u.query ? '?' + u.query : ''}`),
      el('dt', {}, 'Status'), el('dd', { id: 'upgrade-status' }, String(u.status)),
      el('dt', {}, 'Time'), el('dd', {}, `${new Date(u.time_us / 1000).toISOString()} (answered in ${(u.duration_us / 1000).toFixed(2)} ms)`),
      el('dt', {}, 'Route'), el('dd', {}, u.route || '—'),
      el('dt', {}, 'Generation'), el('dd', {}, String(u.generation)),
      el('dt', {}, 'Recorded'), el('dd', {}, u.level),
      el('dt', {}, 'Frames'), el('dd', {}, String(frames)),
      el('dt', {}, 'Ended'), el('dd', { id: 'upgrade-end' }, end
        ? `${end.closed_by} closed, code ${end.code ?? 'none'} ${end.reason}${end.expired ? ' (expired)' : ''} at ${new Date(end.time_us / 1000).toISOString()}`
        : 'still open')),
    el('h3', {}, 'Upgrade plugins'),
    el('table', { class: 'list static' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Plugin'), el('th', {}, 'Verdict'), el('th', {}, 'Time'))),
      el('tbody', {}, ...u.verdicts.map((v) => el('tr', {}, el('td', {}, v.plugin), el('td', {}, v.verdict), el('td', {}, `${v.duration_us} µs`))))),
    el('h3', {}, 'Request headers'), headers(u.request_headers),
    el('h3', {}, 'Response headers'), headers(u.response_headers),
    el('button', { id: 'upgrade-frames', type: 'button', onclick: () => { location.hash = `#/ws?connection=${encodeURIComponent(u.connection)}`; } }, 'Show frames'));
}

// ---- Traffic > WebSockets ----

function frameFilters() {
  return { endpoint: $('#ws-endpoint').value, connection: $('#ws-connection').value.trim(), opcode: $('#ws-opcode').value };
}

function frameMatches(frame) {
  const filters = frameFilters();
  return (!filters.connection || frame.connection === filters.connection)
    && (!filters.opcode || opcodeName(frame.opcode) === filters.opcode)
    && (!filters.endpoint || state.endpointOf?.get(frame.connection) === filters.endpoint);
}

async function loadFrames() {
  const filters = frameFilters();
  try {
    if (filters.connection) {
      const data = await api(`/api/connections/${encodeURIComponent(filters.connection)}`);
      state.frames = data.frames.filter((f) => !filters.opcode || opcodeName(f.opcode) === filters.opcode);
    } else {
      const data = await api(`/api/frames${query({ ...filters, limit: 500 })}`);
      state.frames = data.frames.reverse();
    }
    renderFrames();
  } catch (error) {
    $('#frame-detail').textContent = error.message;
  }
}

function frameKey(frame) {
  return `${frame.connection}/${frame.seq}`;
}

function renderFrames() {
  const body = $('#ws-table tbody');
  body.replaceChildren(...state.frames.map((frame) => {
    const row = el('tr', { 'data-seq': String(frame.seq), 'data-origin': frame.origin, 'data-opcode': opcodeName(frame.opcode) },
      el('td', {}, String(frame.seq)),
      el('td', {}, time(frame.time_us)),
      el('td', {}, frame.connection),
      el('td', { class: frame.origin }, frame.origin === 'client' ? '↑ client' : '↓ server'),
      el('td', {}, opcodeName(frame.opcode)),
      el('td', {}, String(frame.length)),
      el('td', {}, frame.fin ? '✓' : ''),
      el('td', {}, frame.filter_us == null ? '' : `${frame.filter_us} µs`),
      el('td', { class: 'wrap' }, frame.verdict || ''));
    if (frameKey(frame) === state.selectedFrame) row.classList.add('selected');
    row.addEventListener('click', () => showFrame(frame));
    return row;
  }));
}

function showFrame(frame) {
  state.selectedFrame = frameKey(frame);
  renderFrames();
  const bytes = decodePayload(frame.payload);
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  let json = null;
  try { json = JSON.stringify(JSON.parse(text), null, 2); } catch { json = null; }
  const views = {
    text: () => text,
    json: () => json ?? '(not JSON)',
    hex: () => hexDump(bytes),
  };
  const payload = el('pre', { id: 'frame-payload' });
  const tabs = el('div', { class: 'tabs' });
  const show = (name) => {
    payload.textContent = frame.payload == null ? '(payload not recorded at this monitor level)' : views[name]();
    payload.dataset.view = name;
    for (const button of tabs.children) button.classList.toggle('active', button.dataset.view === name);
  };
  for (const name of ['text', 'json', 'hex']) {
    const button = el('button', { id: `payload-${name}`, type: 'button', onclick: () => show(name) }, name === 'json' ? 'JSON' : name);
    button.dataset.view = name;
    tabs.append(button);
  }
  const detail = $('#frame-detail');
  detail.classList.remove('empty');
  detail.replaceChildren(
    el('dl', {},
      el('dt', {}, 'Connection'), el('dd', {}, frame.connection),
      el('dt', {}, 'Frame'), el('dd', {}, `#${frame.seq} at ${new Date(frame.time_us / 1000).toISOString()}`),
      el('dt', {}, 'Origin'), el('dd', { id: 'frame-origin' }, frame.origin),
      el('dt', {}, 'Opcode'), el('dd', { id: 'frame-opcode' }, `${opcodeName(frame.opcode)} (${frame.opcode})`),
      el('dt', {}, 'Duration'), el('dd', { id: 'frame-duration' }, frame.filter_us == null ? '—' : `${frame.filter_us} µs in filters`),
      el('dt', {}, 'Length'), el('dd', { id: 'frame-length' }, frameLength(frame)),
      el('dt', {}, 'Masking key'), el('dd', { id: 'frame-mask' }, frame.masking_key || 'none'),
      el('dt', {}, 'FIN / RSV'), el('dd', {}, `${frame.fin ? 1 : 0} / ${frame.rsv.map((b) => (b ? 1 : 0)).join('')}`),
      el('dt', {}, 'Verdict'), el('dd', { id: 'frame-verdict' }, frame.verdict || '—')),
    el('h3', {}, 'Payload'), tabs, payload);
  show(json ? 'json' : 'text');
}

// ---- endpoints and plugins ----

async function loadConfigured() {
  state.configured = await api('/api/endpoints');
  for (const id of ['#http-endpoint', '#ws-endpoint']) {
    const select = $(id);
    const current = select.value;
    select.replaceChildren(el('option', { value: '' }, 'all'),
      ...state.configured.endpoints.map((e) => el('option', { value: e.path }, e.path)));
    select.value = current;
  }
}

function chainText(chain) {
  return chain.map((entry) => entry.plugin).join(' → ') || '—';
}

async function renderEndpoints() {
  await loadConfigured();
  const o = state.configured;
  $('#endpoints-summary').textContent = `Listening on ${o.listen}, configuration generation ${o.generation}; monitor history ${o.monitor_database ? 'in ' + o.monitor_database : 'in memory only'}.`;
  $('#endpoints-table tbody').replaceChildren(...o.endpoints.map((e) => el('tr', {},
    el('td', {}, `${e.path}${e.match === 'prefix' ? ' (prefix)' : ''}${e.enabled ? '' : ' (disabled)'}`),
    el('td', {}, e.monitor),
    el('td', {}, String(e.connections)),
    el('td', { class: 'wrap' }, chainText(e.upgrade)),
    el('td', { class: 'wrap' }, chainText(e.client_messages)),
    el('td', { class: 'wrap' }, chainText(e.upstream_messages)),
    el('td', { class: 'wrap' }, e.allowed_upstreams.join(', ')))));
  $('#plugins-table tbody').replaceChildren(...o.plugins.map((p) => el('tr', {},
    el('td', {}, p.id),
    el('td', {}, [p.upgrade && 'upgrade', p.message && 'message'].filter(Boolean).join(', ')),
    el('td', {}, p.grants.join(', ') || 'none'),
    el('td', {}, p.signed_by || 'unsigned'),
    el('td', {}, p.digest))));
}

// ---- test client ----

function gatewayUrl(path) {
  const port = state.configured.listen.split(':').pop();
  const scheme = state.configured.tls ? 'wss' : 'ws';
  return `${scheme}://${location.hostname}:${port}${path}`;
}

async function renderClientEndpoints() {
  await loadConfigured();
  const select = $('#client-endpoint');
  const current = select.value;
  select.replaceChildren(...state.configured.endpoints.filter((e) => e.enabled).map((e) => el('option', { value: e.path }, e.path)));
  if (current) select.value = current;
  if (!$('#client-url').value || !state.client) $('#client-url').value = gatewayUrl(select.value || '/');
}

function logLine(kind, text) {
  const when = new Date().toLocaleTimeString([], { hour12: false });
  $('#client-log').prepend(el('li', { class: `log-${kind}` }, el('span', { class: 'when' }, when), text));
}

function setConnected(connected, status) {
  $('#client-status').textContent = status;
  $('#client-connect').disabled = connected;
  $('#client-disconnect').disabled = !connected;
  $('#client-send').disabled = !connected;
}

function connectClient() {
  const url = $('#client-url').value.trim();
  const protocols = $('#client-protocols').value.split(',').map((p) => p.trim()).filter(Boolean);
  let socket;
  try {
    socket = new WebSocket(url, protocols);
  } catch (error) {
    logLine('event', `cannot connect: ${error.message}`);
    return;
  }
  state.client = socket;
  setConnected(true, 'connecting…');
  socket.onopen = () => {
    setConnected(true, `connected${socket.protocol ? ' (' + socket.protocol + ')' : ''}`);
    logLine('event', `connected to ${url}`);
  };
  socket.onmessage = async (event) => {
    const text = typeof event.data === 'string' ? event.data : `(binary, ${(await event.data.arrayBuffer()).byteLength} bytes)`;
    logLine('received', text);
  };
  socket.onclose = (event) => {
    logLine('event', `closed: code ${event.code}${event.reason ? ' ' + event.reason : ''}`);
    setConnected(false, 'disconnected');
    state.client = null;
  };
  socket.onerror = () => logLine('event', 'connection error');
}

// ---- live updates ----

function connectTail() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/api/tail${query({ token: state.token })}`);
  state.endpointOf = state.endpointOf || new Map();
  socket.onopen = () => { $('#live').textContent = 'live'; $('#live').className = 'live on'; };
  socket.onclose = () => {
    $('#live').textContent = 'offline';
    $('#live').className = 'live off';
    setTimeout(connectTail, 2000);
  };
  socket.onmessage = (event) => {
    const record = JSON.parse(event.data);
    if (record.type === 'upgrade') {
      state.endpointOf.set(record.connection, record.endpoint);
      const connection = { upgrade: record, end: null, frames: 0 };
      if (upgradeMatches(connection)) {
        state.upgrades.unshift(connection);
        renderUpgrades();
      }
    } else if (record.type === 'end') {
      const connection = state.upgrades.find((c) => c.upgrade.connection === record.connection);
      if (connection) { connection.end = record; renderUpgrades(); }
    } else if (record.type === 'frame') {
      const connection = state.upgrades.find((c) => c.upgrade.connection === record.connection);
      if (connection) connection.frames += 1;
      if (frameMatches(record)) {
        state.frames.push(record);
        if (state.frames.length > 2000) state.frames.shift();
        if ($('#view-ws').classList.contains('active')) renderFrames();
      }
      if (connection && $('#view-http').classList.contains('active')) renderUpgrades();
    }
  };
}

// ---- Shadow ----

function payloadText(payload) {
  if (payload.kind === 'text') return payload.data;
  if (payload.kind === 'binary') return `binary ${payload.base64}`;
  return `close ${payload.code ?? ''} ${payload.reason}`.trim();
}

function outputText(output) {
  const parts = [`forward [${output.forward.map(payloadText).join(', ')}]`];
  if (output.replies.length) parts.push(`reply [${output.replies.map(payloadText).join(', ')}]`);
  if (output.close) parts.push(`close ${output.close[0]} ${output.close[1]}`);
  return parts.join('; ');
}

async function renderShadow() {
  let shadow;
  try {
    shadow = await api('/api/shadow');
  } catch (error) {
    $('#shadow-summary').textContent = 'No shadow generation runs. `wsgate deploy --shadow --config FILE` starts one.';
    $('#shadow-endpoints tbody').replaceChildren();
    $('#shadow-plugins tbody').replaceChildren();
    $('#shadow-examples').replaceChildren();
    return;
  }
  $('#shadow-summary').textContent =
    `Generation ${shadow.generation} from ${shadow.source}, on ${shadow.sample * 100}% of the connections: ` +
    `${shadow.connections} sampled, ${shadow.dropped} dropped (queue full). Its verdicts are compared, never applied.`;
  $('#shadow-endpoints tbody').replaceChildren(...Object.entries(shadow.endpoints).map(([endpoint, c]) =>
    el('tr', { 'data-endpoint': endpoint },
      el('td', {}, endpoint), el('td', { class: 'same' }, String(c.same)),
      el('td', { class: 'changed' }, String(c.changed)), el('td', { class: 'dropped' }, String(c.dropped)),
      el('td', { class: 'closed' }, String(c.closed)), el('td', {}, String(c.upgrades_changed)))));
  $('#shadow-plugins tbody').replaceChildren(...shadow.plugins.map((p) =>
    el('tr', { 'data-plugin': p.plugin },
      el('td', {}, p.plugin), el('td', {}, String(p.calls)),
      el('td', { class: 'faults' }, Object.entries(p.faults).map(([kind, n]) => `${n} ${kind}`).join(', ') || 'none'))));
  $('#shadow-examples').replaceChildren(...shadow.examples.slice().reverse().map((e) =>
    el('li', { class: 'example', 'data-endpoint': e.endpoint },
      el('div', {}, `${e.endpoint} ${e.connection} ${e.message.from} message ${e.message.seq}: ${e.message.difference} — ${payloadText(e.message.input)}`),
      el('pre', { class: 'diff' }, `- ${outputText(e.message.recorded)}\n+ ${outputText(e.message.candidate)}`))));
}

// ---- Overview ----

const SVG = 'http://www.w3.org/2000/svg';
const PALETTE = ['#1a5fb4', '#26a269', '#c01c28', '#e5a50a', '#813d9c', '#2ec27e', '#63452c', '#77808f'];

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child));
  return node;
}

// 1234567 -> "1.23M"; units are appended by the caller.
function compact(value) {
  if (value == null) return '–';
  const abs = Math.abs(value);
  for (const [size, suffix] of [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
    if (abs >= size) return `${+(value / size).toPrecision(3)}${suffix}`;
  }
  return String(+value.toPrecision(3));
}

// A value with its unit: microseconds become milliseconds or seconds when
// large; other units are appended to the compact number.
function measure(value, unit) {
  if (value == null) return '–';
  if (unit === 'µs') {
    if (value >= 1e6) return `${compact(value / 1e6)} s`;
    if (value >= 1e3) return `${compact(value / 1e3)} ms`;
  }
  return `${compact(value)}${unit ? ` ${unit}` : ''}`;
}

function clock(ms, seconds) {
  return new Date(ms).toLocaleTimeString([], { hour12: false, hour: '2-digit', minute: '2-digit', ...(seconds ? { second: '2-digit' } : {}) });
}

// A line chart: `series` is [{ name, points: [[ms, value]] }], drawn over
// [from, to]; a gap longer than 2.5 steps breaks the line; `marks` are the
// range's deploys. The figure's data-latest holds each series' last value.
function lineChart(id, title, series, { from, to, step, unit = '', marks = [] }) {
  const [width, height, left, right, top, bottom] = [460, 170, 44, 8, 8, 20];
  const values = series.flatMap((s) => s.points.map(([, v]) => v)).filter((v) => v != null);
  const peak = Math.max(0, ...values);
  const magnitude = 10 ** Math.floor(Math.log10(peak || 1));
  const max = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((m) => m >= peak) || 1;
  const x = (t) => left + ((t - from) / Math.max(1, to - from)) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title });
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    chart.append(svg('line', { class: 'grid', x1: left, x2: width - right, y1: y(value), y2: y(value) }),
      svg('text', { class: 'axis', x: left - 4, y: y(value) + 3, 'text-anchor': 'end' }, measure(value, unit)));
  }
  for (let i = 0; i <= 3; i += 1) {
    const t = from + ((to - from) * i) / 3;
    chart.append(svg('text', { class: 'axis', x: x(t), y: height - 5, 'text-anchor': ['start', 'middle', 'middle', 'end'][i] },
      clock(t, to - from <= 3600e3)));
  }
  for (const mark of marks) {
    const at = x(mark.at_ms);
    chart.append(svg('line', { class: `mark${mark.refused ? ' refused' : ''}`, x1: at, x2: at, y1: top, y2: height - bottom },
      svg('title', {}, mark.refused ? `refused deploy from ${mark.source}` : `generation ${mark.generation} deployed from ${mark.source}`)));
    // Labels sit right of their line, or left of it near the right edge.
    const leftOfLine = at > width - right - 24;
    chart.append(svg('text', {
      class: `mark-label${mark.refused ? ' refused' : ''}`, x: leftOfLine ? at - 2 : at + 2, y: top + (mark.refused ? 18 : 8),
      'text-anchor': leftOfLine ? 'end' : 'start',
    }, mark.refused ? '✕' : `g${mark.generation}`));
  }
  series.forEach((s, i) => {
    let path = '';
    let previous = null;
    for (const [t, v] of s.points) {
      if (v == null) { previous = null; continue; }
      path += `${previous == null || t - previous > 2.5 * step ? 'M' : 'L'}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      previous = t;
    }
    if (path) chart.append(svg('path', { class: 'line', d: path, stroke: PALETTE[i % PALETTE.length] }));
  });
  if (!values.length) chart.append(svg('text', { class: 'empty', x: width / 2, y: height / 2, 'text-anchor': 'middle' }, 'no data in this range'));
  const latest = {};
  const legend = el('div', { class: 'legend' }, ...series.map((s, i) => {
    const last = [...s.points].reverse().find(([, v]) => v != null);
    latest[s.name] = last ? last[1] : null;
    const swatch = el('span', { class: 'swatch' });
    swatch.style.background = PALETTE[i % PALETTE.length];
    return el('span', { 'data-series': s.name }, swatch, `${s.name} ${measure(latest[s.name], unit)}`);
  }));
  const figure = $(`#${id}`);
  figure.dataset.latest = JSON.stringify(latest);
  figure.replaceChildren(el('figcaption', {}, title), chart, legend);
}

// Series named by every key of `pick(point)` over the points.
function keyed(points, pick) {
  const names = [...new Set(points.flatMap((p) => Object.keys(pick(p) || {})))].sort();
  return names.map((name) => ({ name, points: points.map((p) => [p.at_ms, (pick(p) || {})[name] ?? 0]) }));
}

// Whether a point shows trouble: plugin faults, 5xx upgrades, monitor drops.
function trouble(point) {
  const faults = Object.values(point.plugins).reduce((n, p) => n + Object.values(p.faults).reduce((a, b) => a + b, 0), 0);
  const failed = Object.entries(point.upgrades_per_s).filter(([status]) => Number(status) >= 500).reduce((n, [, r]) => n + r, 0);
  const reasons = [];
  if (faults) reasons.push(`${faults} plugin fault${faults === 1 ? '' : 's'}`);
  if (failed) reasons.push('upgrades answered 5xx');
  if (point.monitor_dropped) reasons.push('monitor records dropped');
  return reasons;
}

function renderHealth(points) {
  const health = $('#health');
  if (!points.length) {
    health.className = 'health';
    health.textContent = 'Collecting samples…';
    return;
  }
  const last = points[points.length - 1];
  const unhealthy = trouble(last).length > 0;
  let since = last.at_ms;
  for (let i = points.length - 1; i >= 0 && (trouble(points[i]).length > 0) === unhealthy; i -= 1) since = points[i].at_ms;
  const recent = points.slice(-5).flatMap(trouble);
  health.className = `health ${unhealthy ? 'unhealthy' : 'healthy'}`;
  health.textContent = unhealthy
    ? `Unhealthy since ${clock(since, true)}: ${[...new Set(recent)].join(', ')}`
    : `Healthy since ${clock(since, true)}`;
}

async function renderOverview() {
  const range = $('#overview-range').value;
  let data;
  try {
    data = await api(`/api/overview?range=${range}`);
  } catch (error) {
    $('#overview-updated').textContent = error.message;
    return;
  }
  const points = data.points;
  const span = { from: data.since_ms, to: data.now_ms, step: data.step_ms, marks: data.deploys };
  const last = points[points.length - 1];
  const sum = (pick) => points.reduce((n, p) => n + pick(p), 0);
  const faults = sum((p) => Object.values(p.plugins).reduce((n, q) => n + Object.values(q.faults).reduce((a, b) => a + b, 0), 0));
  const figure = (name, value) => el('div', { 'data-figure': name }, el('dt', {}, name), el('dd', {}, value));
  $('#overview-figures').replaceChildren(
    figure('open connections', String(data.connections)),
    figure('messages/s', last ? compact(last.messages_per_s.client_to_server + last.messages_per_s.server_to_client) : '–'),
    figure('plugin faults', String(faults)),
    figure('monitor drops', String(sum((p) => p.monitor_dropped))),
    figure('generation', String(data.generation)),
    figure('deploys', String(data.deploys.length)));
  renderHealth(points);

  const direction = (pick) => [
    { name: 'client → upstream', points: points.map((p) => [p.at_ms, pick(p).client_to_server]) },
    { name: 'upstream → client', points: points.map((p) => [p.at_ms, pick(p).server_to_client]) },
  ];
  const per = { 1000: 'second', 10000: '10 s', 60000: 'minute' }[data.step_ms] || `${data.step_ms / 1000} s`;
  lineChart('chart-connections', 'Open connections', [{ name: 'open', points: points.map((p) => [p.at_ms, p.connections]) }], span);
  lineChart('chart-upgrades', 'Upgrades per second, by status', keyed(points, (p) => p.upgrades_per_s), span);
  lineChart('chart-messages', 'Messages per second', direction((p) => p.messages_per_s), span);
  lineChart('chart-bytes', 'Payload bytes per second', direction((p) => p.bytes_per_s), { ...span, unit: 'B' });
  lineChart('chart-closes', `Connections ended per ${per}, by close code`, keyed(points, (p) => p.closes), span);
  const plugins = [...new Set(points.flatMap((p) => Object.keys(p.plugins)))].sort();
  lineChart('chart-plugin-time', 'Plugin call time, p50 and p99', plugins.flatMap((name) => ['p50', 'p99'].map((q) => ({
    name: `${name} ${q}`, points: points.map((p) => [p.at_ms, p.plugins[name]?.[`${q}_us`] ?? null]),
  }))), { ...span, unit: 'µs' });
  lineChart('chart-faults', `Plugin faults per ${per}, by kind`, keyed(points, (p) => {
    const kinds = {};
    for (const plugin of Object.values(p.plugins)) for (const [kind, n] of Object.entries(plugin.faults)) kinds[kind] = (kinds[kind] || 0) + n;
    return kinds;
  }), span);
  lineChart('chart-drops', `Monitor records dropped per ${per}`, [{ name: 'dropped', points: points.map((p) => [p.at_ms, p.monitor_dropped]) }], span);

  $('#overview-plugins tbody').replaceChildren(...plugins.map((name) => {
    const latest = [...points].reverse().find((p) => p.plugins[name]?.calls_per_s > 0)?.plugins[name];
    const kinds = {};
    for (const p of points) for (const [kind, n] of Object.entries(p.plugins[name]?.faults || {})) kinds[kind] = (kinds[kind] || 0) + n;
    return el('tr', { 'data-plugin': name },
      el('td', {}, name), el('td', { class: 'calls' }, compact(last?.plugins[name]?.calls_per_s ?? 0)),
      el('td', {}, measure(latest?.p50_us, 'µs')),
      el('td', {}, measure(latest?.p99_us, 'µs')),
      el('td', { class: 'faults' }, Object.entries(kinds).map(([kind, n]) => `${n} ${kind}`).join(', ') || 'none'));
  }));
  $('#overview-updated').textContent = `updated ${clock(data.now_ms, true)}, a point every ${data.step_ms / 1000} s`;
}

// ---- Deploys ----

function diffLines(changes) {
  return el('pre', { class: 'diff' }, ...changes.map((line) => {
    const kind = { '+': 'added', '-': 'removed', '@': 'hunk' }[line[0]] || 'kept';
    return el('span', { class: kind }, `${line}\n`);
  }));
}

async function renderDeploys() {
  let generations;
  let history;
  try {
    [generations, history] = await Promise.all([api('/api/generations'), api('/api/deploys')]);
  } catch (error) {
    $('#deploys-history').replaceChildren(el('li', {}, error.message));
    return;
  }
  $('#deploys-generations tbody').replaceChildren(...generations.generations.slice().reverse().map((g) =>
    el('tr', { 'data-generation': g.id },
      el('td', {}, String(g.id)), el('td', { class: 'connections' }, String(g.connections)),
      el('td', {}, g.current ? 'serves them' : 'keeps its open connections'))));
  $('#deploys-history').replaceChildren(...history.deploys.slice().reverse().map((d) => {
    const refused = d.generation == null;
    const item = el('li', { class: `deploy ${refused ? 'refused' : 'deployed'}`, 'data-generation': d.generation ?? '' },
      el('span', { class: 'when' }, new Date(d.at_ms).toLocaleString([], { hour12: false })),
      el('span', { class: 'what' }, refused ? 'refused' : `generation ${d.generation}`),
      ` from ${d.source}`);
    if (refused) item.append(el('ul', { class: 'errors' }, ...d.errors.map((e) => el('li', {}, e))));
    else if (d.changes.length) item.append(diffLines(d.changes));
    else item.append(el('div', { class: 'status' }, 'the configuration\'s text did not change'));
    return item;
  }));
  if (!history.deploys.length) $('#deploys-history').replaceChildren(el('li', { class: 'status' }, 'No deploy since the gateway started.'));
}

// ---- wiring ----

window.addEventListener('hashchange', route);
$('#overview-range').addEventListener('change', renderOverview);
$('#http-refresh').addEventListener('click', loadUpgrades);
$('#http-endpoint').addEventListener('change', loadUpgrades);
$('#ws-refresh').addEventListener('click', loadFrames);
$('#ws-endpoint').addEventListener('change', loadFrames);
$('#ws-opcode').addEventListener('change', loadFrames);
$('#ws-connection').addEventListener('change', loadFrames);
$('#client-endpoint').addEventListener('change', () => { $('#client-url').value = gatewayUrl($('#client-endpoint').value); });
$('#client-connect').addEventListener('click', connectClient);
$('#client-disconnect').addEventListener('click', () => state.client?.close(1000, 'closed from the console'));
$('#client-send').addEventListener('click', () => {
  const text = $('#client-message').value;
  if (state.client && state.client.readyState === WebSocket.OPEN) {
    state.client.send(text);
    logLine('sent', text);
  }
});

loadConfigured().then(route, (error) => { $('#http-detail').textContent = error.message; route(); });
connectTail();
