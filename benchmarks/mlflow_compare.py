"""Two AP-MAE runs side by side in the MLflow UI, checked in headless Chromium; screenshots kept.

Needs a built demo (``make demo``: SmolLM2's and target-a's caches) and Chromium with chromedriver.
Fits two short AP-MAE runs on the demo's caches (the demo config and its row-emphasis variant,
``--steps`` steps each, exports into the output folder so the demo's own AP-MAE is untouched) into a
fresh MLflow store under ``--out``, starts ``mlflow server`` on it, and opens in headless Chromium:

- the experiment's page, which the ``mlflow.experimentKind`` tag turns into MLflow's training view;
- the compare page of the two runs, with their ``headline/`` metrics.

Prints one JSON object (what each page showed; also written to ``mlflow_compare.json``) and writes
the screenshots ``experiment_default.png`` (the address without the view), ``experiment.png``,
``compare_top.png`` and ``compare.png`` (scrolled to the metrics, ``headline/`` first).

    python benchmarks/mlflow_compare.py --out benchmarks/output/mlflow
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.atlas.browser: the browser test's driver

from apmae.demo.run import demo_overrides  # noqa: E402
from tests.atlas import browser  # noqa: E402

VARIANTS = {"plain": [], "row-emphasis": ["--config", "configs/demo/apmae_row_emphasis.yaml"]}
EXPERIMENT = "demo-apmae"
TRAINING_VIEW = "workflowType=machine_learning"


def fit(variant: str, extra: list[str], out: Path, steps: int, env: dict[str, str]) -> float:
    """One short AP-MAE fit of the demo config (and ``extra`` overlays) into the store under ``out``."""
    args = [sys.executable, "-m", "apmae", "fit", "--config", "configs/demo/apmae.yaml", *extra,
            *demo_overrides("artifacts/demo"), f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
            "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={_relative(out / 'runs')}",
            f"--model.init_args.recipe.export_dir={_relative(out / variant)}"]
    start = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _relative(path: Path) -> Path:
    """``path`` from the repository root (the runs record it; the screenshots show it)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(store: str, out: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                               "--default-artifact-root", str(_relative(out / "artifacts")), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit("mlflow server did not answer within 120 s")


def page_text(driver, url: str, shot: Path, wait_for: list[str], timeout: float = 60.0, scroll_to: str = "") -> str:
    """Open ``url``, wait until every string of ``wait_for`` is on the page (or ``timeout``), screenshot it
    (scrolled to the first element whose own text is ``scroll_to``, when given)."""
    driver.get(url)
    start, text = time.time(), ""
    while time.time() - start < timeout:
        text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
        if all(w in text for w in wait_for):
            break
        time.sleep(1)
    time.sleep(2)  # let the charts finish drawing
    if scroll_to:
        driver.execute_script("""const want = arguments[0];
            const hit = [...document.querySelectorAll('*')].filter(e => e.textContent.trim() === want).pop();
            if (hit) hit.scrollIntoView({block: 'start'});""", scroll_to)
        time.sleep(1)
    driver.save_screenshot(str(shot))
    return driver.execute_script("return document.body.innerText") or text


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n")
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _training_view(text: str) -> bool:
    """Whether a page shows MLflow's "Model training" sidebar (runs, models) rather than the GenAI one."""
    lines = _sidebar(text)
    return "Model registry" in lines and "Evaluation runs" not in lines


def _sidebar(text: str) -> list[str]:
    """The first lines of a page's text: MLflow's sidebar and the page's tabs."""
    return [line for line in text.split("\n")[:24] if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/output/mlflow")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--reuse", action="store_true", help="open the runs a previous call left in --out")
    args = parser.parse_args()
    why = browser.available()
    if why:
        raise SystemExit(f"cannot check the UI: {why}")
    if not (ROOT / "artifacts/demo/cache").is_dir():
        raise SystemExit("artifacts/demo/cache is missing: run `make demo` first (the runs train on its caches)")
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{_relative(out / 'mlflow.db')}"  # relative: the fits and the server run in ROOT
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    seconds = {}
    if args.reuse and (out / "mlflow_compare.json").exists():  # the fits' times, from the call that ran them
        seconds = json.loads((out / "mlflow_compare.json").read_text()).get("fit_seconds", {})
    if not (args.reuse and (out / "mlflow.db").exists()):
        (out / "mlflow.db").unlink(missing_ok=True)
        seconds = {name: fit(name, extra, out, args.steps, env) for name, extra in VARIANTS.items()}

    import mlflow  # after the fits: they run in their own processes

    os.chdir(ROOT)  # the store is named relative to the repository
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    names = [r.info.run_name for r in runs]
    port = free_port()
    server = serve(store, out, port)
    driver = browser.headless_chromium(width=1600, height=1000)
    try:
        base = f"http://127.0.0.1:{port}"
        page = f"{base}/#/experiments/{experiment.experiment_id}"
        # MLflow 3.17 opens every experiment in its GenAI mode unless the browser was switched to "Model
        # training" (stored per browser) or the address asks for it: the address `make ui` prints does
        first_text = page_text(driver, page, out / "experiment_default.png", names, timeout=20)
        exp_text = page_text(driver, f"{page}?{TRAINING_VIEW}", out / "experiment.png", names)
        ids = json.dumps([r.info.run_id for r in runs])
        query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([experiment.experiment_id])})
        compare = f"{base}/#/compare-runs?{query}&{TRAINING_VIEW}"
        page_text(driver, compare, out / "compare_top.png", names)
        cmp_text = page_text(driver, compare, out / "compare.png", [*names, "headline/recon_over_trivial"],
                             scroll_to="Metrics")  # its table lists headline/ first
    finally:
        driver.quit()
        server.terminate()
    headline = sorted({k for r in runs for k in r.data.metrics if k.startswith("headline/")})
    figures = json.dumps({
        "machine": f"{platform.machine()} {_cpu_model()}", "cpus": os.cpu_count(),
        "fit_seconds": {k: round(v, 1) for k, v in seconds.items()}, "steps": args.steps,
        "experiment": EXPERIMENT, "experiment_tags": dict(experiment.tags), "runs": names,
        "metrics_per_run": [len(r.data.metrics) for r in runs], "headline_metrics": headline,
        "experiment_page_default": {"model_training_view": _training_view(first_text),
                                    "shows_both_runs": all(n in first_text for n in names),
                                    "sidebar": _sidebar(first_text)},
        "experiment_page": {"address": f"#/experiments/<id>?{TRAINING_VIEW}", "model_training_view":
                            _training_view(exp_text), "shows_both_runs": all(n in exp_text for n in names),
                            "sidebar": _sidebar(exp_text)},
        "compare_page": {"shows_both_runs": all(n in cmp_text for n in names),
                         "headline_metrics_shown": [h for h in headline if h in cmp_text]},
        "screenshots": [str((out / n).relative_to(ROOT))
                        for n in ("experiment_default.png", "experiment.png", "compare_top.png", "compare.png")],
    }, indent=1)
    (out / "mlflow_compare.json").write_text(figures + "\n")
    print(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
