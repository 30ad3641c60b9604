// bench compare's HTML report: the report tables and figures, and a per-image explorer.
// Vanilla JS, no network: every string from the data goes through textContent or an
// attribute (never innerHTML), so a caption such as <img src=x onerror=...> is shown as text.
'use strict';
(function () {
  const DATA = JSON.parse(document.getElementById('bench-data').textContent);
  const PAGE = 25;  // rows per page: 25 images x 10 runs renders in a few ms
  const FLAGS = [['truncated', 1], ['repetitive', 2], ['empty', 4], ['failed', 8]];
  const DEFAULTS = { s: '0', sort: 'id', run: '', m: '', dir: 'desc', a: '', b: '', q: '', f: '', fr: '', page: '0', img: '' };
  const state = Object.assign({}, DEFAULTS);
  const haystacks = {};  // section -> lower-case captions of each image, built on first search

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k of Object.keys(attrs)) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const fmt = (v) => (v === null || v === undefined ? '—' : v.toFixed(4));

  // --- the report: tables and figures, as the markdown has them --------------------------------
  function renderTable(t) {
    const wrap = el('div', { class: 'table-wrap' });
    wrap.append(el('h3', null, t.title));
    const table = el('table', { class: 'report-table', 'data-title': t.title });
    const head = el('tr');
    for (const c of t.columns) head.append(el('th', null, c));
    const thead = el('thead');
    thead.append(head);
    const tbody = el('tbody');
    for (const row of t.rows) {
      const tr = el('tr');
      row.forEach((c, j) => tr.append(el('td', { class: t.align[j] === 'r' ? 'num' : null }, c)));
      tbody.append(tr);
    }
    table.append(thead, tbody);
    wrap.append(table);
    return wrap;
  }

  function renderReport(root) {
    DATA.sections.forEach((s, k) => {
      const rep = DATA.report.sections[k];
      const sec = el('section', { id: 'section-' + k, class: 'report' });
      sec.append(el('h2', null, s.title));
      for (const n of rep.notes) sec.append(el('p', { class: 'note' }, 'Note: ' + n));
      sec.append(el('p', null, 'Baseline for p-values: ' + rep.baseline + '.'));
      for (const t of s.tables) sec.append(renderTable(t));
      if (s.figures.length) {
        sec.append(el('h3', null, 'Figures'));
        const box = el('div', { class: 'figures' });
        for (const f of s.figures) {
          const fig = el('figure');
          fig.append(el('img', { src: f.src, alt: f.title, loading: 'lazy' }), el('figcaption', null, f.title));
          box.append(fig);
        }
        sec.append(box);
      }
      root.append(sec);
    });
  }

  // --- the view state, kept in the URL hash ------------------------------------------------------
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    for (const k of Object.keys(DEFAULTS)) state[k] = p.has(k) ? p.get(k) : DEFAULTS[k];
    if (!DATA.sections[+state.s]) state.s = '0';
  }
  function writeHash() {
    const p = new URLSearchParams();
    for (const k of Object.keys(DEFAULTS)) if (state[k] !== DEFAULTS[k]) p.set(k, state[k]);
    const hash = '#' + p.toString();
    if (hash !== location.hash && !(hash === '#' && !location.hash)) history.replaceState(null, '', hash);
  }

  // --- which images, in which order ---------------------------------------------------------------
  const ex = () => DATA.sections[+state.s].explorer;
  const runIndex = (name) => ex().runs.findIndex((r) => r.name === name);

  function haystack() {
    if (!haystacks[state.s]) {
      const e = ex();
      haystacks[state.s] = e.ids.map((id, i) => e.runs.map((r) => r.captions[i]).join('\n').toLowerCase());
    }
    return haystacks[state.s];
  }

  function sortValues() {
    const e = ex();
    if (state.sort === 'run') {
      const r = e.runs[runIndex(state.run)];
      return r && r.scores[state.m] ? r.scores[state.m] : null;
    }
    if (state.sort === 'diff') {
      const a = e.runs[runIndex(state.a)], b = e.runs[runIndex(state.b)];
      if (!a || !b || !a.scores[state.m] || !b.scores[state.m]) return null;
      const va = a.scores[state.m], vb = b.scores[state.m];
      return va.map((v, i) => (v === null || vb[i] === null ? null : v - vb[i]));
    }
    return null;
  }

  function visible() {
    const e = ex(), n = e.ids.length, q = state.q.toLowerCase();
    const mask = FLAGS.filter(([name]) => state.f.split(',').includes(name)).reduce((m, [, bit]) => m | bit, 0);
    const fr = state.fr ? [runIndex(state.fr)].filter((k) => k >= 0) : e.runs.map((_, k) => k);
    const hay = q ? haystack() : null;
    const idx = [];
    for (let i = 0; i < n; i++) {
      if (hay && !hay[i].includes(q)) continue;
      if (mask && !fr.some((k) => e.runs[k].flags[i] & mask)) continue;
      idx.push(i);
    }
    const vals = sortValues();
    if (vals) {
      const sign = state.dir === 'asc' ? 1 : -1;
      idx.sort((x, y) => {
        const a = vals[x], b = vals[y];
        if (a === null || b === null) return a === b ? x - y : (a === null ? 1 : -1);  // missing last
        return a === b ? x - y : sign * (a - b);
      });
    }
    return { idx, vals };
  }

  // --- the explorer ---------------------------------------------------------------------------------
  function option(select, value, text, selected) {
    const o = el('option', { value }, text);
    if (selected) o.selected = true;
    select.append(o);
  }

  function metricNames() {
    const names = [];
    for (const r of ex().runs) for (const m of Object.keys(r.scores)) if (!names.includes(m)) names.push(m);
    return names;
  }

  function buildControls(box) {
    box.replaceChildren();
    const e = ex();
    if (DATA.sections.length > 1) {
      const sel = el('select', { id: 'section-select' });
      DATA.sections.forEach((s, k) => option(sel, String(k), s.title, String(k) === state.s));
      sel.onchange = () => { Object.assign(state, DEFAULTS, { s: sel.value }); refresh(true); };
      box.append(sel);
    }
    const search = el('input', { id: 'search', type: 'search', placeholder: 'search captions', value: state.q });
    search.value = state.q;
    search.oninput = () => { state.q = search.value; state.page = '0'; refresh(false); };
    box.append(search);
    const flags = el('span', { class: 'flags' });
    for (const [name] of FLAGS) {
      const label = el('label');
      const cb = el('input', { type: 'checkbox', id: 'flag-' + name });
      cb.checked = state.f.split(',').includes(name);
      cb.onchange = () => {
        const on = FLAGS.map(([f]) => f).filter((f) => document.getElementById('flag-' + f).checked);
        state.f = on.join(','); state.page = '0'; refresh(false);
      };
      label.append(cb, document.createTextNode(' ' + name));
      flags.append(label, document.createTextNode(' '));
    }
    const fr = el('select', { id: 'flag-run' });
    option(fr, '', 'in any run', state.fr === '');
    for (const r of e.runs) option(fr, r.name, 'in ' + r.name, state.fr === r.name);
    fr.onchange = () => { state.fr = fr.value; state.page = '0'; refresh(false); };
    flags.append(fr);
    box.append(flags);
    box.append(diffControls(e));
    box.append(el('span', { id: 'count' }), el('span', { class: 'pager', id: 'pager' }));
  }

  function diffControls(e) {
    const span = el('span', { class: 'diff-controls' });
    const a = el('select', { id: 'diff-a' }), b = el('select', { id: 'diff-b' }), m = el('select', { id: 'diff-metric' });
    e.runs.forEach((r, k) => {
      option(a, r.name, r.name, state.sort === 'diff' ? state.a === r.name : k === 0);
      option(b, r.name, r.name, state.sort === 'diff' ? state.b === r.name : k === Math.min(1, e.runs.length - 1));
    });
    for (const name of metricNames()) option(m, name, name, state.sort === 'diff' && state.m === name);
    const go = el('button', { id: 'diff-sort', type: 'button' }, 'sort by difference');
    go.onclick = () => {
      Object.assign(state, { sort: 'diff', a: a.value, b: b.value, m: m.value, dir: 'desc', page: '0' });
      refresh(false);
    };
    span.append(a, document.createTextNode(' minus '), b, document.createTextNode(' '), m, document.createTextNode(' '), go);
    return span;
  }

  function headerRow(showDiff) {
    const tr = el('tr');
    tr.append(el('th', { class: 'col-image' }, 'Image'));
    if (showDiff) tr.append(el('th', { class: 'col-diff' }, state.a + ' − ' + state.b + ' ' + state.m));
    tr.append(el('th', { class: 'col-refs' }, 'References'));
    for (const r of ex().runs) {
      const th = el('th', { class: 'col-run' });
      th.append(el('div', { class: 'run-name', title: r.prompt || '' }, r.name));
      for (const m of Object.keys(r.scores)) {
        const active = state.sort === 'run' && state.run === r.name && state.m === m;
        const b = el('button', { type: 'button', class: 'sort-btn' + (active ? ' active' : ''), 'data-run': r.name, 'data-metric': m },
          m + (active ? (state.dir === 'asc' ? ' ▲' : ' ▼') : ''));
        b.onclick = () => {
          const dir = active && state.dir === 'desc' ? 'asc' : 'desc';
          Object.assign(state, { sort: 'run', run: r.name, m, dir, page: '0' });
          refresh(false);
        };
        th.append(b);
      }
      tr.append(th);
    }
    return tr;
  }

  function imageRow(i, vals, showDiff) {
    const e = ex();
    const tr = el('tr', { 'data-image-id': e.ids[i], 'data-index': String(i) });
    const td = el('td', { class: 'col-image' });
    const open = el('button', { type: 'button', class: 'thumb', title: 'open the full image' });
    if (e.thumbs[i]) open.append(el('img', { src: e.thumbs[i], alt: e.ids[i], loading: 'lazy' }));
    else open.append(el('span', null, 'no image'));
    open.onclick = () => { state.img = e.ids[i]; refresh(false); };
    td.append(open, el('div', { class: 'image-id' }, e.ids[i]));
    tr.append(td);
    if (showDiff) tr.append(el('td', { class: 'diff' }, fmt(vals[i])));
    const refs = el('td');
    const ol = el('ol', { class: 'refs' });
    for (const ref of e.refs[i]) ol.append(el('li', null, ref));
    refs.append(ol);
    tr.append(refs);
    for (const r of e.runs) {
      const cell = el('td', { 'data-run': r.name });
      cell.append(el('div', { class: 'caption' }, r.captions[i]));
      const sc = el('div', { class: 'scores' });
      sc.textContent = Object.keys(r.scores).map((m) => m + ' ' + fmt(r.scores[m][i])).join(' · ');
      cell.append(sc);
      for (const [name, bit] of FLAGS) if (r.flags[i] & bit) cell.append(el('span', { class: 'badge' }, name));
      tr.append(cell);
    }
    return tr;
  }

  function renderRows() {
    const t0 = performance.now();
    const { idx, vals } = visible();
    const pages = Math.max(1, Math.ceil(idx.length / PAGE));
    let page = Math.min(Math.max(0, parseInt(state.page, 10) || 0), pages - 1);
    state.page = String(page);
    const showDiff = state.sort === 'diff' && vals !== null;
    const table = document.getElementById('explorer-table');
    const thead = el('thead');
    thead.append(headerRow(showDiff));
    const tbody = el('tbody');
    for (const i of idx.slice(page * PAGE, (page + 1) * PAGE)) tbody.append(imageRow(i, vals, showDiff));
    table.replaceChildren(thead, tbody);
    document.getElementById('count').textContent = idx.length + ' of ' + ex().ids.length + ' images';
    renderPager(page, pages);
    window.benchExplorer.lastRenderMs = performance.now() - t0;
  }

  function renderPager(page, pages) {
    const box = document.getElementById('pager');
    box.replaceChildren();
    const go = (p) => () => { state.page = String(p); refresh(false); };
    const prev = el('button', { type: 'button', id: 'page-prev' }, '‹');
    prev.disabled = page === 0;
    prev.onclick = go(page - 1);
    const next = el('button', { type: 'button', id: 'page-next' }, '›');
    next.disabled = page >= pages - 1;
    next.onclick = go(page + 1);
    box.append(prev, el('span', { id: 'page-label' }, ' page ' + (page + 1) + ' of ' + pages + ' '), next);
  }

  // --- the full image, with bench attend's maps where they exist -----------------------------------
  function renderViewer() {
    const viewer = document.getElementById('viewer');
    const e = ex(), i = e.ids.indexOf(state.img);
    viewer.replaceChildren();
    viewer.classList.toggle('open', i >= 0);
    if (i < 0) return;
    const panel = el('div', { class: 'panel', id: 'viewer-panel' });
    const close = el('button', { type: 'button', id: 'viewer-close' }, 'close');
    close.onclick = () => { state.img = ''; refresh(false); };
    panel.append(close, el('h3', null, 'Image ' + e.ids[i]));
    if (e.images[i] || e.thumbs[i]) panel.append(el('img', { class: 'full', src: e.images[i] || e.thumbs[i], alt: e.ids[i] }));
    const dl = el('dl');
    for (const r of e.runs) {
      dl.append(el('dt', null, r.name), el('dd', { class: 'caption' }, r.captions[i]));
      const map = r.attend[String(i)];
      if (map) {
        const dd = el('dd', { class: 'attend' });
        dd.append(el('div', null, 'attention maps (bench attend)'), el('img', { src: map, alt: 'attention maps of ' + r.name }));
        dl.append(dd);
      }
    }
    dl.append(el('dt', null, 'References'));
    for (const ref of e.refs[i]) dl.append(el('dd', null, ref));
    panel.append(dl);
    viewer.append(panel);
  }

  function refresh(rebuild) {
    if (rebuild) buildControls(document.getElementById('controls'));
    renderRows();
    renderViewer();
    writeHash();
  }

  function main() {
    window.benchExplorer = { state, visibleIds: () => visible().idx.map((i) => ex().ids[i]), lastRenderMs: null };
    document.getElementById('generated').textContent = DATA.generated;
    renderReport(document.getElementById('report'));
    readHash();
    refresh(true);
    window.addEventListener('hashchange', () => { readHash(); refresh(true); });
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && state.img) { state.img = ''; refresh(false); }
    });
    window.benchExplorer.firstRenderMs = performance.now();  // since navigation start
  }
  main();
})();
