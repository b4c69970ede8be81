"""Size and opening time of the head atlas page at the sizes of real models, in headless Chromium.

Prints one JSON object. For each size (default: 30 x 9 = 270 heads, SmolLM2-135M;
40 x 48 = 1,920 heads, StarCoder2-15B) it writes a synthetic run with every
stage (:mod:`apmae.atlas.synthetic`: all columns, up to 3 families per head,
patterns of S = 256 tokens), builds the atlas, and reports the page's bytes,
the seconds to build it, and the opening time in headless Chromium: the median
over ``--loads`` loads of navigation start -> the page's script done drawing
the grid and the table (``ready_ms``, measured by the browser), and the wall
time of the whole request. Screenshots of the page with one head's panel open
go to ``--shots`` (PNG).

    python benchmarks/bench_atlas.py --shots artifacts/atlas-bench
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.atlas.browser: the browser test's driver

from apmae.atlas.run import build_atlas  # noqa: E402
from apmae.atlas.synthetic import SyntheticCache, write_synthetic_run  # noqa: E402
from tests.atlas import browser  # noqa: E402

SIZES = {"smollm2-135m": (30, 9), "starcoder2-15b": (40, 48)}


def measure(name: str, n_layers: int, n_heads: int, *, seq_len: int, pattern_rows: int, loads: int, shots: Path,
            driver) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_run(Path(tmp) / "run", n_layers=n_layers, n_heads=n_heads, n_rows=8)
        start = time.perf_counter()
        report = build_atlas([root], shots / name, cache=SyntheticCache(n_layers, n_heads, seq_len, n_rows=8),
                             n_pattern_rows=pattern_rows)
        build = time.perf_counter() - start
    opened = [browser.open_page(driver, report.page) for _ in range(loads)]
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    from selenium.webdriver.common.by import By  # optional dependency (the dev extra)

    layer, head = n_layers // 2, n_heads // 3
    driver.find_element(By.CSS_SELECTOR, f'#grid .cell[data-i="{layer * n_heads + head}"]').click()
    shot = shots / f"atlas_{name}.png"
    driver.save_screenshot(str(shot))
    return {"heads": n_layers * n_heads, "layers": n_layers, "heads_per_layer": n_heads, "seq_len": seq_len,
            "page_bytes": report.page.stat().st_size, "page_mb": round(report.page.stat().st_size / 1e6, 3),
            "build_seconds": round(build, 2), "ready_ms_median": round(statistics.median(o.ready_ms for o in opened), 1),
            "ready_ms": [round(o.ready_ms, 1) for o in opened],
            "wall_seconds_median": round(statistics.median(o.wall_seconds for o in opened), 3),
            "console_errors": len(errors), "screenshot": str(shot), "panel_head": f"L{layer}H{head}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--pattern-rows", type=int, default=4, help="scenarios averaged into each mean pattern")
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--shots", default="artifacts/atlas-bench")
    args = parser.parse_args()
    why = browser.available()
    if why:
        raise SystemExit(f"no headless browser: {why}")
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    driver = browser.headless_chromium()
    try:
        out = {name: measure(name, *SIZES[name], seq_len=args.seq_len, pattern_rows=args.pattern_rows,
                             loads=args.loads, shots=shots, driver=driver) for name in args.sizes}
        out["browser"] = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
