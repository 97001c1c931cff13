// banger's dashboard: plain JavaScript over the daemon's HTTP API (the
// same routes as docs/api/openapi.json). Every string from the daemon or
// a guest is put in the page as text, never as markup.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { vms: [], shown: "", defaults: null, logVm: null, refreshing: null, ops: new Map() };
const KEEP_OPS = 12;
const term = { ws: null, xterm: null, vm: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function bytes(n) {
  if (!n && n !== 0) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function ago(unix) {
  if (!unix) return "";
  let s = Math.max(0, Math.floor(Date.now() / 1000 - unix));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function showError(msg) {
  const e = $("#error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

async function api(method, path, body) {
  const opts = { method, headers: { "Accept": "application/json" } };
  if (method !== "GET") opts.headers["X-Banger"] = "1";
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = text; }
  if (!r.ok) {
    const m = v && v.error ? `${v.error.message} (${v.error.code})` : `${r.status} ${text}`;
    throw new Error(m);
  }
  return v;
}

// Rows are rebuilt only when a VM changed: a click is not lost to a
// refresh that changed nothing.
function renderVms() {
  const key = JSON.stringify(state.vms);
  if (key === state.shown) return;
  state.shown = key;
  const tb = $("#vms tbody");
  tb.replaceChildren();
  const vms = [...state.vms].sort((a, b) => a.name.localeCompare(b.name));
  $("#no-vms").hidden = vms.length > 0;
  for (const v of vms) {
    const running = v.state === "running" || v.state === "degraded";
    const stoppable = running || v.state === "starting";
    const stop = el("button", { "data-act": "stop", onclick: () => act(v.name, "stop") }, "stop");
    const start = el("button", { "data-act": "start", onclick: () => act(v.name, "start") }, "start");
    const del = el("button", { class: "danger", "data-act": "delete", onclick: () => remove(v.name) }, "delete");
    const log = el("button", { "data-act": "log", onclick: () => openLog(v.name) }, "log");
    const shell = el("button", { "data-act": "terminal", onclick: () => openTerminal(v.name) }, "terminal");
    tb.append(el("tr", { "data-vm": v.name },
      el("td", { class: "name" }, v.name),
      el("td", { class: "state state-" + v.state, title: v.last_error || v.agent_error || "" }, v.state),
      el("td", { class: "ip" }, v.ip ? `${v.ip}  ${v.name}.vm` : ""),
      el("td", {}, v.image),
      el("td", {}, `${v.vcpu} × ${bytes(v.memory_mib * 1048576)}`),
      el("td", { class: "uptime", "data-since": running ? String(v.started_at_unix || "") : "" },
        running ? ago(v.started_at_unix) : ""),
      el("td", {}, stoppable ? stop : start, " ", running ? shell : "", running ? " " : "", log, " ", del)));
  }
}

function tickUptimes() {
  for (const td of document.querySelectorAll("td.uptime")) {
    const since = Number(td.getAttribute("data-since"));
    if (since) td.textContent = ago(since);
  }
}

async function refreshVms() {
  try {
    state.vms = await api("GET", "/v1/vms");
    renderVms();
    showError("");
  } catch (e) {
    showError("listing VMs: " + e.message);
  }
}

// Bursts of events make one refresh.
function scheduleRefresh() {
  if (state.refreshing) return;
  state.refreshing = setTimeout(() => { state.refreshing = null; refreshVms(); }, 150);
}

async function refreshArtifacts() {
  const [images, kernels, snapshots, status] = await Promise.all([
    api("GET", "/v1/images"), api("GET", "/v1/kernels"), api("GET", "/v1/snapshots"), api("GET", "/v1/status"),
  ]);
  $("#daemon").textContent = `bangerd ${status.version}, up ${ago(Date.now() / 1000 - status.uptime_ms / 1000)}`;
  const it = $("#images tbody");
  it.replaceChildren(...images.map((i) => el("tr", { "data-image": i.name },
    el("td", {}, i.name), el("td", {}, i.distro), el("td", {}, bytes(i.rootfs_bytes)),
    el("td", {}, i.source), el("td", { class: "muted" }, i.default ? "default" : ""))));
  const kt = $("#kernels tbody");
  kt.replaceChildren(...kernels.map((k) => el("tr", {},
    el("td", {}, k.name), el("td", {}, k.kernel_version), el("td", {}, k.source))));
  const st = $("#snapshots tbody");
  $("#no-snapshots").hidden = snapshots.length > 0;
  st.replaceChildren(...snapshots.map((s) => el("tr", {},
    el("td", {}, s.name), el("td", {}, s.source_vm), el("td", {}, s.image),
    el("td", {}, bytes(s.size_bytes)), el("td", {}, ago(s.created_at_unix) + " ago"))));
  const sel = $("#create select[name=image]");
  const chosen = sel.value;
  sel.replaceChildren(...images.map((i) => el("option", { value: i.name }, i.default ? `${i.name} (default)` : i.name)));
  const def = images.find((i) => i.default);
  sel.value = chosen || (def ? def.name : (images[0] || {}).name || "");
}

async function loadDefaults() {
  const d = await api("GET", "/v1/defaults");
  state.defaults = d;
  const field = (n) => $("#create").elements.namedItem(n);
  field("vcpu").placeholder = String(d.vcpu);
  field("memory_mib").placeholder = String(d.memory_mib);
  const gib = d.disk_bytes / 1073741824;
  field("disk_size").placeholder = Number.isInteger(gib) ? `${gib}G` : `${Math.round(d.disk_bytes / 1048576)}M`;
}

function progressLine(list, text, cls) {
  const li = el("li", { class: cls || "" }, text);
  list.append(li);
  return li;
}

// A streamed call (NDJSON): each stage as it starts and ends in `list`;
// answers the result, or throws the error.
async function streamed(path, body, list) {
  list.replaceChildren();
  const stages = new Map();
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Accept": "application/x-ndjson", "X-Banger": "1" },
    body: JSON.stringify(body),
  });
  if (!r.ok) {
    const v = await r.json().catch(() => null);
    throw new Error(v && v.error ? `${v.error.message} (${v.error.code})` : `${r.status}`);
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.trim()) continue;
      const m = JSON.parse(line);
      if (m.event === "stage") {
        const text = `${m.stage}${m.detail ? ": " + m.detail : ""}`;
        const li = stages.get(m.stage) || progressLine(list, text);
        stages.set(m.stage, li);
        li.textContent = m.done ? `${text} (${(m.elapsed_ms / 1000).toFixed(1)} s)` : text + " …";
        if (m.done) li.className = "done";
      } else if (m.event === "log") {
        progressLine(list, m.line, "done");
      } else if (m.result) {
        return m.result;
      } else if (m.error) {
        throw new Error(`${m.error.message} (${m.error.code})`);
      }
    }
  }
  throw new Error("the stream ended without a result");
}

// A create, streamed: each stage as it starts and ends, then the VM.
async function create(ev) {
  ev.preventDefault();
  const field = (n) => ev.target.elements.namedItem(n);
  const body = {};
  if (field("name").value.trim()) body.name = field("name").value.trim();
  if (field("image").value) body.image = field("image").value;
  if (field("vcpu").value) body.vcpu = Number(field("vcpu").value);
  if (field("memory_mib").value) body.memory_mib = Number(field("memory_mib").value);
  if (field("disk_size").value.trim()) body.disk_size = field("disk_size").value.trim();
  if (field("nat").checked) body.nat = true;
  const list = $("#progress");
  $("#create-button").disabled = true;
  try {
    const vm = await streamed("/v1/vms", body, list);
    progressLine(list, `${vm.name} is ${vm.state}${vm.ip ? " at " + vm.ip : ""}`, "result");
    field("name").value = "";
  } catch (e) {
    progressLine(list, "create failed: " + e.message, "failed");
  } finally {
    $("#create-button").disabled = false;
    refreshVms();
  }
}

// A pull, streamed the same way, then the image.
async function pull(ev) {
  ev.preventDefault();
  const field = (n) => ev.target.elements.namedItem(n);
  const body = { reference: field("reference").value.trim() };
  if (field("as").value.trim()) body.name = field("as").value.trim();
  const list = $("#pull-progress");
  $("#pull-button").disabled = true;
  try {
    const img = await streamed("/v1/images", body, list);
    progressLine(list, `image ${img.name} is ready (${bytes(img.rootfs_bytes)})`, "result");
    field("reference").value = "";
    field("as").value = "";
  } catch (e) {
    progressLine(list, "pull failed: " + e.message, "failed");
  } finally {
    $("#pull-button").disabled = false;
    refreshArtifacts().catch(() => {});
  }
}

async function act(name, what) {
  try {
    await api("POST", `/v1/vms/${encodeURIComponent(name)}/${what}`);
  } catch (e) {
    showError(`${what} ${name}: ${e.message}`);
  }
  refreshVms();
}

async function remove(name) {
  if (!confirm(`Delete the VM ${name}? Its disk goes with it.`)) return;
  try {
    await api("DELETE", `/v1/vms/${encodeURIComponent(name)}`);
    if (state.logVm === name) closeLog();
    if (term.vm === name) closeTerminal();
  } catch (e) {
    showError(`delete ${name}: ${e.message}`);
  }
  refreshVms();
}

// A login shell in the VM on xterm.js, over a WebSocket: binary frames
// both ways, a text frame for a resize, the last one says how it ended.
function openTerminal(name) {
  closeTerminal();
  term.vm = name;
  $("#term-vm").textContent = name;
  $("#term-status").textContent = "connecting…";
  $("#term-section").hidden = false;
  const x = new Terminal({ rows: 30, cols: 100, cursorBlink: true, scrollback: 5000 });
  term.xterm = x;
  x.open($("#term"));
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/vms/${encodeURIComponent(name)}/terminal?rows=${x.rows}&cols=${x.cols}`);
  ws.binaryType = "arraybuffer";
  term.ws = ws;
  const enc = new TextEncoder();
  ws.onopen = () => { $("#term-status").textContent = "connected"; x.focus(); };
  ws.onmessage = (m) => {
    if (typeof m.data !== "string") { x.write(new Uint8Array(m.data)); return; }
    const v = JSON.parse(m.data);
    const end = v.error ? `error: ${v.error.message}` : `exited ${v.exit}`;
    $("#term-status").textContent = end;
    x.write(`\r\n[${end}]\r\n`);
  };
  ws.onclose = () => { if (term.ws === ws) $("#term-status").textContent += " (closed)"; };
  x.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
  x.onResize(({ rows, cols }) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ resize: { rows, cols } }));
  });
}

function closeTerminal() {
  if (term.ws) { const ws = term.ws; term.ws = null; ws.close(); }
  if (term.xterm) { term.xterm.dispose(); term.xterm = null; }
  term.vm = null;
  $("#term-section").hidden = true;
}

function openLog(name) {
  state.logVm = name;
  $("#log-vm").textContent = name;
  $("#log-section").hidden = false;
  $("#log").textContent = "";
  pollLog();
}

function closeLog() {
  state.logVm = null;
  $("#log-section").hidden = true;
}

async function pollLog() {
  const name = state.logVm;
  if (!name) return;
  try {
    const r = await fetch(`/v1/vms/${encodeURIComponent(name)}/log?bytes=32768`);
    const text = await r.text();
    if (state.logVm !== name) return;
    const pre = $("#log");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = r.ok ? text : `(no log: ${text})`;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  } catch (_) { /* the next poll tries again */ }
}

// One line per call, whoever made it: its stages as they come, then how
// it ended.
function onProgress(ev) {
  const n = JSON.parse(ev.data);
  let op = state.ops.get(n.request_id);
  if (!op) {
    op = { method: n.method, stages: new Map(), about: "", li: el("li", { class: "running", "data-request": n.request_id }) };
    state.ops.set(n.request_id, op);
    $("#activity").prepend(op.li);
    $("#no-activity").hidden = true;
    while (state.ops.size > KEEP_OPS) {
      const [oldest] = state.ops.keys();
      state.ops.get(oldest).li.remove();
      state.ops.delete(oldest);
    }
  }
  if (n.kind === "stage") {
    // A create's first stage says where it lands.
    if (n.stage === "reserve" && n.detail) op.about = n.detail;
    op.stages.set(n.stage, n.done);
  } else if (n.kind === "end") {
    op.li.className = n.ok ? "ok" : "failed";
    op.end = n.ok ? "done" : "failed: " + (n.message || "");
  }
  const stages = [...op.stages].map(([s, done]) => done ? s + " ✓" : s).join(", ");
  op.li.replaceChildren(
    el("span", { class: "what" }, op.method + (n.target ? " " + n.target : "")),
    ` ${op.about ? "(" + op.about + ")" : ""} ${stages}${op.end ? " — " + op.end : ""}`);
}

function listen() {
  const es = new EventSource("/v1/events");
  es.addEventListener("open", () => { $("#live").textContent = "live"; $("#live").className = "pill on"; });
  es.addEventListener("error", () => { $("#live").textContent = "offline"; $("#live").className = "pill off"; });
  es.addEventListener("vm", scheduleRefresh);
  es.addEventListener("progress", onProgress);
}

async function main() {
  $("#create").addEventListener("submit", create);
  $("#pull").addEventListener("submit", pull);
  $("#log-close").addEventListener("click", closeLog);
  $("#term-close").addEventListener("click", closeTerminal);
  listen();
  await refreshVms();
  try {
    await Promise.all([loadDefaults(), refreshArtifacts()]);
  } catch (e) {
    showError(e.message);
  }
  setInterval(tickUptimes, 1000);
  setInterval(pollLog, 2000);
  setInterval(() => refreshArtifacts().catch(() => {}), 15000);
}

main();
