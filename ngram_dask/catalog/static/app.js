// The page of `ngram-dask serve`: plain DOM and fetch against the JSON API, no libraries.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { info: null, table: null, sort: null, offset: 0, limit: 50, total: 0, filters: {}, task: null };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

const fmtInt = (x) => (x === null || x === undefined ? "" : Number(x).toLocaleString("en-US"));
function fmtPct(p) {
  if (p === null || p === undefined) return "";
  if (p === 0 || p >= 0.0005) return (100 * p).toFixed(1) + "%";
  return "<0.1%";
}
function fmtNum(x, type) {
  if (x === null || x === undefined) return "";
  if (typeof x !== "number") return Array.isArray(x) ? JSON.stringify(x) : String(x);
  if (/INT/.test(type || "")) return fmtInt(x);
  return Math.abs(x) >= 1000 ? x.toFixed(1) : Number(x.toPrecision(4)).toString();
}
// Whitespace drawn as marks, so ' tuple' and 'tuple' differ at a glance, four spaces are four
// dots (not an empty box) and a token stays one box on one line; the exact string is on hover.
const WS_MARKS = { " ": "·", "\t": "⇥", "\n": "↵", "\r": "␍", "\u00a0": "⍽", "\u3000": "□" };
const WS_RE = /[ \t\n\r\u00a0\u3000]/;

function visible(text) {
  if (text === "") return [el("span", { class: "ws" }, "∅")];
  const out = [];
  let plain = "";
  for (const ch of text) {
    if (WS_RE.test(ch)) {
      if (plain) { out.push(plain); plain = ""; }
      out.push(el("span", { class: "ws" }, WS_MARKS[ch]));
    } else plain += ch;
  }
  if (plain) out.push(plain);
  return out;
}

function tok(text, id, cls) {
  const title = (id === undefined ? "" : "id " + id + ": ") + JSON.stringify(text);
  return el("span", { class: "tok" + (cls ? " " + cls : ""), title, "data-text": text }, visible(text));
}

async function api(path, params) {
  const url = path + (params ? "?" + params.toString() : "");
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// --- completions ------------------------------------------------------------------------

let completeSeq = 0;
let completeTimer = null;

function scheduleComplete() {
  clearTimeout(completeTimer);
  completeTimer = setTimeout(complete, 120);
}

async function complete() {
  const text = $("#prompt").value;
  saveView();
  const seq = ++completeSeq;
  const tokens = $("#tokens"), out = $("#completions");
  if (text === "") { tokens.replaceChildren(); out.replaceChildren(); return; }
  let res;
  try {
    res = await api("/api/next", new URLSearchParams({ text, top: "10" }));
  } catch (e) {
    if (seq === completeSeq) { tokens.replaceChildren(); out.replaceChildren(el("div", { class: "error" }, e.message)); }
    return;
  }
  if (seq !== completeSeq) return; // an answer to an older keystroke
  tokens.replaceChildren(...res.tokens.map((t) => tok(t.token, t.id)),
    el("span", { class: "muted" }, ` ${res.tokens.length} token(s)`));
  out.replaceChildren(...res.lookups.map(renderLookup));
}

function renderLookup(lk) {
  const box = el("div", { class: "lookup", "data-table": lk.table });
  if (lk.context === null) {
    box.append(el("h3", {}, `${lk.table}: `, el("span", { class: "muted" }, lk.note)));
    return box;
  }
  box.append(el("h3", {}, `${lk.table} after `, ...lk.context_tokens.map((t, i) => tok(t, lk.context[i])),
    el("span", { class: "muted" }, ` prefix count ${fmtInt(lk.prefix_count)}`)));
  if (!lk.completions.length) { box.append(el("div", { class: "muted" }, lk.note)); return box; }
  const body = lk.completions.map((c) => el("tr", {
    "data-id": c.id, title: "append to the prompt",
    onclick: () => { $("#prompt").value += c.token; complete(); },
  }, el("td", {}, c.rank), el("td", { class: "text" }, tok(c.token, c.id)),
    el("td", { class: "text" }, el("span", { class: "bar", style: `width:${Math.max(1, Math.round(90 * c.probability))}px` }),
      el("span", { class: "share" }, fmtPct(c.probability))),
    el("td", { class: "count" }, fmtInt(c.count))));
  box.append(el("table", { "data-table": lk.table },
    el("thead", {}, el("tr", {}, el("th", {}, "rank"), el("th", { class: "text" }, "next"),
      el("th", { class: "text" }, "share"), el("th", {}, "count"))),
    el("tbody", {}, body)));
  return box;
}

// --- task browser -------------------------------------------------------------------------

function tableInfo(name) { return state.info.tables.find((t) => t.name === (name || state.table)); }

function filterColumns(t) {
  const skip = /^(id\d+|batch|sample|start|short_max_id|long_max_id)$/;
  return t.columns.filter((c) => c.numeric && !skip.test(c.name)).map((c) => c.name);
}

function shownColumns(t) {
  // token0..N are in seq (drawn with its token boundaries)
  return t.columns.filter((c) => !(t.kind === "top" && /^token\d+$/.test(c.name)));
}

function setupTable(name) {
  state.table = name;
  state.sort = null;
  state.offset = 0;
  const t = tableInfo();
  $("#ranges").replaceChildren(...filterColumns(t).map((c) => el("span", { class: "range" }, `${c} `,
    el("input", { type: "number", step: "any", placeholder: "min", "data-col": c, "data-end": "min", name: "min_" + c }),
    "–",
    el("input", { type: "number", step: "any", placeholder: "max", "data-col": c, "data-end": "max", name: "max_" + c }))));
  $("#contains").value = "";
  $("#contains").disabled = !t.text_column;
  readFilters();
}

function readFilters() {
  const f = {};
  const contains = $("#contains").value;
  if (contains) f.contains = contains;
  if ($("#no-special").checked) f.no_special = "1";
  for (const input of document.querySelectorAll("#ranges input")) {
    if (input.value !== "") f[`${input.dataset.end}_${input.dataset.col}`] = input.value;
  }
  state.filters = f;
}

function selectionParams() {
  const p = new URLSearchParams({ table: state.table, ...state.filters });
  if (state.sort) p.set("sort", state.sort);
  return p;
}

let pageSeq = 0;

async function loadPage() {
  const p = selectionParams();
  p.set("limit", String(state.limit));
  p.set("offset", String(state.offset));
  const seq = ++pageSeq;
  let res;
  try {
    res = await api("/api/rows", p);
  } catch (e) {
    if (seq === pageSeq) $("#error").textContent = e.message;
    return;
  }
  if (seq !== pageSeq) return; // answers can arrive out of order: only the latest request counts
  $("#error").textContent = "";
  state.total = res.total;
  state.sort = res.sort;
  renderGrid(res);
  const last = Math.min(res.offset + res.rows.length, res.total);
  $("#pageinfo").textContent = res.total ? `rows ${fmtInt(res.offset + 1)}–${fmtInt(last)} of ${fmtInt(res.total)}` : "no rows match";
  $("#prev").disabled = res.offset === 0;
  $("#next").disabled = last >= res.total;
  const sel = selectionParams();
  sel.set("format", "csv"); $("#dl-csv").href = "/api/download?" + sel;
  sel.set("format", "parquet"); $("#dl-parquet").href = "/api/download?" + sel;
  saveView();
}

function sortState(col) {
  const first = (state.sort || "").split(",")[0];
  if (first === col) return "asc";
  if (first === "-" + col) return "desc";
  return null;
}

function renderGrid(res) {
  const t = tableInfo(res.table);
  const cols = shownColumns(t);
  const head = el("tr", {}, cols.map((c) => {
    const s = sortState(c.name);
    return el("th", {
      class: [c.sortable ? "sortable" : "", s ? "sorted-" + s : "", c.numeric ? "" : "text"].join(" "),
      "data-col": c.name, title: c.sortable ? "sort by " + c.name : "",
      onclick: () => {
        if (!c.sortable) return;
        // numbers sort high first on the first click: that is what one looks for
        state.sort = s === "desc" ? c.name : s === "asc" ? "-" + c.name : (c.numeric ? "-" : "") + c.name;
        state.offset = 0;
        loadPage();
      },
    }, c.name);
  }));
  const body = res.rows.map((row) => el("tr", { onclick: () => openTask(res.table, row) },
    cols.map((c) => {
      if (c.name === "seq" && t.kind === "top") {
        const n = t.columns.filter((x) => /^token\d+$/.test(x.name)).length;
        const toks = [];
        for (let j = 0; j < n; j++) toks.push(tok(row["token" + j], row["id" + j]));
        return el("td", { class: "text seq" }, toks);
      }
      return el("td", { class: c.numeric ? "" : "text", "data-col": c.name }, fmtNum(row[c.name], c.type));
    })));
  $("#grid thead").replaceChildren(head);
  $("#grid tbody").replaceChildren(...body);
}

// --- one task -----------------------------------------------------------------------------

let taskSeq = 0;

// The task view opens beside the table where the window is wide enough (style.css), in
// view whatever row was clicked; below the table on a narrow window, scrolled to.
function showTaskSection() {
  $("#task-section").hidden = false;
  $("#workspace").classList.add("with-task");
  const top = $("#task-section").getBoundingClientRect().top;
  if (top > window.innerHeight * 0.6 || top < 0) $("#task-section").scrollIntoView({ block: "start" });
}

async function openTask(table, row) {
  const t = tableInfo(table);
  const box = $("#task");
  if (t.kind !== "top") {
    box.replaceChildren(el("dl", { class: "kv" }, Object.entries(row).flatMap(([k, v]) =>
      [el("dt", {}, k), el("dd", {}, fmtNum(v, (t.columns.find((c) => c.name === k) || {}).type))])));
    showTaskSection();
    return;
  }
  const seq = ++taskSeq;
  state.task = t.key.map((k) => row[k]);
  saveView();
  let res;
  try {
    res = await api("/api/task", new URLSearchParams({ table, ids: t.key.map((k) => row[k]).join(",") }));
  } catch (e) {
    if (seq === taskSeq) box.replaceChildren(el("div", { class: "error" }, e.message));
    return;
  }
  if (seq !== taskSeq) return; // another row was clicked meanwhile
  const r = res.row;
  const expected = r["id" + (res.n - 1)];
  const followers = el("table", { id: "followers" },
    el("thead", {}, el("tr", {}, el("th", {}, "rank"), el("th", { class: "text" }, "next"),
      el("th", { class: "text" }, "share"), el("th", {}, "count"))),
    el("tbody", {}, res.followers.map((f) => el("tr", { class: f.id === expected ? "expected" : "" },
      el("td", {}, f.rank), el("td", { class: "text" }, tok(f.token, f.id)),
      el("td", { class: "text" }, el("span", { class: "bar", style: `width:${Math.max(1, Math.round(120 * f.share))}px` }),
        el("span", { class: "share" }, fmtPct(f.share))),
      el("td", {}, fmtInt(f.count))))));
  const facts = el("dl", { class: "kv" },
    el("dt", {}, "context"), el("dd", {}, res.context_tokens.map((s, i) => tok(s, res.context[i]))),
    el("dt", {}, "most frequent next"), el("dd", {}, tok(r["token" + (res.n - 1)], expected)),
    el("dt", {}, "frac_max"), el("dd", {}, fmtNum(r.frac_max)),
    el("dt", {}, "sum_count"), el("dd", {}, fmtInt(r.sum_count)),
    el("dt", {}, "followers in"), el("dd", {}, `${res.followers_table} (prefix count ${fmtInt(res.prefix_count)})`));
  const parts = [el("div", {}, facts), el("div", {}, el("h3", {}, "follower distribution (exact)"), followers)];
  if (res.models.length) parts.push(el("div", { id: "models" }, el("h3", {}, "p(expected) against model size"), modelChart(res.models)));
  const examples = el("div", { id: "examples" }, el("h3", {}, "examples from the corpus"),
    el("div", { class: "muted" }, "loading…"));
  const curves = el("div", { id: "curves" });
  box.replaceChildren(el("div", { class: "task-grid" }, parts), curves, examples);
  showTaskSection();
  loadCurve(res.context, curves, () => seq === taskSeq);
  loadExamples(res.context, examples, seq);
}

async function loadExamples(ids, box, seq) {
  let res;
  try {
    res = await api("/api/contexts", new URLSearchParams({ ids: ids.join(","), limit: "50" }));
  } catch (e) {
    if (seq === taskSeq) box.replaceChildren(el("h3", {}, "examples from the corpus"), el("div", { class: "error" }, e.message));
    return;
  }
  if (seq !== taskSeq) return;
  const head = el("h3", {}, "examples from the corpus",
    el("span", { class: "muted" }, res.occurrences === null ? "" :
      ` ${res.examples.length} of ${fmtInt(res.occurrences)} occurrences, chosen at random`));
  if (!res.examples.length) {
    box.replaceChildren(head, el("p", { class: "note", id: "no-examples" }, res.note || "no examples"));
    return;
  }
  const rows = res.examples.map((ex) => el("li", { class: "example " + (ex.matches ? "match" : "miss"), "data-rank": ex.rank },
    // prose: the text around reads as text; whitespace marks only in the prompt and its next token
    el("div", { class: "context" }, ex.tokens.map((t) => t.role === "prompt" || t.role === "next"
      ? tok(t.token, t.id, t.role) : el("span", { class: "plain " + t.role, title: "id " + t.id }, t.token))),
    el("div", { class: "where muted" },
      ex.matches ? "next = expected " : el("span", { class: "differs" }, "next differs: "),
      tok(ex.actual.token, ex.actual.id, "next"),
      ex.matches ? "" : [" (expected ", tok(ex.expected.token, ex.expected.id, "expected"), ")"],
      ` · ${ex.shard_file}, sample ${fmtInt(ex.sample)}, token ${fmtInt(ex.pos)}`)));
  box.replaceChildren(head, el("ol", { class: "examples" }, rows));
}

function modelChart(models) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 420, H = 220, L = 44, R = 14, T = 12, B = 40;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("role", "img");
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  const sized = models.filter((m) => m.size);
  const xs = sized.length >= 2 ? sized.map((m) => Math.log10(m.size)) : models.map((_, i) => i);
  const pts = (sized.length >= 2 ? sized : models);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
  const X = (v) => L + (W - L - R) * (v - x0) / (x1 - x0);
  const Y = (p) => T + (H - T - B) * (1 - p);
  add("line", { x1: L, y1: Y(0), x2: W - R, y2: Y(0), stroke: "#999" });
  add("line", { x1: L, y1: Y(0), x2: L, y2: Y(1), stroke: "#999" });
  for (const p of [0, 0.5, 1]) {
    add("text", { x: L - 6, y: Y(p) + 4, "text-anchor": "end" }, p.toFixed(1));
    add("line", { x1: L, y1: Y(p), x2: W - R, y2: Y(p), stroke: "#eee" });
  }
  let path = "";
  pts.forEach((m, i) => {
    const x = X(xs[i]), p = m.p === null ? 0 : m.p;
    path += (i ? "L" : "M") + x.toFixed(1) + "," + Y(p).toFixed(1);
    add("circle", { cx: x, cy: Y(p), r: 4, fill: "#2f6fb3" }).append(
      Object.assign(document.createElementNS(NS, "title"), { textContent: `${m.model}: p = ${m.p}` }));
    const label = m.size ? (m.size >= 1e9 ? m.size / 1e9 + "b" : m.size / 1e6 + "m") : m.column;
    add("text", { x, y: H - B + 16, "text-anchor": "middle" }, label);
  });
  add("path", { d: path, fill: "none", stroke: "#2f6fb3", "stroke-width": 1.5 });
  add("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, sized.length >= 2 ? "model size (parameters, log scale)" : "model");
  return svg;
}

// --- wiring -----------------------------------------------------------------------------

async function main() {
  state.info = await api("/api/info");
  const info = state.info;
  $("#dbinfo").textContent = `${info.db} · tokenizer ${info.tokenizer} · n-grams ${info.ngrams.join(", ")}`;
  $("#prompt").addEventListener("input", scheduleComplete);
  const sel = $("#table");
  sel.replaceChildren(...info.tables.map((t) => el("option", { value: t.name }, `${t.name} (${fmtInt(t.rows)} rows)`)));
  if (!info.tables.length) {
    $("#browse-section").replaceChildren(el("h2", {}, "Tasks"), el("p", { class: "muted" }, "this catalog has no top or scan tables"));
    return;
  }
  sel.addEventListener("change", () => { setupTable(sel.value); loadPage(); });
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); readFilters(); state.offset = 0; loadPage(); });
  $("#reset").addEventListener("click", () => { setupTable(state.table); loadPage(); });
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadPage(); });
  $("#next").addEventListener("click", () => { state.offset += state.limit; loadPage(); });
  $("#pagesize").addEventListener("change", () => { state.limit = Number($("#pagesize").value); state.offset = 0; loadPage(); });
  $("#close-task").addEventListener("click", () => {
    $("#task-section").hidden = true;
    $("#workspace").classList.remove("with-task");
    state.task = null;
    saveView();
  });
  state.limit = Number($("#pagesize").value);
  const task = restoreView(info.tables[0].name);
  await loadPage();
  if (task && tableInfo().kind === "top" && task.length === tableInfo().key.length) {
    await openTask(state.table, Object.fromEntries(tableInfo().key.map((k, i) => [k, task[i]])));
  }
  document.body.dataset.ready = "1";
}

main().catch((e) => { $("#error").textContent = e.message; });
