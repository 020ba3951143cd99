"use strict";
// Shared by every page: data loading, formatting, the colour scale of R, sortable tables.
// Data files are scripts calling CSR.put(name, value): pages opened from file:// may load
// scripts but not fetch() JSON.

const CSR = {
  data: {},

  put(name, value) { this.data[name] = value; },

  load(name) {
    if (name in this.data) return Promise.resolve(this.data[name]);
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = `data/${name}.js`;
      s.onload = () => resolve(this.data[name]);
      s.onerror = () => reject(new Error(`cannot load data/${name}.js`));
      document.head.appendChild(s);
    });
  },

  // Every value from a run directory goes through esc() before it reaches HTML, attributes included:
  // ids, keys, file names and config values come from files a stranger may have written.
  esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  },

  // A sentence as the model wrote it: leading spaces kept visible, newlines marked.
  // (the markers are CSS ::before content, so an element's textContent is exactly the text)
  text(s) {
    if (!s) return '<span class="empty"></span>';
    return CSR.esc(s).replace(/\n/g, '<span class="nl">\n</span>');
  },

  num(v, digits = 3) {
    if (v === null || v === undefined) return '<span class="muted">–</span>';
    if (typeof v !== "number") return CSR.esc(v);
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(digits);
  },

  halluc(list) {
    if (!list) return "";
    if (!list.length) return '<span class="ok">none</span>';
    return list.map(o => `<span class="tag bad">${CSR.esc(o)}</span>`).join(" ");
  },

  // A data file name from the address bar: only the keys csr writes (csr/inspect/data.py prompt_key).
  safeKey(s) { return /^[A-Za-z0-9_-]{1,80}$/.test(s || "") ? s : null; },

  hash() { return Object.fromEntries(new URLSearchParams(location.hash.slice(1))); },

  setHash(obj) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(obj)) if (v !== "" && v !== null && v !== undefined) p.set(k, v);
    history.replaceState(null, "", "#" + p.toString());
  },

  // t in [0, 1] -> red (low R) .. yellow .. green (high R)
  colour(t) {
    const stops = [[215, 48, 39], [254, 224, 139], [26, 152, 80]];
    t = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0.5));
    const [a, b, u] = t < 0.5 ? [stops[0], stops[1], t * 2] : [stops[1], stops[2], t * 2 - 1];
    return `rgb(${a.map((x, i) => Math.round(x + (b[i] - x) * u)).join(",")})`;
  },

  scale(values) {
    const known = values.filter(v => v !== null && v !== undefined && Number.isFinite(v));
    const lo = Math.min(...known), hi = Math.max(...known);
    const flip = CSR.data.run.config.lower_is_better;  // pairs.rule=reference: a lower R (rank) is better
    return v => (v === null || v === undefined) ? "#ddd"
      : CSR.colour(hi > lo ? (flip ? hi - v : v - lo) / (hi - lo) : 0.5);
  },

  // A sortable table. columns: [{key, label, title?, html?(row), cls?}]; sort state kept in state.
  // Only the first state.limit rows are drawn (a "show more" button adds more): thousands of rows
  // sort and filter in memory, but laying them all out would cost seconds.
  table(el, columns, rows, state, onSort) {
    const col = columns.find(c => c.key === state.sort);
    let shown = rows;
    if (col) {
      const dir = state.dir === "desc" ? -1 : 1, get = col.value || (r => r[col.key]);
      shown = rows.slice().sort((a, b) => {
        const x = get(a), y = get(b);
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;  // missing values last in both directions
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * dir;
      });
    }
    const head = columns.map(c => {
      const mark = c.key === state.sort ? (state.dir === "desc" ? " ▼" : " ▲") : "";
      return `<th data-key="${CSR.esc(c.key)}" title="${CSR.esc(c.title || "click to sort")}">${CSR.esc(c.label)}${mark}</th>`;
    }).join("");
    const limit = Number(state.limit) || 200;
    const body = shown.slice(0, limit).map(r => `<tr${r._href ? ` data-href="${CSR.esc(r._href)}"` : ""}>` +
      columns.map(c => `<td class="${CSR.esc(c.cls)}">${c.html ? c.html(r) : CSR.num(r[c.key])}</td>`).join("") + "</tr>").join("");
    const more = shown.length > limit
      ? `<p><button class="more">show ${Math.min(limit, shown.length - limit)} more</button> <span class="muted small">(${shown.length - limit} not drawn)</span></p>` : "";
    el.innerHTML = `<table class="grid"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>${more}`;
    if (more) el.querySelector("button.more").addEventListener("click", () => { state.limit = 2 * limit; onSort(); });
    el.querySelectorAll("th").forEach(th => th.addEventListener("click", () => {
      const key = th.dataset.key;
      state.dir = state.sort === key && state.dir === "asc" ? "desc" : "asc";
      state.sort = key;
      onSort();
    }));
    return shown.length;
  },

  // CSR_READY_MS: data drawn into the DOM; CSR_PAINTED_MS: the frame after it, laid out and painted.
  ready() {
    window.CSR_READY_MS = performance.now();
    requestAnimationFrame(() => setTimeout(() => {
      window.CSR_PAINTED_MS = performance.now();
      document.body.dataset.ready = "1";
    }, 0));
  },

  fail(err) {
    document.getElementById("main").insertAdjacentHTML("afterbegin", `<p class="error">${CSR.esc(err.message || err)}</p>`);
    CSR.ready();
  },

  header(subtitle) {
    const run = CSR.data.run;
    document.getElementById("title").innerHTML = `${CSR.esc(subtitle)} <span class="muted small">${CSR.esc(run.run_dir)}</span>`;
    if (!run.evaluators.length) document.getElementById("nav-eval").remove();
  },
};
