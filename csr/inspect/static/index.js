"use strict";
// Run page (index.html): the summary table and plot, then one iteration's prompts, sortable and filterable.

(function () {
  const run = CSR.data.run, main = document.getElementById("main");
  const state = Object.assign({sort: "", dir: "asc", q: "", status: "", gt: "", min: "", max: ""}, CSR.hash());
  CSR.header("CSR run");

  const c = run.config;
  const summaryCols = run.summary.length ? Object.keys(run.summary[0]) : [];
  main.innerHTML = `
    <p class="small">λ = ${CSR.num(c.lam)} · calibration ${CSR.esc(c.calibration)} · pruned by ${CSR.esc(c.prune_by)}
      · pair filters ${CSR.esc((c.filters || []).join(", ") || "none")} · model ${CSR.esc(c.model)}</p>
    <section><h2>Summary</h2>
      ${selected(run.selection)}
      <div id="summary"></div>
      ${run.summary_png ? '<img class="plot" src="img/summary.png" alt="summary plot">' : ""}
    </section>
    <section><h2>Prompts</h2>
      <div class="tabs" id="tabs"></div>
      <div id="istats" class="small"></div>
      <div class="filters" id="filters"></div>
      <div id="count" class="small muted"></div>
      <div id="prompts"></div>
    </section>`;
  // The iteration the run keeps (eval.select): chosen on its selection split, reported on eval's split.
  function selected(s) {
    if (!s) return "";
    const by = `${CSR.esc(s.split)} ${CSR.esc(s.metric)} ${s.mode === "min" ? "lowest" : "highest"}: ${CSR.num(s.value)}`;
    return `<p><strong>Selected: iteration ${CSR.esc(s.iteration)}</strong> (${by}; checkpoint
      <code>${CSR.esc(s.checkpoint)}</code>${s.stopped_early ? "; stopped early" : ""}). The other columns are each
      iteration's evaluation on ${CSR.esc(s.reported_split)}; the selected row is the reported one.</p>`;
  }
  const sumState = {sort: "", dir: "asc"};
  const drawSummary = () => CSR.table(document.getElementById("summary"),
    summaryCols.map(k => ({key: k, label: k})), run.summary, sumState, drawSummary);
  drawSummary();

  const its = run.iterations.filter(it => it.prompts > 0);
  if (!its.length) {
    document.getElementById("prompts").innerHTML = '<p class="muted">No iteration has a search yet.</p>';
    CSR.ready();
    return;
  }
  if (!its.some(it => String(it.k) === state.it)) state.it = String(its[0].k);
  const tabs = document.getElementById("tabs");
  tabs.innerHTML = its.map(it => `<button data-k="${CSR.esc(it.k)}">Iteration ${CSR.esc(it.k)} <span class="muted">(${CSR.esc(it.prompts)})</span></button>`).join("");
  tabs.querySelectorAll("button").forEach(b => b.addEventListener("click", () => { state.it = b.dataset.k; show(); }));

  function columns(rows) {
    const cols = [
      {key: "id", label: "id", html: r => `<a href="${CSR.esc(r._href)}">${CSR.esc(r.id)}</a>`},
      {key: "prompt", label: "prompt", cls: "clip", html: r => CSR.esc(r.prompt)},
      {key: "nodes", label: "nodes", title: "sentences in the search tree (+ root)"},
      {key: "answers", label: "answers", title: "complete answers the search produced"},
      {key: "margin", label: "margin", title: "chosen score - rejected score (the pair rule's)"},
      {key: "chosen_score", label: "chosen score"},
      {key: "rejected_score", label: "rejected score"},
      {key: "chosen_r_i", label: "chosen R_I", title: "mean R_I over the chosen answer's sentences"},
      {key: "rejected_r_i", label: "rejected R_I", title: "mean R_I over the rejected answer's sentences"},
    ];
    if (run.ground_truth) {
      cols.push(
        {key: "chosen_chair_s", label: "chosen CHAIR_S", title: "1 if the chosen answer names an object not in the image"},
        {key: "rejected_chair_s", label: "rejected CHAIR_S"},
        {key: "halluc", label: "hallucinated (chosen | rejected)", value: r => (r.chosen_halluc || []).length - (r.rejected_halluc || []).length,
         html: r => r.skipped ? "" : `${CSR.halluc(r.chosen_halluc)} <span class="muted">|</span> ${CSR.halluc(r.rejected_halluc)}`});
    }
    cols.push({key: "skipped", label: "skipped", html: r => r.skipped ? `<span class="tag warn">${CSR.esc(r.skipped)}</span>` : ""});
    return cols;
  }

  const GT_FILTERS = {
    chosen: ["chosen hallucinates", r => r.chosen_chair_s === 1],
    rejected: ["rejected hallucinates", r => r.rejected_chair_s === 1],
    wrong: ["reward prefers the hallucination (chosen yes, rejected no)", r => r.chosen_chair_s === 1 && r.rejected_chair_s === 0],
    right: ["reward avoids it (rejected yes, chosen no)", r => r.chosen_chair_s === 0 && r.rejected_chair_s === 1],
    neither: ["neither hallucinates", r => r.chosen_chair_s === 0 && r.rejected_chair_s === 0],
  };

  function drawFilters(rows) {
    const reasons = [...new Set(rows.map(r => r.skipped).filter(Boolean))].sort();
    const opt = (v, label, cur) => `<option value="${CSR.esc(v)}"${v === cur ? " selected" : ""}>${CSR.esc(label)}</option>`;
    document.getElementById("filters").innerHTML = `
      <input id="f-q" type="search" placeholder="id or prompt contains…" value="${CSR.esc(state.q)}">
      <select id="f-status">${opt("", "all prompts", state.status)}${opt("paired", "with a pair", state.status)}
        ${opt("skipped", "skipped (any reason)", state.status)}${reasons.map(r => opt(r, "skipped: " + r, state.status)).join("")}</select>
      ${run.ground_truth ? `<select id="f-gt">${opt("", "any CHAIR", state.gt)}${Object.entries(GT_FILTERS).map(([k, [l]]) => opt(k, l, state.gt)).join("")}</select>` : ""}
      <label>margin ≥ <input id="f-min" type="number" step="any" value="${CSR.esc(state.min)}"></label>
      <label>≤ <input id="f-max" type="number" step="any" value="${CSR.esc(state.max)}"></label>`;
    for (const [id, key] of [["f-q", "q"], ["f-status", "status"], ["f-gt", "gt"], ["f-min", "min"], ["f-max", "max"]]) {
      const el = document.getElementById(id);
      if (el) el.addEventListener("input", () => { state[key] = el.value; drawTable(rows); });
    }
  }

  function keep(r) {
    const q = state.q.toLowerCase();
    if (q && !r.id.toLowerCase().includes(q) && !r.prompt.toLowerCase().includes(q)) return false;
    if (state.status === "paired" && r.skipped) return false;
    if (state.status === "skipped" && !r.skipped) return false;
    if (state.status && !["paired", "skipped"].includes(state.status) && r.skipped !== state.status) return false;
    if (state.gt && GT_FILTERS[state.gt] && !GT_FILTERS[state.gt][1](r)) return false;
    if (state.min !== "" && !(r.margin >= Number(state.min))) return false;
    if (state.max !== "" && !(r.margin <= Number(state.max))) return false;
    return true;
  }

  function drawTable(rows) {
    const shown = rows.filter(keep);
    const n = CSR.table(document.getElementById("prompts"), columns(rows), shown, state, () => drawTable(rows));
    document.getElementById("count").textContent = `${n} of ${rows.length} prompts match`;
    CSR.setHash(state);
  }

  function drawStats(it) {
    const p = it.pairs || {}, d = it.dpo || {};
    const skips = Object.entries(p).filter(([k]) => k.startsWith("skipped/")).map(([k, v]) => `${k.slice(8)} ${v}`);
    const parts = [`${CSR.esc(it.prompts)} prompts`, `${CSR.num(p.pairs)} pairs`, `mean margin ${CSR.num(p.margin)}`];
    if (skips.length) parts.push(`skipped: ${CSR.esc(skips.join(", "))}`);
    if (p["chosen/chair_s"] !== undefined) parts.push(`CHAIR_S chosen ${CSR.num(p["chosen/chair_s"])} / rejected ${CSR.num(p["rejected/chair_s"])}`);
    if (d["rewards/margins"] !== undefined) parts.push(`DPO rewards/margins ${CSR.num(d["rewards/margins"])}, accuracy ${CSR.num(d["rewards/accuracies"])}`);
    document.getElementById("istats").innerHTML = parts.join(" · ");
  }

  function show() {
    tabs.querySelectorAll("button").forEach(b => b.classList.toggle("on", b.dataset.k === state.it));
    const it = its.find(x => String(x.k) === state.it);
    drawStats(it);
    CSR.load(`iter_${it.k}`).then(rows => {
      rows.forEach(r => { r._href = `prompt.html#p=${encodeURIComponent(r.key)}&it=${it.k}`; });
      drawFilters(rows);
      drawTable(rows);
      CSR.ready();
    }).catch(CSR.fail);
  }
  show();
})();
