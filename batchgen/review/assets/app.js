// batchgen review: the page. Everything comes from this server (no CDN); every request carries
// the token, in a header for the API and in the URL for images (an <img> cannot set headers).
// The server filters; the page holds only the pages of items near the screen (virtual scroll).
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const TOKEN = params.get("token") || "";
  const POLL_MS = Math.max(200, Number(params.get("poll")) || 1000);
  const PAGE = 200;
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const withToken = (url) => url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);

  // -- state --------------------------------------------------------------------------------
  const S = {
    filter: {},          // field -> value (status, verdict, kind, var.X, meta.X, q)
    mode: "list",
    rows: "", cols: "",
    total: 0,
    pages: new Map(),    // page number -> items (for the current filter and version)
    pending: new Map(),  // page number -> promise
    version: -1,
    cur: 0,              // the cursor: an index into the list (list mode) or S.flat (grid mode)
    flat: [],            // grid mode: the grid's items, row by row
    undo: [],            // {id, sha, verdict, note}: what to put back
    open: false,
    facetsAt: 0,
  };

  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    S.filter = {};
    for (const [k, v] of h) {
      if (k === "view") S.mode = v === "grid" ? "grid" : "list";
      else if (k === "rows") S.rows = v;
      else if (k === "cols") S.cols = v;
      else if (v) S.filter[k] = v;
    }
  }
  function writeHash() {
    const h = new URLSearchParams(S.filter);
    if (S.mode === "grid") { h.set("view", "grid"); h.set("rows", S.rows); h.set("cols", S.cols); }
    history.replaceState(null, "", location.pathname + location.search + "#" + h.toString());
  }
  const filterQuery = (extra) => new URLSearchParams({ ...S.filter, ...(extra || {}) }).toString();

  async function api(path, query) {
    const r = await fetch(path + (query ? "?" + query : ""), { headers: { "X-Batchgen-Token": TOKEN } });
    if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()).slice(0, 200));
    return r.json();
  }
  function say(text) { $("msg").textContent = text || ""; }

  // -- counts and live updates --------------------------------------------------------------
  function showCounts(c) {
    const box = $("counts");
    box.replaceChildren();
    const parts = [["succeeded", c.succeeded], ["failed", c.failed], ["pending", c.pending],
      ["accepted", c.accepted], ["rejected", c.rejected], ["unreviewed", c.unreviewed]];
    if (c.superseded) parts.push(["superseded", c.superseded]);
    for (const [name, n] of parts) {
      const s = el("span", "count", "");
      s.dataset.count = name;
      s.append(el("b", "", String(n)), " " + name);
      box.append(s);
    }
    const spend = el("span", "count", "");
    spend.dataset.count = "spend";
    spend.append(el("b", "", "$" + Number(c.spend_usd).toFixed(2)), " spent");
    box.append(spend);
    if (c.state) box.append(el("span", "state", c.state));
  }

  async function poll() {
    try {
      const st = await api("api/state");
      $("live").classList.remove("stale");
      showCounts(st.counts);
      if (st.version !== S.version) {
        const first = S.version === -1;
        S.version = st.version;
        fillFieldSelects(st.vars, st.meta);
        await reload(false);
        // After the cards: facets visit every job, the first screen should not wait for them.
        if (first || Date.now() - S.facetsAt > 5000) loadFacets();
      }
    } catch (e) {
      $("live").classList.add("stale");
    }
    setTimeout(poll, POLL_MS);
  }

  // -- filters ------------------------------------------------------------------------------
  let knownFields = "";
  function fillFieldSelects(vars, meta) {
    const names = vars.map((k) => "var." + k).concat(meta.map((k) => "meta." + k));
    const key = names.join("\u0000");
    if (key === knownFields) return;
    knownFields = key;
    const box = $("f-fields");
    box.replaceChildren();
    for (const name of names) {
      const label = el("label", "", name.replace(/^var\./, "").replace(/^meta\./, "meta ") + " ");
      const sel = el("select");
      sel.dataset.field = name;
      sel.append(new Option("all", ""));
      if (S.filter[name]) sel.append(new Option(S.filter[name], S.filter[name]));
      sel.value = S.filter[name] || "";
      sel.addEventListener("change", onFilter);
      label.append(sel);
      box.append(label);
    }
    for (const id of ["grid-rows", "grid-cols"]) {
      const sel = $(id);
      const was = id === "grid-rows" ? S.rows : S.cols;
      sel.replaceChildren(...["status", "verdict", "kind"].concat(names).map((n) => new Option(n, n)));
      sel.value = was || (id === "grid-rows" ? names[0] : names[1] || names[0]) || "status";
    }
    S.rows = $("grid-rows").value;
    S.cols = $("grid-cols").value;
  }

  // Values offered even when no job has them yet (a run is filling the folder).
  const FIXED = { status: ["succeeded", "failed", "pending", "superseded"],
    verdict: ["accepted", "rejected", "unreviewed"] };
  let facetsTimer = 0;
  const facetsSoon = () => { clearTimeout(facetsTimer); facetsTimer = setTimeout(loadFacets, 1000); };
  async function loadFacets() {
    S.facetsAt = Date.now();
    const f = await api("api/facets");
    for (const sel of document.querySelectorAll("select[data-field]")) {
      const info = f.fields[sel.dataset.field];
      if (!info) continue;
      const keep = sel.value;
      sel.replaceChildren(new Option("all", ""));
      const values = info.values.slice();
      for (const v of FIXED[sel.dataset.field] || []) if (!values.some(([x]) => x === v)) values.push([v, 0]);
      for (const [value, n] of values) sel.append(new Option(value + " (" + n + ")", value));
      if (info.more) sel.append(new Option("… " + info.more + " more", "", false, false));
      if (keep && !info.values.some(([v]) => v === keep)) sel.append(new Option(keep, keep));
      sel.value = keep;
    }
  }

  function onFilter() {
    for (const sel of document.querySelectorAll("select[data-field]")) {
      if (sel.value) S.filter[sel.dataset.field] = sel.value;
      else delete S.filter[sel.dataset.field];
    }
    const q = $("f-q").value.trim();
    if (q) S.filter.q = q; else delete S.filter.q;
    S.mode = $("view-mode").value;
    S.rows = $("grid-rows").value;
    S.cols = $("grid-cols").value;
    S.cur = 0;
    writeHash();
    // Back to the keys: a filter chosen, the next key reviews instead of changing the menu.
    if (document.activeElement instanceof HTMLElement) document.activeElement.blur();
    reload(true);
  }

  // -- the list: virtual scrolling over server-side pages -----------------------------------
  const scroller = $("scroller"), spacer = $("spacer");
  const cell = () => parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--cell")) || 196;
  const columns = () => Math.max(1, Math.floor((scroller.clientWidth - 8) / cell()));

  function getPage(n) {
    if (S.pages.has(n)) return Promise.resolve(S.pages.get(n));
    if (S.pending.has(n)) return S.pending.get(n);
    const version = S.version, key = filterQuery();
    const p = api("api/items", filterQuery({ offset: n * PAGE, limit: PAGE })).then((res) => {
      S.pending.delete(n);
      if (key !== filterQuery()) return res.items;  // the filter changed meanwhile
      S.total = res.total;
      if (version === S.version) S.pages.set(n, res.items);
      return res.items;
    });
    S.pending.set(n, p);
    return p;
  }
  async function itemAt(i) {
    if (S.mode === "grid") return S.flat[i];
    const items = await getPage(Math.floor(i / PAGE));
    return items[i % PAGE];
  }
  const cachedAt = (i) => S.mode === "grid" ? S.flat[i] : (S.pages.get(Math.floor(i / PAGE)) || [])[i % PAGE];

  async function reload(reset) {
    if (reset) scroller.scrollTop = 0;
    $("view-mode").value = S.mode;
    $("grid-axes").hidden = S.mode !== "grid";
    $("grid").hidden = S.mode !== "grid";
    scroller.hidden = S.mode === "grid";
    if (S.mode === "grid") await loadGrid();
    else {
      const old = S.pages;
      S.pages = new Map();
      S.pending = new Map();
      try { await getPage(visibleRange()[0]); } catch (e) { S.pages = old; say(String(e)); }
      render();
    }
    $("total").textContent = S.total + " shown";
    if (S.open) openView();
  }

  function visibleRange() {
    const cols = columns(), h = cell() + 22;
    const first = Math.floor(scroller.scrollTop / h) * cols;
    const last = Math.ceil((scroller.scrollTop + scroller.clientHeight) / h + 1) * cols;
    return [Math.floor(first / PAGE), Math.floor(last / PAGE), first, last];
  }

  let renderQueued = false;
  function render() {
    renderQueued = false;
    const cols = columns(), h = cell() + 22;
    spacer.style.height = Math.ceil(S.total / cols) * h + "px";
    const [p0, p1, first, last] = visibleRange();
    const missing = [];
    for (let p = p0; p <= p1; p++) if (!S.pages.has(p)) missing.push(p);
    if (missing.length) Promise.all(missing.map(getPage)).then(queueRender, (e) => say(String(e)));
    const nodes = [];
    for (let i = first; i < Math.min(last, S.total); i++) {
      const it = cachedAt(i);
      if (!it) continue;
      const c = card(it, i);
      c.style.top = Math.floor(i / cols) * h + 4 + "px";
      c.style.left = (i % cols) * cell() + 4 + "px";
      nodes.push(c);
    }
    spacer.replaceChildren(...nodes);
  }
  function queueRender() {
    if (!renderQueued) { renderQueued = true; requestAnimationFrame(render); }
  }

  function card(it, i) {
    const c = el("div", "card s-" + it.s + (it.v ? " v-" + it.v : "") + (i === S.cur ? " cur" : ""));
    c.dataset.id = it.id;
    c.dataset.index = i;
    c.dataset.status = it.s;
    if (it.v) c.dataset.verdict = it.v;
    if (it.th) {
      const img = el("img");
      img.src = withToken(it.th);
      img.alt = it.id;
      // Recorded as made, file gone (deleted, or a folder copied without images/).
      img.addEventListener("error", () => img.replaceWith(el("div", "ph", "image missing")), { once: true });
      c.append(img);
    } else {
      c.append(el("div", "ph", it.s === "failed" ? "failed: " + (it.k || "?") : it.s));
    }
    if (it.v && it.v !== "unreviewed") c.append(el("span", "badge", it.v));
    const cap = el("div", "cap", it.lb || it.nm || it.id);
    cap.title = it.id + (it.vn ? "\n" + it.vn : "");
    c.append(cap);
    c.addEventListener("click", () => { S.cur = i; openView(); });
    return c;
  }

  // -- the grid: rows one field, columns another ---------------------------------------------
  async function loadGrid() {
    if (!S.rows || !S.cols) return;
    const g = await api("api/grid", filterQuery({ rows: S.rows, cols: S.cols, per: 4 }));
    const table = el("table");
    const head = el("tr");
    head.append(el("th", "", S.rows + " \\ " + S.cols));
    for (const c of g.cols) head.append(el("th", "", c));
    table.append(head);
    S.flat = [];
    g.rows.forEach((r, ri) => {
      const tr = el("tr");
      tr.append(el("th", "rowh", r));
      g.cols.forEach((c, ci) => {
        const td = el("td");
        const box = el("div", "cell");
        for (const it of g.cells[ri][ci].items) {
          const i = S.flat.length;
          S.flat.push(it);
          const t = el("div", "thumb" + (it.v ? " v-" + it.v : "") + (i === S.cur ? " cur" : ""));
          t.dataset.id = it.id;
          t.dataset.index = i;
          if (it.th) { const img = el("img"); img.src = withToken(it.th); img.alt = it.id; t.append(img); }
          else t.append(el("div", "ph", it.s === "failed" ? "failed: " + (it.k || "?") : it.s));
          if (it.v && it.v !== "unreviewed") t.append(el("span", "badge", it.v));
          t.title = (it.lb ? it.lb + "\n" : "") + it.id;
          t.addEventListener("click", () => { S.cur = i; openView(); });
          box.append(t);
        }
        const n = g.cells[ri][ci].n;
        if (n) {
          const more = el("div", "more", (n === 1 ? "1 image" : n + " images") + " →");
          more.title = "these in the list";
          more.addEventListener("click", () => {
            S.filter[S.rows] = r; S.filter[S.cols] = c; S.mode = "list";
            writeHash(); readHash(); syncControls(); reload(true);
          });
          box.append(more);
        }
        td.append(box);
        tr.append(td);
      });
      table.append(tr);
    });
    S.total = S.flat.length;
    $("grid").replaceChildren(table);
    if (g.more_rows || g.more_cols) say(`grid shows the first ${g.rows.length} rows and ${g.cols.length} columns`);
  }

  // -- cursor, large view, verdicts -------------------------------------------------------
  function markCursor() {
    for (const e of document.querySelectorAll(".cur")) e.classList.remove("cur");
    const e = document.querySelector(`[data-index="${S.cur}"]`);
    if (e) e.classList.add("cur");
  }
  async function move(delta) {
    const total = S.mode === "grid" ? S.flat.length : S.total;
    if (!total) return;
    S.cur = Math.max(0, Math.min(total - 1, S.cur + delta));
    if (S.mode === "list") {
      const h = cell() + 22, top = Math.floor(S.cur / columns()) * h;
      if (top < scroller.scrollTop) scroller.scrollTop = top;
      else if (top + h > scroller.scrollTop + scroller.clientHeight) scroller.scrollTop = top + h - scroller.clientHeight;
      await itemAt(S.cur);
      render();
    }
    markCursor();
    if (S.open) openView();
  }

  const dd = (dl, name, value) => {
    if (value === undefined || value === null || value === "") return;
    const dt = el("dt", "", name), d = el("dd");
    d.dataset.field = name;
    if (value instanceof Node) d.append(value); else d.textContent = String(value);
    dl.append(dt, d);
  };
  const pairs = (obj) => Object.entries(obj || {}).map(([k, v]) => k + " = " + (typeof v === "string" ? v : JSON.stringify(v))).join("\n");

  let viewSeq = 0;
  async function openView() {
    const it = await itemAt(S.cur);
    if (it) await showJob(it.id);
  }
  // A job in the large view: the one under the cursor, or a parent or child followed from it.
  async function showJob(id) {
    const seq = ++viewSeq;
    const job = await api("api/job/" + encodeURIComponent(id));
    if (seq !== viewSeq) return;
    S.open = true;
    $("view").hidden = false;
    const big = $("big");
    if (job.im) { big.src = withToken(job.im); big.alt = job.id; } else { big.removeAttribute("src"); big.alt = job.s; }
    const dl = $("details");
    dl.replaceChildren();
    dd(dl, "id", job.id);
    dd(dl, "status", job.s + (job.k ? ": " + job.k : ""));
    dd(dl, "verdict", job.v ? job.v + (job.note ? ": " + job.note : "") : "");
    dd(dl, "prompt", job.prompt);
    dd(dl, "vars", pairs(job.vars));
    dd(dl, "meta", pairs(job.meta));
    dd(dl, "model text", job.text);
    dd(dl, "model", [job.model, job.size, job.ratio, job.wh ? job.wh.join("×") : ""].filter(Boolean).join(" · "));
    dd(dl, "seed", job.seed);
    dd(dl, "cost", "$" + Number(job.cost_usd).toFixed(4) + " (every attempt and redo)");
    dd(dl, "source", job.source);
    dd(dl, "references", (job.references || []).map((r) => r.path + (r.sha256 ? "  " + r.sha256.slice(0, 12) : "")).join("\n"));
    if (job.error) dd(dl, "error", job.error.kind + ": " + job.error.message);
    const lin = el("table");
    for (const l of job.lineage) {
      const tr = el("tr");
      const what = l.status === "succeeded" ? "image " + (l.sha256 || "").slice(0, 12) : "failed: " + (l.error || "?");
      const redo = l.replaces ? "redo of " + l.replaces.slice(0, 12) + (l.note ? " (" + l.note + ")" : "") : "";
      for (const t of [(l.at || "").slice(0, 19).replace("T", " "), what, redo, l.mode || "", "$" + Number(l.cost_usd || 0).toFixed(3)]) tr.append(el("td", "", t));
      lin.append(tr);
    }
    dd(dl, "lineage", lin);
    const jobLinks = (items) => {
      const box = el("div");
      for (const x of items) {
        const b = el("button", "link", x.label);
        b.dataset.job = x.id;
        b.title = "show " + x.id;
        // The cursor goes to it when the filter holds it, so the keys act on what is shown.
        b.addEventListener("click", () => run(async () => {
          await refreshList(x.id);
          const at = await itemAt(S.cur);
          if (!at || at.id !== x.id) {
            await showJob(x.id);
            say("not in this filter: the keys act on the image under the cursor");
          }
        }));
        box.append(b, " ");
      }
      return box;
    };
    if (job.parents.length) {
      dd(dl, "made from", jobLinks(job.parents.map((p) => ({ id: p.job_id,
        label: p.job_id + "  " + p.sha256.slice(0, 12) + (p.current ? "" : " (since made again)") }))));
    }
    if (job.children.length) dd(dl, "made from this", jobLinks(job.children.map((c) => ({ id: c, label: c }))));
    if (job.aside.length) {
      const box = el("div");
      for (const src of job.aside) { const img = el("img", "aside"); img.src = withToken(src); img.title = src; box.append(img); }
      dd(dl, "rejected images kept aside", box);
    }
    dd(dl, "reviews", job.reviews.map((r) => new Date(r.at * 1000).toISOString().slice(0, 19) + "  " + r.verdict + "  " + r.sha256.slice(0, 12) + (r.note ? "  " + r.note : "")).join("\n"));
  }
  function closeView() { S.open = false; viewSeq++; $("view").hidden = true; }

  async function give(verdict, note, advance) {
    const it = await itemAt(S.cur);
    if (!it || !it.th) { say("no image to review here"); return; }
    const before = { id: it.id, sha: it.sha, verdict: it.v === "unreviewed" || !it.v ? "cleared" : it.v, note: it.vn || "" };
    const ok = await post({ job_id: it.id, verdict, note: note || "", sha256: it.sha }, it);
    if (!ok) return;
    S.undo.push(before);
    say(verdict + ": " + it.id);
    if (S.filter.verdict && S.filter.verdict !== it.v) {
      // It left the filter (reviewing "unreviewed"): the next image slides under the cursor.
      await refreshList();
    } else if (S.mode === "grid") {
      await refreshList();
      if (advance) await move(1);
    } else if (advance) await move(1);
    else { render(); if (S.open) openView(); }
  }
  // The list again from the server, the cursor kept where it is (or on ``id`` if it is there).
  async function refreshList(id) {
    if (S.mode === "grid") {
      await loadGrid();
      const at = id ? S.flat.findIndex((x) => x.id === id) : -1;
      if (at >= 0) S.cur = at;
    } else {
      if (id) {
        const p = await api("api/position", filterQuery({ id }));
        if (p.position >= 0) S.cur = p.position;
      }
      S.pages = new Map();
      S.pending = new Map();
      await getPage(Math.floor(S.cur / PAGE));
    }
    const total = S.mode === "grid" ? S.flat.length : S.total;
    S.cur = Math.max(0, Math.min(S.cur, total - 1));
    $("total").textContent = total + " shown";
    if (S.mode === "list") render();
    markCursor();
    if (S.open) openView();
  }
  async function post(body, it) {
    const r = await fetch("api/review", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Batchgen-Token": TOKEN },
      body: JSON.stringify(body),
    });
    const res = await r.json().catch(() => ({}));
    if (!r.ok) { say(res.error || "not saved: " + r.status); return false; }
    Object.assign(it, res.item);
    if (!res.item.vn) delete it.vn;
    showCounts(res.counts);
    facetsSoon();
    return true;
  }
  async function undo() {
    const last = S.undo.pop();
    if (!last) { say("nothing to undo"); return; }
    const target = { id: last.id };
    if (await post({ job_id: last.id, verdict: last.verdict, note: last.note, sha256: last.sha }, target)) {
      say("undone: " + last.id);
      await refreshList(last.id);
    }
  }
  function askNote() {
    $("note-form").hidden = false;
    $("note").value = "";
    $("note").focus();
  }

  // -- wiring -------------------------------------------------------------------------------
  // One action at a time, in the order the keys came: two quick "r"s reject two images, not
  // the first one twice while the cursor is still moving.
  let queue = Promise.resolve();
  const run = (act) => { queue = queue.then(act).catch((e) => say(String(e))); return queue; };
  function syncControls() {
    for (const sel of document.querySelectorAll("select[data-field]")) {
      const v = S.filter[sel.dataset.field] || "";
      if (v && ![...sel.options].some((o) => o.value === v)) sel.append(new Option(v, v));
      sel.value = v;
    }
    $("f-q").value = S.filter.q || "";
    $("view-mode").value = S.mode;
  }
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) {
      if (e.key === "Escape") { e.target.blur(); $("note-form").hidden = true; }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    const acts = {
      j: () => move(1), ArrowRight: () => move(1), k: () => move(-1), ArrowLeft: () => move(-1),
      ArrowDown: () => move(S.open ? 1 : columns()), ArrowUp: () => move(S.open ? -1 : -columns()),
      a: () => give("accepted", "", true), r: () => give("rejected", "", true), x: () => give("rejected", "", true),
      n: askNote, R: askNote, c: () => give("cleared", "", false), u: undo, z: undo,
      Enter: () => (S.open ? closeView() : openView()), " ": () => (S.open ? closeView() : openView()),
      Escape: closeView,
    };
    const act = acts[k];
    // The note box opens at once (what is typed next goes into it); the rejection it sends
    // waits its turn, so it is about the image the cursor is on after the keys before it.
    if (act) { e.preventDefault(); if (act === askNote) askNote(); else run(act); }
  });
  $("note-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const note = $("note").value;
    $("note-form").hidden = true;
    $("note").blur();
    run(() => give("rejected", note, true));
  });
  for (const id of ["f-status", "f-verdict", "f-kind", "view-mode", "grid-rows", "grid-cols"]) $(id).addEventListener("change", onFilter);
  $("f-q").addEventListener("change", onFilter);
  $("b-prev").onclick = () => run(() => move(-1));
  $("b-next").onclick = () => run(() => move(1));
  $("b-accept").onclick = () => run(() => give("accepted", "", true));
  $("b-reject").onclick = () => run(() => give("rejected", "", true));
  $("b-note").onclick = askNote;
  $("b-clear").onclick = () => run(() => give("cleared", "", false));
  $("b-undo").onclick = () => run(undo);
  $("b-close").onclick = closeView;
  scroller.addEventListener("scroll", queueRender, { passive: true });
  window.addEventListener("resize", queueRender);
  window.addEventListener("hashchange", () => { readHash(); syncControls(); reload(true); });

  readHash();
  syncControls();
  poll();
})();
