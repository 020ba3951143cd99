"use strict";
// Evaluation page: every evaluation answer of one evaluator, one column per iteration, so a reader
// sees how each image's answer changed from the base model to the last iteration.

(function () {
  const run = CSR.data.run, main = document.getElementById("main");
  const state = Object.assign({ev: run.evaluators[0] || "", q: "", f: "", sort: "id", dir: "asc"}, CSR.hash());
  CSR.header("CSR evaluation answers");
  if (!run.evaluators.length) { main.innerHTML = '<p class="muted">This run has no evaluation answers.</p>'; CSR.ready(); return; }
  if (!run.evaluators.includes(state.ev)) state.ev = run.evaluators[0];
  main.innerHTML = `<div class="tabs" id="tabs">${run.evaluators.map(e => `<button data-ev="${CSR.esc(e)}">${CSR.esc(e)}</button>`).join("")}</div>
    <div class="filters" id="filters"></div><div id="count" class="small muted"></div><div id="table"></div>`;
  document.querySelectorAll("#tabs button").forEach(b => b.addEventListener("click", () => { state.ev = b.dataset.ev; state.f = ""; show(); }));

  const bad = (a) => a && a.halluc ? a.halluc.length > 0 : null;
  const FILTERS = {
    changed: ["answer changed from first to last iteration", (first, last) => first && last && first.answer !== last.answer],
    fixed: ["hallucinated at the first iteration, not at the last", (first, last) => bad(first) === true && bad(last) === false],
    broken: ["not at the first, hallucinated at the last", (first, last) => bad(first) === false && bad(last) === true],
    always: ["hallucinated at both", (first, last) => bad(first) === true && bad(last) === true],
  };

  function show() {
    document.querySelectorAll("#tabs button").forEach(b => b.classList.toggle("on", b.dataset.ev === state.ev));
    CSR.load(`eval_${run.eval_keys[state.ev]}`).then(items => {
      const ks = [...new Set(items.flatMap(it => Object.keys(it.answers).map(Number)))].sort((a, b) => a - b);
      const gt = items.some(it => it.truth);
      const opts = Object.entries(FILTERS).filter(([k]) => gt || k === "changed");
      document.getElementById("filters").innerHTML = `<input id="f-q" type="search" placeholder="id or answer contains…" value="${CSR.esc(state.q)}">
        <select id="f-f"><option value="">all answers</option>${opts.map(([k, [l]]) =>
          `<option value="${k}"${k === state.f ? " selected" : ""}>${CSR.esc(l)}</option>`).join("")}</select>`;
      const cols = [
        {key: "id", label: "id", html: r => CSR.esc(r.id)},
        {key: "image", label: "image", html: r => r.image ? `<img class="thumb" loading="lazy" src="${CSR.esc(r.image)}" alt="">` : ""},
        ...(gt ? [{key: "truth", label: "in the image", html: r => (r.truth || []).map(o => `<span class="tag">${CSR.esc(o)}</span>`).join(" ")}] : []),
        ...ks.map(k => ({key: `a${k}`, label: `iteration ${k}${k === 0 ? " (base)" : ""}`, cls: "txt",
          value: r => r.answers[k] ? r.answers[k].answer : null,
          html: r => { const a = r.answers[k]; return a ? `${CSR.text(a.answer)}${a.halluc ? `<div>${CSR.halluc(a.halluc)}</div>` : ""}` : ""; }})),
      ];
      const draw = () => {
        const q = state.q.toLowerCase(), first = ks[0], last = ks[ks.length - 1];
        const rows = items.filter(it => (!q || it.id.toLowerCase().includes(q) ||
            Object.values(it.answers).some(a => a.answer.toLowerCase().includes(q))) &&
          (!state.f || FILTERS[state.f][1](it.answers[first], it.answers[last])));
        const n = CSR.table(document.getElementById("table"), cols, rows, state, draw);
        document.getElementById("count").textContent = `${n} of ${items.length} evaluation prompts match`;
        CSR.setHash({ev: state.ev, q: state.q, f: state.f, sort: state.sort, dir: state.dir});
      };
      document.getElementById("f-q").addEventListener("input", e => { state.q = e.target.value; draw(); });
      document.getElementById("f-f").addEventListener("input", e => { state.f = e.target.value; draw(); });
      draw();
      CSR.ready();
    }).catch(CSR.fail);
  }
  show();
})();
