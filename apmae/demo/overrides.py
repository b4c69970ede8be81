"""Command-line overrides that point the demo's configs at the inputs ``make demo`` built.

Both demo stages read the same inputs: the AP-MAE fit (:mod:`apmae.demo.run`) and the
probe stacked on it (:mod:`apmae.demo.probe_report`) must mine the very scenarios and
read the very caches, so the overrides naming them live here, once.
"""

from __future__ import annotations

from pathlib import Path


def input_overrides(demo_dir: str) -> list[str]:
    """CLI overrides pointing a demo config's target, caches and scenarios at ``demo_dir``."""
    d = Path(demo_dir)
    return [
        f"--data.init_args.target={d / 'smollm2'}",
        f"--data.init_args.cache_dir={d / 'cache'}",
        f"--data.init_args.scenarios.init_args.sources={d / 'eval-corpus'}",
        f"--data.init_args.scenarios.init_args.tokenizer={d / 'smollm2'}",
        f"--data.init_args.scenarios.init_args.cache_dir={d / 'scenarios'}",
    ]
