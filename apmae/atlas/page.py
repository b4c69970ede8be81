"""``atlas/index.html``: one self-contained page (CSS, script and data inline) of every head of a run.

Glossary: L layers, H heads, G thumbnail side.

The page's data is one JSON object: each column's (L * H) values in
layer-major order (``null`` where a head was not measured; floats with 6
significant digits, as the head tables write them), the missing columns and
why, and the thumbnails as base64 uint8 (:mod:`apmae.atlas.thumbnails`).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from apmae.atlas.assets import CSS, SCRIPT
from apmae.atlas.sources import AtlasTable, Column
from apmae.atlas.thumbnails import Thumbnails

INTEGER = {"families", "zeroed_sets"}  # columns that count things


def _value(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(f"{float(v):.6g}")
    return v.item() if isinstance(v, np.generic) else v


def _column(c: Column) -> dict[str, Any]:
    values = [_value(v) for v in c.values.reshape(-1)]
    if c.numeric:  # whole numbers (families, counts) as integers
        values = [int(v) if c.name in INTEGER and v is not None else v for v in values]
    return {"name": c.name, "note": c.note, "source": c.source, "signed": c.signed, "reference": c.reference,
            "numeric": c.numeric, "values": values}


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


def page_data(table: AtlasTable, thumbs: Thumbnails, *, title: str, colour: str, seq_len: int | None,
              missing_patterns: str = "", links: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON object the page's script reads (``links``: text -> address, shown under the title)."""
    families = {f"{l}.{h}": _b64(np.stack(pics)) for (l, h), pics in thumbs.families.items() if pics}
    return {
        "title": title, "links": dict(links or {}), "n_layers": table.n_layers, "n_heads": table.n_heads,
        "target": table.target,
        "colour": colour, "columns": [_column(c) for c in table.columns.values()], "missing": table.missing,
        "thumbs": {"mean": None if thumbs.mean is None else _b64(thumbs.mean),
                   "mean_side": 0 if thumbs.mean is None else int(thumbs.mean.shape[-1]),
                   "mean_rows": thumbs.n_mean_rows, "seq_len": seq_len, "why": missing_patterns or "no cache given",
                   "families": families or None,
                   "medoid_side": int(next(iter(thumbs.families.values()))[0].shape[-1]) if families else 0,
                   "family_sizes": {f"{l}.{h}": s for (l, h), s in thumbs.family_sizes.items()},
                   "families_why": "no clusters/labels.npz, or no cache given"},
    }


def write_page(path: str | Path, data: dict[str, Any]) -> Path:
    """Write the page; returns its path."""
    title = html.escape(data["title"])
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    missing = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in data["missing"].items())
    links = "".join(f' <a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'
                    for text, href in (data.get("links") or {}).items())
    links = f'<div class="sub">see also:{links}</div>' if links else ""
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,"><style>{CSS}</style></head>
<body><h1>{title}</h1>{links}
<div class="sub">{data['n_layers']} layers x {data['n_heads']} heads = {data['n_layers'] * data['n_heads']} heads.
Click a cell or a table row for the head's patterns and every metric next to the model's distribution.</div>
<div id="top"><div id="left">
<label>colour by <select id="colour"></select></label><div id="legend"></div><div id="grid"></div>
<div style="margin-top:10px"><label>filter <input id="filter" size="30"
 placeholder="induction, L3, importance>0.1"></label> <span id="count"></span></div>
<div id="tablebox"><table id="table"></table></div>
{'<div class="missing">Missing columns (the run lacks their stage):<ul>' + missing + '</ul></div>' if missing else ''}
</div><div id="panel"><div class="why">No head chosen yet.</div></div></div>
<script type="application/json" id="atlas-data">{text}</script>
<script>{SCRIPT}</script></body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


__all__ = ["page_data", "write_page"]
