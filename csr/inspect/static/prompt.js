"use strict";
// Prompt page: image, prompt, the pair, the search tree (sibling ranks on hover / click), every
// complete answer, and the evaluation answers to this prompt at every iteration.

(function () {
  const run = CSR.data.run, main = document.getElementById("main");
  const h = CSR.hash();
  CSR.header("CSR prompt");
  window.addEventListener("hashchange", () => location.reload());  // another prompt typed into the address
  if (!CSR.safeKey(h.p)) { CSR.fail(new Error("no prompt in the address (prompt.html#p=<key>&it=<k>)")); return; }

  CSR.load(`p/${h.p}`).then(page => {
    const ks = Object.keys(page.iterations).map(Number).sort((a, b) => a - b);
    let k = ks.includes(Number(h.it)) ? Number(h.it) : ks[0];
    document.getElementById("nav-run").href = `index.html#it=${k}`;
    main.innerHTML = `
      <section class="top">
        ${page.image ? `<img id="image" src="${CSR.esc(page.image)}" alt="${CSR.esc(page.image_name)}">` : '<div class="noimg">image not found</div>'}
        <div>
          <h2>${CSR.esc(page.id)}</h2>
          <p class="prompt">${CSR.esc(page.prompt)}</p>
          ${page.truth ? `<p class="small">in the image (ground truth): ${page.truth.map(o => `<span class="tag">${CSR.esc(o)}</span>`).join(" ")}</p>` : ""}
          <div class="tabs" id="tabs">${ks.map(x => `<button data-k="${CSR.esc(x)}">Iteration ${CSR.esc(x)}</button>`).join("")}</div>
        </div>
      </section>
      <div id="iteration"></div>
      <section><h2>Evaluation answers to this prompt</h2><div id="evals"></div></section>`;
    const img = document.getElementById("image");
    if (img) img.addEventListener("load", () => { if (img.naturalWidth < 160) img.classList.add("pixelated"); });
    document.querySelectorAll("#tabs button").forEach(b => b.addEventListener("click", () => { k = Number(b.dataset.k); show(); }));
    drawEvals(page);
    function show() {
      document.querySelectorAll("#tabs button").forEach(b => b.classList.toggle("on", Number(b.dataset.k) === k));
      CSR.setHash({p: h.p, it: k});
      document.getElementById("nav-run").href = `index.html#it=${k}`;
      drawIteration(page.iterations[k], k);
      CSR.ready();
    }
    show();
  }).catch(CSR.fail);

  function sentences(side, colour) {
    return side.sentences.map(s => `<span class="sent" style="background:${colour(s.reward)}"
      title="R ${CSR.num(s.reward)} · R_T ${CSR.num(s.r_t)} · R_I ${CSR.num(s.r_i)}">${CSR.text(s.text)}</span>`).join("");
  }

  function drawPair(detail, k, colour) {
    const p = detail.pair;
    if (!p) return `<section><h2>Pair</h2><p class="warn">No pair: ${CSR.esc(detail.skipped || "?")}
      ${detail.error ? `<span class="muted">(${CSR.esc(detail.error)})</span>` : ""}</p></section>`;
    const it = run.iterations.find(x => x.k === k) || {}, dpo = it.dpo || {};
    const side = (name) => {
      const s = p[name];
      return `<div class="side ${name}"><h3>${name} <span class="small muted">score ${CSR.num(s.score)} · mean R_I ${CSR.num(s.r_i)}
        ${s.chair_s !== undefined ? ` · CHAIR_S ${CSR.num(s.chair_s)}` : ""}</span></h3>
        <p class="answer">${sentences(s, colour)}</p>${s.halluc ? `<p class="small">hallucinated: ${CSR.halluc(s.halluc)}</p>` : ""}</div>`;
    };
    const ref = p.ref_logps ? ` · reference log-probs chosen ${CSR.num(p.ref_logps.chosen)}, rejected ${CSR.num(p.ref_logps.rejected)}` : "";
    return `<section><h2>Pair</h2><div class="pair">${side("chosen")}${side("rejected")}</div>
      <p class="small"><b>pair score margin ${CSR.num(p.margin)}</b>${ref}${dpo["rewards/margins"] !== undefined ?
        ` · this iteration's DPO rewards/margins (mean over steps) ${CSR.num(dpo["rewards/margins"])}` : ""}</p>
      <p class="small muted">${CSR.esc(run.dpo_note)}</p></section>`;
  }

  function drawIteration(detail, k) {
    const el = document.getElementById("iteration");
    const tree = detail.tree;
    const colour = tree ? CSR.scale(tree.nodes.map(n => n.r)) : () => "#ddd";
    let html = drawPair(detail, k, colour);
    if (tree) {
      const rs = tree.nodes.map(n => n.r).filter(v => v !== null && v !== undefined);
      html += `<section><h2>Search tree <span class="small muted">${tree.nodes.length} nodes (root included) ·
          ${tree.answers.length} complete answers</span></h2>
        <div class="controls small">
          <label><input type="checkbox" id="t-pruned" checked> show pruned</label>
          <label><input type="checkbox" id="t-paths"> only chosen / rejected paths</label>
          <span class="legend">R <span class="chip" style="background:${colour(Math.min(...rs))}">${CSR.num(Math.min(...rs))}</span>
            … <span class="chip" style="background:${colour(Math.max(...rs))}">${CSR.num(Math.max(...rs))}</span></span>
          <span class="muted">hover a sentence for its sibling set, click to pin it</span>
        </div>
        <div class="treebox"><ul class="tree" id="tree">${drawNode(tree, 0, colour)}</ul>
          <aside id="panel" class="panel"><p class="muted">Hover or click a sentence.</p></aside></div></section>
        <section><h2>Complete answers <span class="small muted">(best score first; click to find it in the tree)</span></h2>
          <div id="answers"></div></section>`;
    }
    el.innerHTML = html;
    if (!tree) return;
    drawAnswers(tree);
    wireTree(tree, colour);
  }

  function children(tree) {
    if (!tree._children) {
      tree._children = tree.nodes.map(() => []);
      tree.nodes.forEach(n => { if (n.parent >= 0) tree._children[n.parent].push(n.id); });
      tree._on = {};
      for (const side of ["chosen", "rejected"]) for (const id of (tree.paths[side] || [])) (tree._on[id] ||= []).push(side);
    }
    return tree._children;
  }

  function drawNode(tree, id, colour) {
    const n = tree.nodes[id], kids = children(tree)[id], on = tree._on[id] || [];
    const badges = on.map(s => `<span class="badge ${s}">${s}</span>`).join("") +
      (n.status === "root" ? "" : `<span class="badge ${CSR.esc(n.status)}">${CSR.esc(n.status)}</span>`) +
      (n.status === "final" ? `<span class="badge">${CSR.esc(n.finish)}</span>` : "") +
      (n.halluc && n.halluc.length ? CSR.halluc(n.halluc) : "");
    const row = n.status === "root"
      ? `<div class="node root" data-id="0"><b>root</b> <span class="muted">(the prompt)</span></div>`
      : `<div class="node" data-id="${CSR.esc(id)}"><span class="chip" style="background:${colour(n.r)}">${CSR.num(n.r, 2)}</span>
          <span class="txt">${CSR.text(n.text)}</span>
          <span class="meta">R_T ${CSR.num(n.r_t, 2)} · R_I ${CSR.num(n.r_i, 2)}</span>${badges}</div>`;
    const sub = kids.length ? `<ul>${kids.map(c => drawNode(tree, c, colour)).join("")}</ul>` : "";
    const cls = [n.status, on.length ? "on-path" : "", kids.length ? "open" : ""].join(" ");
    const caret = kids.length ? '<span class="caret" title="collapse / expand">▾</span>' : '<span class="caret"></span>';
    return `<li class="${CSR.esc(cls)}">${caret}${row}${sub}</li>`;
  }

  // "2nd of 5" from a rank in (0, 1] (best = 1; ties share their average position)
  function place(rank, n) {
    if (rank === null || rank === undefined) return "–";
    const pos = Math.round((n * (1 - rank) + 1) * 10) / 10;
    return `${pos} of ${n}`;
  }

  function panel(tree, id) {
    const n = tree.nodes[id];
    if (n.status === "root") return '<p class="muted">The root is the prompt itself.</p>';
    const sibs = children(tree)[n.parent].map(i => tree.nodes[i]).sort((a, b) => (b.r ?? -1e9) - (a.r ?? -1e9));
    const parent = tree.nodes[n.parent], lam = run.config.lam, cal = run.config.calibration;
    const formula = n.norm_i !== undefined && n.norm_i !== null
      ? `R = λ·${CSR.esc(cal)}(R_I) + (1−λ)·${CSR.esc(cal)}(R_T) = ${CSR.num(lam)}·${CSR.num(n.norm_i)} + ${CSR.num(1 - lam)}·${CSR.num(n.norm_t)}
         = <b>${CSR.num(n.r_check)}</b>${n.r !== null && Math.abs(n.r - n.r_check) > 1e-6 ? ` <span class="bad">(stored R ${CSR.num(n.r)} differs!)</span>` : ""}`
      : run.config.lower_is_better ? "pairs.rule=reference: R is the authors' rank within the sibling set (lower is better)"
      : "R_I not scored for this sibling set (pruned by R_T before CLIP saw it)";
    const cohort = tree.nodes.filter(x => x.depth === n.depth && x.status !== "final" && x.status !== "root");
    const byScore = cohort.slice().sort((a, b) => b.path_score - a.path_score);
    const prune = n.status === "final" ? `final (${CSR.esc(n.finish)}): not pruned, it ends an answer`
      : `pruning at depth ${CSR.esc(n.depth)}: mean path score ${CSR.num(n.path_score)} is ${byScore.findIndex(x => x.id === n.id) + 1} of
         ${cohort.length} open sentences at this depth → <b>${CSR.esc(n.status)}</b>`;
    const rows = sibs.map(s => `<tr class="${s.id === id ? "sel" : ""}" data-id="${CSR.esc(s.id)}">
      <td><span class="chip" style="background:${CSR.scale(sibs.map(x => x.r))(s.r)}">${CSR.num(s.r, 3)}</span></td>
      <td class="txt">${CSR.text(s.text)}</td><td class="nw">${CSR.num(s.r_t, 2)}<br><span class="muted">${place(s.rank_t, sibs.length)}</span></td>
      <td class="nw">${CSR.num(s.r_i, 2)}<br><span class="muted">${place(s.rank_i, sibs.length)}</span></td>
      <td><span class="badge ${CSR.esc(s.status)}">${CSR.esc(s.status)}</span></td></tr>`).join("");
    return `<h3>Sentence #${CSR.esc(id)} <span class="small muted">depth ${CSR.esc(n.depth)} · ${CSR.esc(n.tokens)} tokens · finish ${CSR.esc(n.finish)}</span></h3>
      <p class="small">${formula}</p><p class="small">${prune}</p>
      <p class="small muted">Its sibling set: the ${sibs.length} candidates proposed after #${CSR.esc(n.parent)}
        ${parent.status === "root" ? "(the prompt)" : `“${CSR.esc(parent.text.slice(0, 60))}”`}; ranks as the calibration used them (best = 1st).</p>
      <table class="grid small"><thead><tr><th>R</th><th>sentence</th><th>R_T (rank)</th><th>R_I (rank)</th><th></th></tr></thead>
      <tbody>${rows}</tbody></table>`;
  }

  function wireTree(tree, colour) {
    const box = document.getElementById("tree"), side = document.getElementById("panel");
    let pinned = null;
    const select = (id, pin) => {
      if (pin) pinned = id;
      box.querySelectorAll(".node.sel, .node.sib").forEach(e => e.classList.remove("sel", "sib"));
      const n = tree.nodes[id];
      if (n.parent >= 0) for (const s of children(tree)[n.parent]) box.querySelector(`.node[data-id="${s}"]`).classList.add("sib");
      box.querySelector(`.node[data-id="${id}"]`).classList.add("sel");
      side.innerHTML = panel(tree, id);
    };
    box.addEventListener("mouseover", e => {
      const node = e.target.closest(".node");
      if (node && pinned === null) select(Number(node.dataset.id), false);
    });
    box.addEventListener("click", e => {
      if (e.target.classList.contains("caret")) { e.target.parentElement.classList.toggle("closed"); return; }
      const node = e.target.closest(".node");
      if (node) { const id = Number(node.dataset.id); pinned === id ? (pinned = null) : select(id, true); }
    });
    document.getElementById("t-pruned").addEventListener("change", e => box.classList.toggle("hide-pruned", !e.target.checked));
    document.getElementById("t-paths").addEventListener("change", e => box.classList.toggle("paths-only", e.target.checked));
    document.getElementById("answers").addEventListener("click", e => {
      const tr = e.target.closest("tr[data-node]");
      if (!tr) return;
      const id = Number(tr.dataset.node);
      select(id, true);
      box.querySelector(`.node[data-id="${id}"]`).scrollIntoView({block: "center"});
    });
    const first = (tree.paths.chosen || [])[0];
    if (first !== undefined) select(first, false);
  }

  function drawAnswers(tree) {
    const on = tree._on, gt = tree.answers.some(a => a.halluc);
    const rows = tree.answers.map((a, i) => {
      const tags = (on[a.node] || []).map(s => `<span class="badge ${s}">${s}</span>`).join("");
      return `<tr data-node="${CSR.esc(a.node)}"><td>${i + 1}</td><td>${CSR.num(a.score)}</td><td>${CSR.esc(a.finish)}</td>
        ${gt ? `<td>${CSR.halluc(a.halluc)}</td>` : ""}<td>${tags}</td><td class="txt">${CSR.text(a.text)}</td></tr>`;
    }).join("");
    document.getElementById("answers").innerHTML = `<table class="grid small"><thead><tr><th>#</th><th>score</th><th>finish</th>
      ${gt ? "<th>hallucinated</th>" : ""}<th></th><th>answer</th></tr></thead><tbody>${rows}</tbody></table>`;
  }

  function drawEvals(page) {
    const el = document.getElementById("evals"), names = Object.keys(page.evals);
    if (!names.length) {
      el.innerHTML = `<p class="muted small">This prompt was not among the evaluation prompts${run.evaluators.length ?
        ` (see <a href="eval.html">every evaluation answer</a>)` : ""}.</p>`;
      return;
    }
    el.innerHTML = names.map(name => {
      const answers = page.evals[name];
      const rows = Object.keys(answers).map(Number).sort((a, b) => a - b).map(k => {
        const a = answers[k];
        return `<tr><td>${CSR.esc(k)}${k === 0 ? " (base)" : ""}</td><td class="txt">${CSR.text(a.answer)}</td><td>${CSR.num(a.r_i)}</td>
          <td>${CSR.esc(a.finish)}</td>${a.halluc ? `<td>${CSR.halluc(a.halluc)}</td>` : ""}</tr>`;
      }).join("");
      return `<h3>${CSR.esc(name)}</h3><table class="grid small"><thead><tr><th>iteration</th><th>answer</th><th>R_I</th>
        <th>finish</th></tr></thead><tbody>${rows}</tbody></table>`;
    }).join("");
  }
})();
