"use strict";
// A task's curves across training (/api/curve): each model's p against the training step
// (log x; step0 drawn at 1), a mark at its learned_step, and, when the exposure table
// exists, p against how often the task had been seen by each step. Uses app.js's el/api.

const CURVE_COLORS = ["#2f6fb3", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b7950b"];

function curveChart(models, xOf, xLabel, id, threshold) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 460, H = 240, L = 44, R = 14, T = 12, B = 40;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("role", "img");
  svg.setAttribute("id", id);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  const series = models.map((m) => m.points.map((p) => [xOf(p), p]).filter(([x]) => x !== null));
  const xs = series.flat().map(([x]) => Math.log10(Math.max(x, 1)));
  const x0 = Math.min(0, ...xs), x1 = Math.max(x0 + 1, ...xs);
  const X = (v) => L + (W - L - R) * (Math.log10(Math.max(v, 1)) - x0) / (x1 - x0);
  const Y = (p) => T + (H - T - B) * (1 - p);
  add("line", { x1: L, y1: Y(0), x2: W - R, y2: Y(0), stroke: "#999" });
  add("line", { x1: L, y1: Y(0), x2: L, y2: Y(1), stroke: "#999" });
  for (const p of [0, 0.5, 1]) add("text", { x: L - 6, y: Y(p) + 4, "text-anchor": "end" }, p.toFixed(1));
  for (let e = Math.ceil(x0); e <= Math.floor(x1); e++) {
    add("text", { x: X(10 ** e), y: H - B + 16, "text-anchor": "middle" }, e === 0 ? "1" : "1e" + e);
  }
  if (threshold !== null && threshold !== undefined) {
    add("line", { x1: L, y1: Y(threshold), x2: W - R, y2: Y(threshold), stroke: "#bbb", "stroke-dasharray": "4 3" });
  }
  series.forEach((pts, i) => {
    const color = CURVE_COLORS[i % CURVE_COLORS.length];
    let d = "";
    pts.forEach(([x, p], k) => {
      d += (k ? "L" : "M") + X(x).toFixed(1) + "," + Y(p.p).toFixed(1);
      add("circle", { cx: X(x), cy: Y(p.p), r: 3, fill: color, class: "point" }).append(
        Object.assign(document.createElementNS(NS, "title"),
          { textContent: `${models[i].model} ${p.revision}: p = ${p.p}` + (p.task_seen === null ? "" : `, seen ${p.task_seen}`) }));
    });
    add("path", { d, fill: "none", stroke: color, "stroke-width": 1.5, class: "curve" });
    const lr = models[i].learning;
    if (lr && lr.learned_step !== null) {
      const at = pts.find(([, p]) => p.step === lr.learned_step);
      if (at) add("circle", { cx: X(at[0]), cy: Y(at[1].p), r: 6, fill: "none", stroke: color, "stroke-width": 2, class: "learned" });
    }
    add("text", { x: W - R, y: T + 12 + 13 * i, "text-anchor": "end", fill: color }, models[i].model);
  });
  add("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, xLabel);
  return svg;
}

async function loadCurve(ids, box, current) {
  let res;
  try {
    res = await api("/api/curve", new URLSearchParams({ ids: ids.join(",") }));
  } catch (e) {
    if (current()) box.replaceChildren(el("div", { class: "error" }, e.message));
    return;
  }
  if (!current()) return;
  if (!res.models.length) {
    box.replaceChildren();
    return;
  }
  const threshold = res.models.find((m) => m.threshold !== null)?.threshold ?? null;
  const learned = res.models.map((m) => m.learning ? `${m.model}: ` + (m.learning.learned_step === null ? "not learned"
    : `learned at step ${fmtInt(m.learning.learned_step)}`) + (m.learning.forgotten ? " (forgotten)" : "") : null).filter(Boolean);
  const parts = [el("h3", {}, "p(expected) across training"),
    el("p", { class: "muted" }, learned.join(" · ")),
    curveChart(res.models, (p) => p.step, "training step (log scale; circles: learned_step)", "curve-step", threshold)];
  if (res.exposure.length) {
    parts.push(el("h3", {}, "p(expected) against exposures"),
      curveChart(res.models, (p) => p.task_seen, "times the task had been seen (log scale)", "curve-exposure", threshold));
  }
  box.replaceChildren(...parts);
}
