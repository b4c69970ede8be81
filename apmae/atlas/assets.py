"""The atlas page's own CSS and JavaScript, inlined into every page (no network when it is viewed).

The script reads the page's JSON (``<script id="atlas-data">``) and draws:
the L x H grid (``#grid``, one ``.cell`` per head, coloured by the chosen
column), the sortable, filterable table (``#table``) and the detail panel
(``#panel``) of the head last clicked. Pattern thumbnails are uint8 arrays in
base64, drawn on a canvas only when a head's panel opens, so a page of
thousands of heads opens without decoding thousands of images.
"""

CSS = """
body{font:13px system-ui,sans-serif;margin:12px;color:#222}
h1{font-size:18px;margin:0 0 4px} .sub{color:#666;margin-bottom:8px}
#top{display:flex;gap:16px;align-items:flex-start}
#left{flex:0 0 auto;max-width:56vw;overflow:auto}
#panel{flex:1 1 auto;min-width:320px;border-left:1px solid #ddd;padding-left:12px}
#grid{display:grid;gap:1px;background:#fff;margin-top:6px}
.cell{width:var(--cell);height:var(--cell);cursor:pointer}
.cell.sel{outline:2px solid #e00;outline-offset:-1px}
.cell.na{background:repeating-linear-gradient(45deg,#eee,#eee 2px,#fff 2px,#fff 4px)}
.lab{font-size:9px;color:#666;text-align:right;padding-right:2px;line-height:var(--cell)}
#legend{display:flex;gap:6px;align-items:center;margin:4px 0;font-size:11px}
#bar{width:160px;height:10px}
table{border-collapse:collapse;font-size:12px}
th,td{padding:2px 6px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#f6f6f6;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
#tablebox{max-height:40vh;overflow:auto;margin-top:10px;border:1px solid #ddd}
tr:hover{background:#f3f7ff;cursor:pointer}
.missing{color:#a60} canvas.pat{image-rendering:pixelated;border:1px solid #ccc}
.fam{display:inline-block;margin:2px;text-align:center;font-size:10px}
.why{color:#666;font-size:11px} td.why{white-space:normal;text-align:left}
"""

SCRIPT = r"""
(function(){
const D = JSON.parse(document.getElementById('atlas-data').textContent);
const L = D.n_layers, H = D.n_heads, N = L * H;
const cols = D.columns, byName = {};
cols.forEach(c => { byName[c.name] = c; });
const VIR = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
const DIV = [[33,102,172],[146,197,222],[247,247,247],[244,165,130],[178,24,43]];
const CAT = ['#4e79a7','#f28e2b','#e15759','#76b7b2','#59a14f','#edc948','#b07aa1','#ff9da7','#9c755f'];
function ramp(stops, t){ t = Math.min(1, Math.max(0, t)); const x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const a = stops[i], b = stops[i + 1]; return 'rgb(' + [0,1,2].map(k => Math.round(a[k] + f * (b[k] - a[k]))).join(',') + ')'; }
function fmt(v){ if (v === null || v === undefined) return '\u2014'; if (typeof v === 'string') return v;
  return Number.isInteger(v) ? String(v) : v.toFixed(4); }
function name(i){ return 'L' + Math.floor(i / H) + 'H' + (i % H); }
const stats = {};
cols.forEach(c => { if (!c.numeric) return; const v = c.values.filter(x => x !== null).sort((a, b) => a - b);
  stats[c.name] = {sorted: v, min: v[0], max: v[v.length - 1], median: v.length ? v[Math.floor((v.length - 1) / 2)] : null}; });
function rank(c, v){ const s = stats[c].sorted; let lo = 0, hi = s.length; while (lo < hi){ const m = (lo + hi) >> 1; if (s[m] > v) hi = m; else lo = m + 1; }
  return lo; }
function colour(c, i){ const v = c.values[i]; if (v === null) return null;
  if (!c.numeric){ const cats = stats['cat:' + c.name]; return v === 'none' ? '#ddd' : CAT[cats.indexOf(v) % CAT.length]; }
  const s = stats[c.name];
  if (c.signed){ const b = Math.max(Math.abs(s.min), Math.abs(s.max)) || 1; return ramp(DIV, 0.5 + v / (2 * b)); }
  return ramp(VIR, s.max > s.min ? (v - s.min) / (s.max - s.min) : 0.5); }
cols.forEach(c => { if (!c.numeric) stats['cat:' + c.name] = [...new Set(c.values.filter(v => v !== null && v !== 'none'))].sort(); });

const pick = document.getElementById('colour');
cols.forEach(c => { const o = document.createElement('option'); o.value = c.name; o.textContent = c.name; pick.appendChild(o); });
pick.value = byName[D.colour] ? D.colour : (cols[0] ? cols[0].name : '');
const grid = document.getElementById('grid');
const cell = Math.max(6, Math.min(22, Math.floor(900 / Math.max(H, 1))));
grid.style.setProperty('--cell', cell + 'px');
grid.style.gridTemplateColumns = '28px repeat(' + H + ', ' + cell + 'px)';
const cells = [], parts = [];
for (let l = 0; l < L; l++){ parts.push('<div class="lab">' + (l % 5 === 0 ? l : '') + '</div>');
  for (let h = 0; h < H; h++){ parts.push('<div class="cell" data-i="' + (l * H + h) + '" title="L' + l + 'H' + h + '"></div>'); } }
grid.innerHTML = parts.join('');
grid.querySelectorAll('.cell').forEach(e => { cells[+e.dataset.i] = e; });
grid.addEventListener('click', e => { const t = e.target.closest('.cell'); if (t) show(+t.dataset.i); });
function paint(){ const c = byName[pick.value]; if (!c) return;
  for (let i = 0; i < N; i++){ const k = colour(c, i); cells[i].style.background = k || ''; cells[i].classList.toggle('na', k === null);
    cells[i].title = name(i) + ' ' + c.name + ' ' + fmt(c.values[i]); }
  const lg = document.getElementById('legend');
  if (c.numeric){ const s = stats[c.name], b = Math.max(Math.abs(s.min), Math.abs(s.max));
    lg.innerHTML = '<span>' + fmt(c.signed ? -b : s.min) + '</span><canvas id="bar" width="160" height="10"></canvas><span>' + fmt(c.signed ? b : s.max) + '</span><span class="why">' + c.note + '</span>';
    const g = document.getElementById('bar').getContext('2d');
    for (let x = 0; x < 160; x++){ g.fillStyle = ramp(c.signed ? DIV : VIR, x / 159); g.fillRect(x, 0, 1, 10); } }
  else { lg.innerHTML = stats['cat:' + c.name].map((v, j) => '<span style="color:' + CAT[j % CAT.length] + '">\u25a0 ' + v + '</span>').join(' ') + ' <span>\u25a0 none</span>'; } }
pick.addEventListener('change', paint);

let sortCol = null, sortDir = -1;
const filt = document.getElementById('filter');
function passes(i, f){ if (!f) return true;
  const m = f.match(/^\s*([\w.]+)\s*(>=|<=|>|<|=)\s*(-?[\d.eE+-]+)\s*$/);
  if (m && byName[m[1]] && byName[m[1]].numeric){ const v = byName[m[1]].values[i], x = parseFloat(m[3]); if (v === null) return false;
    return {'>=': v >= x, '<=': v <= x, '>': v > x, '<': v < x, '=': v === x}[m[2]]; }
  const q = f.toLowerCase(); if (name(i).toLowerCase() === q || name(i).toLowerCase().startsWith(q + 'h')) return true;
  return cols.some(c => !c.numeric && String(c.values[i]).toLowerCase().includes(q)); }
function table(){ const f = filt.value; let rows = []; for (let i = 0; i < N; i++) if (passes(i, f)) rows.push(i);
  if (sortCol){ const v = byName[sortCol].values; rows.sort((a, b) => { const x = v[a], y = v[b];
    if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : x > y ? 1 : 0) * sortDir; }); }
  const head = '<tr><th data-c="">head</th>' + cols.map(c => '<th data-c="' + c.name + '" title="' + c.note + '">' + c.name + (sortCol === c.name ? (sortDir < 0 ? ' \u25bc' : ' \u25b2') : '') + '</th>').join('') + '</tr>';
  const body = rows.map(i => '<tr data-i="' + i + '"><td>' + name(i) + '</td>' + cols.map(c => '<td>' + fmt(c.values[i]) + '</td>').join('') + '</tr>').join('');
  document.getElementById('table').innerHTML = head + body;
  document.getElementById('count').textContent = rows.length + ' of ' + N + ' heads'; }
document.getElementById('table').addEventListener('click', e => { const th = e.target.closest('th');
  if (th){ const c = th.dataset.c; if (!c) return; sortDir = sortCol === c ? -sortDir : -1; sortCol = c; table(); return; }
  const tr = e.target.closest('tr'); if (tr && tr.dataset.i) show(+tr.dataset.i); });
filt.addEventListener('input', table);

function bytes(b64){ const s = atob(b64), out = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i); return out; }
let meanBytes = null;
function draw(px, side, scale){ const c = document.createElement('canvas'); c.width = side; c.height = side; c.className = 'pat';
  c.style.width = c.style.height = side * scale + 'px'; const g = c.getContext('2d'), img = g.createImageData(side, side);
  for (let j = 0; j < side * side; j++){ const rgb = ramp(VIR, px[j] / 255).slice(4, -1).split(',');
    img.data[4 * j] = +rgb[0]; img.data[4 * j + 1] = +rgb[1]; img.data[4 * j + 2] = +rgb[2]; img.data[4 * j + 3] = px[j] ? 255 : 40; }
  g.putImageData(img, 0, 0); return c; }
function show(i){ cells.forEach(e => e.classList.remove('sel')); cells[i].classList.add('sel');
  const p = document.getElementById('panel'); const T = D.thumbs; p.innerHTML = '';
  const h = document.createElement('h2'); h.id = 'panel-head'; h.textContent = name(i); p.appendChild(h);
  const pat = document.createElement('div'); p.appendChild(pat);
  if (T.mean){ if (!meanBytes) meanBytes = bytes(T.mean); const g = T.mean_side;
    pat.innerHTML = '<div class="why">mean pattern over ' + T.mean_rows + ' scenarios (log-normalised, ' + T.seq_len + ' \u2192 ' + g + ' px)</div>';
    pat.appendChild(draw(meanBytes.subarray(i * g * g, (i + 1) * g * g), g, Math.max(1, Math.floor(160 / g)))); }
  else pat.innerHTML = '<div class="missing">mean pattern: missing (' + T.why + ')</div>';
  const fam = document.createElement('div'); p.appendChild(fam); const key = Math.floor(i / H) + '.' + (i % H);
  if (T.families && T.families[key]){ const g = T.medoid_side, px = bytes(T.families[key]), n = px.length / (g * g);
    fam.innerHTML = '<div class="why">family medoids (' + g + ' px), largest first</div>';
    for (let k = 0; k < n; k++){ const box = document.createElement('span'); box.className = 'fam';
      box.appendChild(draw(px.subarray(k * g * g, (k + 1) * g * g), g, 3)); box.appendChild(document.createElement('br'));
      box.appendChild(document.createTextNode(T.family_sizes[key][k] + ' scen.')); fam.appendChild(box); } }
  else fam.innerHTML = '<div class="missing">family medoids: ' + (T.families ? 'none for this head' : 'missing (' + T.families_why + ')') + '</div>';
  const rows = cols.map(c => { const v = c.values[i];
    if (!c.numeric) return '<tr><td>' + c.name + '</td><td class="value">' + fmt(v) + '</td><td colspan="2" class="why">' + c.note + '</td></tr>';
    const s = stats[c.name], r = v === null ? '' : 'rank ' + (s.sorted.length - rank(c.name, v) + 1) + ' of ' + s.sorted.length;
    const ref = c.reference === null ? '' : ' \u00b7 reference ' + fmt(c.reference);
    return '<tr><td title="' + c.source + '">' + c.name + '</td><td class="value">' + fmt(v) + '</td><td>' + r + '</td><td class="why">model median ' + fmt(s.median) + ' [' + fmt(s.min) + ', ' + fmt(s.max) + ']' + ref + '</td></tr>'; });
  const miss = Object.entries(D.missing).map(([k, why]) => '<tr class="missing"><td>' + k + '</td><td>missing</td><td colspan="2" class="why">' + why + '</td></tr>');
  const t = document.createElement('table'); t.id = 'panel-table';
  t.innerHTML = '<tr><th>metric</th><th>value</th><th>among heads</th><th>model distribution</th></tr>' + rows.join('') + miss.join('');
  p.appendChild(t); }
paint(); table();
document.body.dataset.ready = '1';
performance.mark('atlas-ready');
})();
"""

__all__ = ["CSS", "SCRIPT"]
