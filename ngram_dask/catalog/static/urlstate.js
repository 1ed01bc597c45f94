"use strict";
// Every view has its URL: the query string holds the prompt, the table, its filters, the
// sort, the page and the open task, so a copied link opens the same view again. Uses
// app.js's state and helpers; app.js calls saveView() when the view changes.

function viewParams() {
  const p = selectionParams();
  if (state.offset) p.set("offset", String(state.offset));
  if (state.limit !== 50) p.set("limit", String(state.limit));
  const prompt = $("#prompt").value;
  if (prompt) p.set("prompt", prompt);
  if (state.task) p.set("task", state.task.join(","));
  return p;
}

function saveView() {
  if (!state.info) return;
  const query = viewParams().toString();
  if (location.search.slice(1) !== query) history.replaceState(null, "", query ? "?" + query : location.pathname);
}

// The view of the page's URL, applied to the form; returns the open task's ids (or null).
function restoreView(defaultTable) {
  const q = new URLSearchParams(location.search);
  const table = state.info.tables.some((t) => t.name === q.get("table")) ? q.get("table") : defaultTable;
  $("#table").value = table;
  setupTable(table);
  if (q.get("contains") && !$("#contains").disabled) $("#contains").value = q.get("contains");
  $("#no-special").checked = q.get("no_special") === "1";
  for (const input of document.querySelectorAll("#ranges input")) {
    const v = q.get(input.name);
    if (v !== null) input.value = v;
  }
  readFilters();
  if (q.get("sort")) state.sort = q.get("sort");
  const limit = Number(q.get("limit"));
  if ([25, 50, 100, 500].includes(limit)) { state.limit = limit; $("#pagesize").value = String(limit); }
  const offset = Number(q.get("offset"));
  if (Number.isInteger(offset) && offset > 0) state.offset = offset;
  if (q.get("prompt")) { $("#prompt").value = q.get("prompt"); complete(); }
  const task = (q.get("task") || "").split(",").filter((s) => /^\d+$/.test(s)).map(Number);
  return task.length ? task : null;
}
