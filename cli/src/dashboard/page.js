// Draws GET /api/graph as inline SVG and redraws it every second. No
// libraries: the page must work with no network beyond its own server.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 230, NODE_H = 66, COL_GAP = 540, ROW_GAP = 104, PAD = 30;

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v, digits, unit) {
  return v === null || v === undefined ? "–" : v.toFixed(digits) + unit;
}

// Columns by call depth: callers left, the services they call to the right.
function layout(graph) {
  const incoming = new Map(graph.nodes.map(n => [n.service, []]));
  for (const e of graph.edges) incoming.get(e.to)?.push(e.from);
  const depth = new Map();
  const visit = (s, seen) => {
    if (depth.has(s)) return depth.get(s);
    if (seen.has(s)) return 0;
    seen.add(s);
    const callers = (incoming.get(s) || []).filter(c => c !== s);
    const d = callers.length ? 1 + Math.max(...callers.map(c => visit(c, seen))) : 0;
    depth.set(s, d);
    return d;
  };
  graph.nodes.forEach(n => visit(n.service, new Set()));
  const columns = [];
  for (const n of graph.nodes) {
    const d = depth.get(n.service);
    (columns[d] = columns[d] || []).push(n);
  }
  const rows = Math.max(1, ...columns.map(c => (c ? c.length : 0)));
  const height = PAD * 2 + rows * NODE_H + (rows - 1) * (ROW_GAP - NODE_H) + 40;
  const pos = new Map();
  columns.forEach((col, c) => {
    if (!col) return;
    const used = col.length * NODE_H + (col.length - 1) * (ROW_GAP - NODE_H);
    const top = (height - used) / 2;
    col.forEach((n, r) => pos.set(n.service, { x: PAD + c * COL_GAP, y: top + r * ROW_GAP }));
  });
  const width = PAD * 2 + (columns.length - 1) * COL_GAP + NODE_W;
  return { pos, width, height };
}

function lock(x, y) {
  const g = el("g", { class: "lock", transform: `translate(${x - 6},${y - 7})` });
  g.append(el("title", {}, "mutual TLS"));
  g.append(el("path", { d: "M3 6 V4 a3 3 0 0 1 6 0 V6" }));
  g.append(el("rect", { x: 1, y: 6, width: 10, height: 8, rx: 1.5 }));
  return g;
}

// Out of the caller, a short bend to the callee's row, then straight in:
// the labels sit on the straight part, above the line, one edge per row.
function drawEdge(svg, e, from, to) {
  const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2;
  const x2 = to.x - 8, y2 = to.y + NODE_H / 2;
  const bend = 70;
  const g = el("g", { class: "edge", "data-from": e.from, "data-to": e.to, "data-mtls": e.mtls });
  g.append(el("path", {
    class: `edge-line ${e.mtls}`,
    d: `M${x1},${y1} C${x1 + bend / 2},${y1} ${x1 + bend / 2},${y2} ${x1 + bend},${y2} L${x2},${y2}`,
    "marker-end": "url(#arrow)",
  }));
  const latency = e.p99_ms !== null ? `p99 ${fmt(e.p99_ms, 1, " ms")}` : `avg ${fmt(e.mean_ms, 1, " ms")}`;
  const label = `${fmt(e.requests_per_second, 1, "")} rps · ${fmt(e.success_percent, 1, " %")} · ${latency}`;
  const lines = [["label", label]];
  if (e.split.length > 1) {
    lines.push(["split", e.split.map(s => `${s.subset} ${s.percent.toFixed(1)} %`).join(" · ")]);
  }
  const lx = x1 + bend + 24, ly = y2 - 8 - 15 * (lines.length - 1);
  lines.forEach(([cls, text], i) => g.append(el("text", { class: cls, x: lx, y: ly + i * 15 }, text)));
  if (e.mtls === "mtls") g.append(lock(lx - 12, ly - 4));
  g.append(el("title", {}, `${e.from} → ${e.to}: ${Math.round(e.requests)} requests, ${e.mtls}`));
  svg.append(g);
}

function drawNode(svg, n, p, calls) {
  const serving = n.workloads.length > 0;
  const cls = !serving ? "node idle" : calls && n.success_percent === null ? "node client" : "node";
  const g = el("g", { class: cls, "data-service": n.service, transform: `translate(${p.x},${p.y})` });
  g.append(el("rect", { width: NODE_W, height: NODE_H, rx: 8 }));
  g.append(el("text", { class: "name", x: 12, y: 20 }, n.service));
  g.append(el("text", { class: "facts", x: 12, y: 38 },
    `${fmt(n.requests_per_second, 1, "")} rps · ${fmt(n.success_percent, 1, " %")} · p99 ${fmt(n.p99_ms, 1, " ms")}`));
  const versions = n.workloads.map(w => w.version || w.name).join(", ");
  g.append(el("text", { class: "versions", x: 12, y: 55 }, serving ? versions : "not scraped"));
  if (serving && n.workloads.every(w => w.has_certificate)) g.append(lock(NODE_W - 16, 16));
  const ids = n.workloads.map(w => `${w.name}: ${w.identity || "identity not known"}`).join("\n");
  g.append(el("title", {}, ids || n.service));
  svg.append(g);
}

function render(doc) {
  const svg = document.getElementById("graph");
  const graph = doc.graph;
  const { pos, width, height } = layout(graph);
  svg.replaceChildren();
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#4a5263" }));
  defs.append(marker);
  svg.append(defs);
  const callers = new Set(graph.edges.map(e => e.from));
  for (const e of graph.edges) {
    if (pos.has(e.from) && pos.has(e.to)) drawEdge(svg, e, pos.get(e.from), pos.get(e.to));
  }
  for (const n of graph.nodes) drawNode(svg, n, pos.get(n.service), callers.has(n.service));
  const when = new Date(doc.generated_unix_ms).toLocaleTimeString();
  document.getElementById("status").textContent =
    `source: ${doc.source} · ${graph.nodes.length} services, ${graph.edges.length} edges · ` +
    `rates over ${graph.window_seconds.toFixed(1)} s · updated ${when}`;
  const errors = document.getElementById("errors");
  errors.replaceChildren(...doc.errors.map(m => Object.assign(document.createElement("li"), { textContent: m })));
}

async function refresh() {
  try {
    const resp = await fetch("/api/graph", { cache: "no-store" });
    if (!resp.ok) throw new Error(`GET /api/graph answered ${resp.status}`);
    render(await resp.json());
  } catch (err) {
    document.getElementById("status").textContent = `not updated: ${err.message}`;
  }
}

render(JSON.parse(document.getElementById("initial").textContent));
setInterval(refresh, 1000);
