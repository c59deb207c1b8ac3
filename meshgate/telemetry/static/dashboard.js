// meshgate dashboard: polls the admin JSON API and draws the service graph (SVG).
// Served by the control plane itself; no external scripts, fonts or styles.
"use strict";

const POLL_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 150, NODE_H = 46;
const DENIED_RECENT_S = 15 * 60;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtPct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(v >= 0.9995 ? 0 : 1) + "%"; }
function fmtMs(v) { return v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms"; }
function fmtRps(v) { return v >= 100 ? Math.round(v).toString() : v.toFixed(v >= 10 ? 1 : 2); }
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "–"; }
function fmtIn(t, now) {
  if (!t) return {text: "–", cls: ""};
  const s = t - now;
  const abs = Math.abs(s);
  const span = abs >= 86400 ? Math.round(abs / 86400) + "d" : abs >= 3600 ? Math.round(abs / 3600) + "h"
             : abs >= 60 ? Math.round(abs / 60) + "m" : Math.round(abs) + "s";
  if (s <= 0) return {text: "expired " + span + " ago", cls: "bad-text"};
  // Certificates renew at half-life: one this close to expiry was not renewed.
  return {text: "in " + span, cls: s < 300 ? "bad-text" : s < 900 ? "warn-text" : "ok-text"};
}
function health(e) {
  if (!e.requests) return "idle";
  if (e.success_rate >= 0.99) return "ok";
  if (e.success_rate >= 0.95) return "warn";
  return "bad";
}
function recentlyDenied(e, now) {
  return e.denied > 0 || (e.denied_total > 0 && e.last_denied_at && now - e.last_denied_at < DENIED_RECENT_S);
}

async function getJSON(path) {
  const r = await fetch(path, {cache: "no-store"});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// Columns by longest path from callers (cycles broken), rows in name order.
function layout(names, edges, width, height) {
  const out = new Map(names.map(n => [n, []]));
  for (const e of edges) if (e.caller !== e.callee) out.get(e.caller).push(e.callee);
  const depth = new Map(names.map(n => [n, 0]));
  for (let i = 0; i < names.length; i++) {
    let changed = false;
    for (const [from, tos] of out) for (const to of tos) {
      if (depth.get(to) < depth.get(from) + 1 && depth.get(from) + 1 < names.length) {
        depth.set(to, depth.get(from) + 1); changed = true;
      }
    }
    if (!changed) break;
  }
  const cols = new Map();
  for (const n of names) {
    const d = depth.get(n);
    if (!cols.has(d)) cols.set(d, []);
    cols.get(d).push(n);
  }
  const ncol = Math.max(...cols.keys()) + 1;
  const pos = new Map();
  const xStep = (width - NODE_W - 40) / Math.max(1, ncol - 1);
  for (const [d, members] of cols) {
    members.sort();
    const yStep = height / (members.length + 1);
    members.forEach((n, i) => {
      const x = ncol === 1 ? width / 2 - NODE_W / 2 : 20 + d * xStep;
      pos.set(n, {x: x, y: yStep * (i + 1) - NODE_H / 2});
    });
  }
  return pos;
}

function curve(a, b, bend) {
  const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2;
  let x2 = b.x, y2 = b.y + NODE_H / 2;
  if (b.x <= a.x) { x2 = b.x + NODE_W; }
  const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
  const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy) || 1;
  const cx = mx - dy / len * bend, cy = my + dx / len * bend;
  return {d: `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`, lx: (mx + cx) / 2, ly: (my + cy) / 2};
}

function drawGraph(svg, services, edges, now) {
  const width = svg.clientWidth || 1000, height = svg.clientHeight || 420;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const kinds = new Map(services.map(s => [s.service, s.kind || "service"]));
  const stats = new Map(services.map(s => [s.service, s]));
  const names = [...new Set([...services.map(s => s.service),
                             ...edges.flatMap(e => [e.caller, e.callee])])].sort();
  if (!names.length) {
    svg.append(el("svg:text", {x: 20, y: 40, class: "empty"}, "No services yet."));
    return;
  }
  const defs = el("svg:defs");
  for (const [cls, color] of [["ok", "#2e9d4f"], ["warn", "#d99a00"], ["bad", "#d64541"],
                              ["idle", "#a5adb8"], ["denied", "#d64541"]]) {
    const m = el("svg:marker", {id: "arrow-" + cls, viewBox: "0 0 10 10", refX: 10, refY: 5,
                                markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"});
    m.append(el("svg:path", {d: "M0,0 L10,5 L0,10 z", fill: color}));
    defs.append(m);
  }
  svg.append(defs);
  const pos = layout(names, edges, width, height);
  const edgeLayer = el("svg:g", {id: "edges-layer"});
  const nodeLayer = el("svg:g", {id: "nodes-layer"});
  svg.append(edgeLayer, nodeLayer);
  for (const e of edges) {
    const a = pos.get(e.caller), b = pos.get(e.callee);
    if (!a || !b || e.caller === e.callee) continue;
    const key = e.caller + "->" + e.callee;
    const denied = recentlyDenied(e, now);
    if (e.requests_total > 0 || e.requests > 0) {
      const h = health(e);
      const c = curve(a, b, denied ? -30 : 0);
      const g = el("svg:g", {class: "edge " + h, "data-edge": key, "data-health": h});
      g.append(el("svg:path", {d: c.d, "marker-end": `url(#arrow-${h})`}));
      const label = e.requests ? `${fmtRps(e.rps)} rps · ${fmtPct(e.success_rate)} · p99 ${fmtMs(e.p99_ms)}`
                               : "idle";
      g.append(el("svg:text", {x: c.lx, y: c.ly - 8, "text-anchor": "middle"}, label));
      g.append(el("svg:title", {}, `${key}\n${label}`));
      edgeLayer.append(g);
    }
    if (denied) {
      const c = curve(a, b, e.requests_total > 0 ? 30 : 0);
      const n = e.denied || e.denied_total;
      const g = el("svg:g", {class: "edge-denied", "data-edge": key, "data-denied": n});
      g.append(el("svg:path", {d: c.d, "marker-end": "url(#arrow-denied)"}));
      g.append(el("svg:text", {x: c.lx, y: c.ly + 16, "text-anchor": "middle"},
                  `${n} denied`));
      g.append(el("svg:title", {}, `${key}: ${n} denied`));
      edgeLayer.append(g);
    }
  }
  for (const n of names) {
    const p = pos.get(n);
    const kind = kinds.get(n) || "external";
    const s = stats.get(n);
    const g = el("svg:g", {class: "node " + kind, "data-service": n,
                           transform: `translate(${p.x},${p.y})`});
    g.append(el("svg:rect", {width: NODE_W, height: NODE_H, rx: 8, ry: 8}));
    g.append(el("svg:text", {x: 10, y: 19}, (kind === "gateway" ? "⇢ " : "") + n));
    const sub = s && s.requests ? `${fmtRps(s.rps)} rps · ${fmtPct(s.success_rate)}`
              : kind === "gateway" ? "edge gateway" : kind === "external" ? "outside the mesh" : "no inbound traffic";
    g.append(el("svg:text", {x: 10, y: 36, class: "sub"}, sub));
    nodeLayer.append(g);
  }
}

function fillTable(id, rows, render, emptyText) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", {colspan: document.querySelectorAll(`#${id} th`).length, class: "empty"}, emptyText));
    body.append(tr);
    return;
  }
  for (const r of rows) {
    const tr = el("tr");
    for (const cell of render(r)) {
      const td = typeof cell === "object" && cell !== null && !(cell instanceof Node)
        ? el("td", {class: cell.cls || ""}, cell.text) : el("td");
      if (cell instanceof Node) td.append(cell);
      else if (typeof cell !== "object" || cell === null) td.textContent = cell === null ? "–" : cell;
      tr.append(td);
    }
    body.append(tr);
  }
}

function pill(text, cls, title) {
  const s = el("span", {class: "pill " + cls, title: title || ""}, text);
  return s;
}

function render(data) {
  const now = Date.now() / 1000;
  const {services, edges, proxies, denials, window, ca} = data;
  document.getElementById("window").textContent = `(last ${window}s)`;
  drawGraph(document.getElementById("graph"), services, edges, now);
  const rps = edges.reduce((a, e) => a + e.rps, 0);
  const connected = proxies.filter(p => p.connected).length;
  const recentDenied = edges.reduce((a, e) => a + e.denied, 0);
  const summary = document.getElementById("summary");
  summary.replaceChildren();
  const active = (ca || []).filter(c => c.status === "active");
  const caExp = active.length ? fmtIn(Math.min(...active.map(c => c.not_after)), now) : {text: "–", cls: ""};
  for (const [v, label, cls] of [[services.length, "services"], [`${connected}/${proxies.length}`, "proxies connected"],
                                 [fmtRps(rps), "requests/s"], [recentDenied, "denied (window)"],
                                 [caExp.text, "mesh CA expires", caExp.cls]]) {
    const d = el("div", {id: "summary-" + label.split(" ")[0]});
    d.append(el("b", {class: cls || ""}, String(v)), el("span", {}, label));
    summary.append(d);
  }
  fillTable("edges", edges, e => [
    e.caller, e.callee, {text: fmtRps(e.rps), cls: "n"},
    {text: fmtPct(e.success_rate), cls: "n " + (health(e) === "bad" ? "bad-text" : health(e) === "warn" ? "warn-text" : "")},
    {text: fmtMs(e.p50_ms), cls: "n"}, {text: fmtMs(e.p90_ms), cls: "n"}, {text: fmtMs(e.p99_ms), cls: "n"},
    {text: `${e.denied} (${e.denied_total})`, cls: "n" + (e.denied ? " bad-text" : "")},
    {text: String(e.tls_failures_total), cls: "n" + (e.tls_failures_total ? " bad-text" : "")},
    {text: String(e.requests_total), cls: "n"},
  ], "No traffic yet.");
  fillTable("proxies", proxies, p => {
    const types = el("span");
    for (const t of ["cds", "eds", "sds", "lds", "rds"]) {
      const st = (p.types || {})[t];
      if (st) types.append(pill(`${t} ${st.state}`, st.state, st.nack_detail || ""));
    }
    const exp = fmtIn(p.cert_expiry, now);
    return [p.proxy, p.kind || "–", p.service || "–",
            pill(p.connected ? "connected" : "disconnected", p.connected ? "up" : "down"),
            types, pill(p.stats_connected ? "reporting" : "silent", p.stats_connected ? "up" : "none"),
            {text: exp.text, cls: exp.cls}];
  }, "No proxies.");
  fillTable("denials", denials.slice(0, 50), d => [
    fmtTime(d.at), d.caller, d.callee, `${d.method || ""} ${d.path || ""}`.trim() || "–",
    {text: d.status === null ? "–" : String(d.status), cls: "n"},
    d.reason && d.reason.startsWith("audit:") ? pill("audit " + (d.rule_id || ""), "pending", "not enforced")
      : {text: d.rule_id || "(default deny)", cls: d.rule_id ? "" : "warn-text"},
    d.reason,
  ], "No denied attempts.");
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [s, e, p, d] = await Promise.all([
      getJSON("/api/services"), getJSON("/api/edges"), getJSON("/api/proxies"),
      getJSON("/api/denials?limit=50"),
    ]);
    render({services: s.services, edges: e.edges, proxies: p.proxies, denials: d.denials,
            window: e.window_seconds, ca: p.ca});
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "status";
    document.body.dataset.loaded = "1";
  } catch (err) {
    status.textContent = "cannot reach the control plane: " + err.message;
    status.className = "status error";
  }
}

refresh();
setInterval(refresh, POLL_MS);
