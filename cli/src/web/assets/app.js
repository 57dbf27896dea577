// The dashboard: one live stream (/api/stream: a snapshot, then what changed once a
// second), the actions (/api/control), and a watcher's live log (/api/logs). Every
// text from the cluster goes into the page as text, never as markup.
"use strict";

const WINDOW = 300; // seconds of chart
const MAX_EVENTS = 200;
const MAX_LOG_LINES = 1000;
const SVG = "http://www.w3.org/2000/svg";

const S = {
  members: new Map(),
  nodes: new Map(),
  hist: new Map(), // "node/watcher/wid" -> [[t, cpu, rss], ...]
  control: false,
  skew: 0, // server unix time - local unix time
  logs: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

const now = () => Date.now() / 1000 + S.skew;

function age(secs) {
  secs = Math.max(0, Math.floor(secs));
  if (secs < 60) return secs + "s";
  if (secs < 3600) return Math.floor(secs / 60) + "m" + (secs % 60) + "s";
  if (secs < 86400) return Math.floor(secs / 3600) + "h" + Math.floor((secs % 3600) / 60) + "m";
  return Math.floor(secs / 86400) + "d" + Math.floor((secs % 86400) / 3600) + "h";
}

function bytes(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + " " + u[i];
}

function setText(e, t) { if (e.textContent !== t) e.textContent = t; }

// ---- members ----

function renderMembers() {
  const body = $("members").tBodies[0];
  const names = [...S.members.keys()].sort();
  for (const tr of [...body.rows]) if (!S.members.has(tr.dataset.node)) tr.remove();
  let prev = null;
  for (const name of names) {
    const m = S.members.get(name);
    let tr = body.querySelector(`tr[data-node="${CSS.escape(name)}"]`);
    if (!tr) {
      tr = el("tr", { "data-node": name });
      for (let i = 0; i < 6; i++) tr.append(el("td"));
    }
    if (tr.previousElementSibling !== prev || tr.parentNode !== body) {
      if (prev) prev.after(tr); else body.prepend(tr);
    }
    const c = tr.cells;
    setText(c[0], m.name);
    setText(c[1], m.state);
    c[1].className = "state-" + m.state;
    setText(c[2], Object.entries(m.tags || {}).map(([k, v]) => k + "=" + v).join(", "));
    setText(c[3], m.version);
    setText(c[4], m.state === "left" || m.state === "failed" ? "-" : age(now() - m.started_at));
    setText(c[5], m.address || m.hostname);
    prev = tr;
  }
  const alive = [...S.members.values()].filter((m) => m.state === "alive").length;
  let procs = 0;
  for (const n of S.nodes.values()) for (const w of n.watchers) procs += w.processes.length;
  setText($("totals"), `${alive}/${S.members.size} alive · ${procs} processes`);
  fillSelects();
}

// ---- nodes, watchers, processes ----

function chart(cls, points, pick, max) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart " + cls);
  svg.setAttribute("viewBox", "0 0 120 26");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.append(document.createElementNS(SVG, "title"), document.createElementNS(SVG, "polyline"));
  drawChart(svg, points, pick, max);
  return svg;
}

function drawChart(svg, points, pick, max, label) {
  const t1 = now();
  let top = max;
  for (const p of points) top = Math.max(top, pick(p));
  const pts = points
    .filter((p) => p[0] >= t1 - WINDOW)
    .map((p) => {
      const x = 120 - ((t1 - p[0]) / WINDOW) * 120;
      const y = 25 - (pick(p) / (top || 1)) * 24;
      return x.toFixed(1) + "," + y.toFixed(1);
    })
    .join(" ");
  svg.lastChild.setAttribute("points", pts);
  if (label) svg.firstChild.textContent = label;
}

function watcherBlock(node, w) {
  const box = el("div", { class: "watcher", "data-node": node, "data-watcher": w.name });
  const act = (action, extra) => () => control(Object.assign({ action, node, watcher: w.name }, extra || {}));
  const count = el("input", { type: "number", min: "0", max: "1000", "aria-label": `process count of ${w.name} on ${node}` });
  const sig = el("select", { "aria-label": `signal for ${w.name} on ${node}` });
  for (const s of ["HUP", "TERM", "INT", "USR1", "USR2", "KILL"]) sig.append(el("option", { text: s }));
  box.append(
    el("div", { class: "watcher-head" },
      el("h3", { text: w.name }),
      el("span", { class: "wstate" }),
      el("span", { class: "wcount muted" }),
      el("span", { class: "row" },
        el("button", { type: "button", "data-action": "start", onclick: act("start") }, "Start"),
        el("button", { type: "button", "data-action": "stop", onclick: act("stop") }, "Stop"),
        el("button", { type: "button", "data-action": "restart", onclick: act("restart") }, "Restart"),
        el("button", { type: "button", "data-action": "incr", "aria-label": `add a process to ${w.name}`, onclick: act("incr", { nb: 1 }) }, "+1"),
        el("button", { type: "button", "data-action": "decr", "aria-label": `remove a process from ${w.name}`, onclick: act("decr", { nb: 1 }) }, "−1"),
        count,
        el("button", { type: "button", "data-action": "numprocesses", onclick: () => count.value !== "" && act("numprocesses", { nb: Number(count.value) })() }, "Set count"),
        sig,
        el("button", { type: "button", "data-action": "signal", onclick: () => act("signal", { signal: sig.value })() }, "Signal"),
      ),
    ),
    el("div", { class: "scroll" },
      el("table", { class: "procs" },
        el("thead", {}, el("tr", {},
          ...["wid", "pid", "health", "restarts", "age", "CPU %", "", "RSS", ""].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody"))),
  );
  return box;
}

function procRow(node, watcher, p) {
  const key = `${node}/${watcher}/${p.wid}`;
  const tr = el("tr", { "data-node": node, "data-watcher": watcher, "data-wid": String(p.wid) },
    el("td", { class: "num wid" }), el("td", { class: "num pid" }), el("td", { class: "health" }),
    el("td", { class: "num restarts" }), el("td", { class: "num age" }), el("td", { class: "num cpu" }),
    el("td", { class: "cpuchart" }), el("td", { class: "num rss" }), el("td", { class: "rsschart" }));
  tr.cells[6].append(chart("cpu", S.hist.get(key) || [], (q) => q[1], 5));
  tr.cells[8].append(chart("rss", S.hist.get(key) || [], (q) => q[2], 1));
  return tr;
}

function renderNode(n) {
  const root = $("nodes");
  let d = root.querySelector(`details[data-node="${CSS.escape(n.node)}"]`);
  if (!d) {
    d = el("details", { class: "node", "data-node": n.node },
      el("summary", {}, el("strong", { text: n.node }), " ", el("span", { class: "nsum muted" })),
      el("div", { class: "node-body" }));
    d.open = S.nodes.size <= 12;
    const names = [...root.children].map((x) => x.dataset.node);
    const after = names.filter((x) => x < n.node).pop();
    if (after) root.querySelector(`details[data-node="${CSS.escape(after)}"]`).after(d);
    else root.prepend(d);
  }
  const running = n.watchers.reduce((a, w) => a + w.running, 0);
  setText(d.querySelector(".nsum"), `${n.watchers.length} watchers · ${running} processes · load ${n.load1.toFixed(2)} · mem ${bytes(n.mem_total - n.mem_available)} / ${bytes(n.mem_total)}`);
  if (!d.open) return;
  const body = d.querySelector(".node-body");
  const seen = new Set();
  for (const w of n.watchers) {
    seen.add(w.name);
    let box = body.querySelector(`.watcher[data-watcher="${CSS.escape(w.name)}"]`);
    if (!box) { box = watcherBlock(n.node, w); body.append(box); }
    const st = box.querySelector(".wstate");
    setText(st, w.state);
    st.className = "wstate state-" + w.state;
    setText(box.querySelector(".wcount"), `${w.running}/${w.numprocesses} running · ${w.restarts} restarts`);
    const tb = box.querySelector("tbody");
    const wids = new Set(w.processes.map((p) => String(p.wid)));
    for (const tr of [...tb.rows]) if (!wids.has(tr.dataset.wid)) tr.remove();
    for (const p of w.processes) {
      let tr = tb.querySelector(`tr[data-wid="${p.wid}"]`);
      if (!tr) { tr = procRow(n.node, w.name, p); tb.append(tr); }
      const c = tr.cells;
      setText(c[0], String(p.wid));
      setText(c[1], String(p.pid));
      setText(c[2], p.health || "-");
      c[2].className = "health health-" + (p.health || "none");
      setText(c[3], String(p.restarts));
      setText(c[4], age(p.age));
      setText(c[5], p.cpu.toFixed(1));
      setText(c[7], bytes(p.rss));
      const h = S.hist.get(`${n.node}/${w.name}/${p.wid}`) || [];
      drawChart(c[6].firstChild, h, (q) => q[1], 5, `CPU of ${w.name} ${p.wid}: ${p.cpu.toFixed(1)}%`);
      drawChart(c[8].firstChild, h, (q) => q[2], 1, `RSS of ${w.name} ${p.wid}: ${bytes(p.rss)}`);
    }
  }
  for (const box of [...body.querySelectorAll(".watcher")]) if (!seen.has(box.dataset.watcher)) box.remove();
}

// A process arrives as [wid, pid, cpu, rss, age, restarts, health].
function unpack(n) {
  for (const w of n.watchers) {
    w.processes = w.processes.map((a) => ({ wid: a[0], pid: a[1], cpu: a[2], rss: a[3], age: a[4], restarts: a[5], health: a[6] }));
  }
  return n;
}

function takeNode(n) {
  S.nodes.set(n.node, n);
  for (const w of n.watchers) for (const p of w.processes) {
    const key = `${n.node}/${w.name}/${p.wid}`;
    let h = S.hist.get(key);
    if (!h) { h = []; S.hist.set(key, h); }
    if (!h.length || h[h.length - 1][0] < n.time) h.push([n.time, p.cpu, p.rss]);
    while (h.length && h[0][0] < n.time - WINDOW) h.shift();
  }
}

function forgetNode(name) {
  S.nodes.delete(name);
  const d = $("nodes").querySelector(`details[data-node="${CSS.escape(name)}"]`);
  if (d) d.remove();
  for (const k of [...S.hist.keys()]) if (k.startsWith(name + "/")) S.hist.delete(k);
}

// ---- events ----

function eventItem(e) {
  const t = new Date(e.time * 1000).toLocaleTimeString();
  let text = `${t} ${e.node} ${e.watcher} ${e.kind}`;
  if (e.wid != null) text += ` wid ${e.wid}`;
  if (e.pid != null) text += ` pid ${e.pid}`;
  if (e.exit) text += e.exit.signal ? ` (${e.exit.signal})` : ` (code ${e.exit.code})`;
  if (e.reason) text += `: ${e.reason}`;
  const li = el("li", { class: "kind-" + e.kind, "data-kind": e.kind, "data-node": e.node, "data-watcher": e.watcher, text });
  if (e.pid != null) li.dataset.pid = String(e.pid);
  return li;
}

function addEvents(list) {
  const feed = $("events");
  for (const e of list) feed.prepend(eventItem(e));
  while (feed.children.length > MAX_EVENTS) feed.lastChild.remove();
}

// ---- selects (logs, every node) ----

function fillSelect(sel, values) {
  const cur = sel.value;
  const have = [...sel.options].map((o) => o.value);
  if (have.join("\n") === values.join("\n")) return;
  sel.replaceChildren(...values.map((v) => el("option", { value: v, text: v })));
  if (values.includes(cur)) sel.value = cur;
}

function fillSelects() {
  fillSelect($("logs-node"), [...S.nodes.keys()].sort());
  const n = S.nodes.get($("logs-node").value);
  fillSelect($("logs-watcher"), n ? n.watchers.map((w) => w.name).sort() : []);
  const all = new Set();
  for (const x of S.nodes.values()) for (const w of x.watchers) all.add(w.name);
  fillSelect($("cluster-watcher"), [...all].sort());
}

// ---- actions ----

function showResult(ok, text) {
  const r = $("result");
  r.hidden = false;
  r.className = "result " + (ok ? "ok" : "bad");
  r.textContent = text;
}

async function control(body) {
  showResult(true, `${body.action} ${body.watcher} on ${body.node || "every node"}…`);
  try {
    const res = await fetch("/api/control", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const text = await res.text();
    let r;
    try { r = JSON.parse(text); } catch (_) { r = { ok: false, message: `${res.status}: ${text}` }; }
    const details = (r.nodes || []).filter((n) => !n.ok).map((n) => `${n.node}: ${n.reason}`);
    showResult(r.ok, [r.message].concat(details).join(" — "));
  } catch (e) {
    showResult(false, `${body.action} failed: ${e}`);
  }
}

function progress(p) {
  const bar = $("rolling-progress");
  bar.hidden = false;
  bar.max = p.total;
  bar.value = p.done;
  setText($("rolling-text"), `${p.watcher}: ${p.done}/${p.total} nodes, ${p.node} ${p.ok ? "restarted" : "failed: " + (p.reason || "")}`);
}

// ---- logs ----

function follow(ev) {
  ev.preventDefault();
  stopLogs();
  const node = $("logs-node").value, watcher = $("logs-watcher").value;
  if (!node || !watcher) return;
  const pre = $("logs");
  pre.replaceChildren();
  const src = new EventSource(`/api/logs?node=${encodeURIComponent(node)}&watcher=${encodeURIComponent(watcher)}`);
  S.logs = src;
  $("logs-stop").disabled = false;
  src.addEventListener("lines", (m) => {
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    for (const l of JSON.parse(m.data)) {
      const t = new Date(l.time * 1000).toLocaleTimeString();
      pre.append(el("span", { class: l.stream, text: `${t} [${l.wid}] ${l.line}\n` }));
    }
    while (pre.childNodes.length > MAX_LOG_LINES) pre.firstChild.remove();
    if (stick) pre.scrollTop = pre.scrollHeight;
  });
  src.addEventListener("failure", (m) => {
    pre.append(el("span", { class: "stderr", text: `cannot follow: ${JSON.parse(m.data)}\n` }));
    stopLogs();
  });
}

function stopLogs() {
  if (S.logs) S.logs.close();
  S.logs = null;
  $("logs-stop").disabled = true;
}

// ---- the stream ----

function snapshot(s) {
  S.skew = s.now - Date.now() / 1000;
  S.control = s.control;
  const mode = $("mode");
  mode.textContent = s.control ? "control allowed" : "read-only";
  mode.title = s.control ? "" : "actions are refused: start ctl web with --allow-control";
  S.members = new Map(s.members.map((m) => [m.name, m]));
  for (const name of [...S.nodes.keys()]) forgetNode(name);
  // Chart times come as seconds before the snapshot.
  S.hist = new Map(Object.entries(s.history).map(([k, v]) => [k, v.map((p) => [s.now + p[0], p[1], p[2]])]));
  for (const n of s.nodes) S.nodes.set(n.node, unpack(n));
  $("events").replaceChildren();
  addEvents(s.events);
  for (const n of S.nodes.values()) renderNode(n);
  renderMembers();
}

function update(u) {
  S.skew = u.now - Date.now() / 1000;
  for (const m of u.members) S.members.set(m.name, m);
  for (const g of u.gone) { S.members.delete(g); forgetNode(g); }
  for (const n of u.nodes) { takeNode(unpack(n)); renderNode(n); }
  addEvents(u.events);
  renderMembers();
}

function connect() {
  const src = new EventSource("/api/stream");
  src.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "badge state-alive"; });
  src.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; $("conn").className = "badge state-suspect"; });
  src.addEventListener("snapshot", (m) => snapshot(JSON.parse(m.data)));
  src.addEventListener("update", (m) => update(JSON.parse(m.data)));
  src.addEventListener("progress", (m) => progress(JSON.parse(m.data)));
}

document.addEventListener("DOMContentLoaded", () => {
  $("logs-form").addEventListener("submit", follow);
  $("logs-stop").addEventListener("click", stopLogs);
  $("logs-node").addEventListener("change", fillSelects);
  $("cluster-form").addEventListener("submit", (e) => e.preventDefault());
  for (const b of document.querySelectorAll("[data-cluster]")) {
    b.addEventListener("click", () => {
      const watcher = $("cluster-watcher").value;
      if (!watcher) return;
      control({ action: "restart", watcher, rolling: b.dataset.cluster === "rolling" });
    });
  }
  // A node opened by the keyboard or the mouse is drawn at once.
  $("nodes").addEventListener("toggle", (e) => {
    const n = S.nodes.get(e.target.dataset.node);
    if (n && e.target.open) renderNode(n);
  }, true);
  // Uptimes tick between updates.
  setInterval(renderMembers, 1000);
  connect();
});
