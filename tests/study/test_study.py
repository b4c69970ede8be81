"""The whole study on a tiny slice: two tiny trained llamas, a few dozen Java files, every stage in seconds."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from apmae.study import run as study_run
from tests.conftest import _causal_tokenizer
from tests.mining.conftest import write_corpus
from tests.study.helpers import trained_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("pilot", "mining", "apmae", "encodings", "protocol", "interventions", "patterns", "atlas", "report")
SETTINGS = {"n_scenarios": 150, "noise": 10, "pilot_per_task": 4, "floor": 4, "cap": 30, "seq_len": 64,
            "max_label_tokens": 8, "max_per_file": 2, "splits": [0.5, 0.2, 0.3], "head_sample": "layerwise:0.5",
            "apmae_steps": 4, "interventions": 30, "intervention_fractions": [0.2, 0.5], "random_sets": 3,
            "pattern_scenarios": 60, "reduction": "pca"}
PROTOCOL = {"n_repeats": 1, "n_splits": 3, "inner_splits": 2, "permutations": 12, "bootstrap_resamples": 100,
            "workers": 1}
NET = ("{patch_size: 8, enc_dim: 32, enc_depth: 1, enc_heads: 2, enc_mlp: 64, dec_dim: 32, dec_depth: 1, "
       "dec_heads: 2, dec_mlp: 64}")


def _argv(root: Path) -> list[str]:
    return ["--study-dir", str(root / "study"), "--corpus", str(root / "java"), "--target", str(root / "target"),
            "--cross-target", str(root / "cross"), "--config", str(ROOT / "configs" / "smoke.yaml"),
            "--config", str(ROOT / "configs" / "study" / "apmae.yaml"), "--settings", json.dumps(SETTINGS),
            "--protocol", json.dumps(PROTOCOL), "--model.init_args.net_overrides", NET]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    tokenizer = _causal_tokenizer(adds_bos=True)
    texts = [p.read_text() for p in write_corpus(root / "java", n_copies=8)]
    trained_tiny_llama(tokenizer, texts, root / "target")
    trained_tiny_llama(tokenizer, texts, root / "cross", heads=2, seed=1)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)  # the fit's stray relative paths (lightning_logs, mlruns) stay in the study's folder
    try:
        assert study_run.main(_argv(root)) == 0
        yield root
    finally:
        os.chdir(cwd)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _report(root: Path) -> str:
    return (root / "study" / "report" / "claims.md").read_text()


def _without_times(text: str) -> str:
    """The report but its clock readings (stage times, seconds a step took): what a resumed study must repeat."""
    lines = [line for line in text.splitlines() if not line.startswith("- stage times")]
    return re.sub(r"\d+(\.\d+)? s\b", "<t> s", "\n".join(lines))


@pytest.mark.slow
def test_the_study_reports_five_claims_each_with_a_verdict_by_rule(tiny_study):
    text = _report(tiny_study)
    for key in ("i", "ii", "iii", "iv", "v"):
        section = text.split(f"## ({key}) ")[1].split("\n## ")[0]
        assert any(f"Verdict: **{v}**" in section for v in ("supported", "contradicted", "inconclusive at this power"))
        assert "Rule: " in section
    assert "| task | pilot correct | pilot band | mined | correct (study) |" in text
    header = text.splitlines()[2]
    assert header.count("corpus: ") == 1 and "sha256" in header
    assert re.search(r"\d+ scenarios from \d+ source files: \d+ train, \d+ val, \d+ test \(split by source file\)",
                     header)
    page = (tiny_study / "study" / "report" / "claims.html").read_text()
    assert "<h2>(iv) A probe on AP-MAE encodings" in page and "../atlas/index.html" in page
    atlas = (tiny_study / "study" / "atlas" / "index.html").read_text()
    assert "../report/claims.html" in atlas
    for stage in STAGES:
        record = json.loads((tiny_study / "study" / "stages" / f"{stage}.json").read_text())
        assert record["seconds"] >= 0 and record["result"]
    assert not (tiny_study / "study" / "cache").exists()  # the sampled training cache is removed once exported
    encodings = list((tiny_study / "study" / "encodings").glob("*.rank0.h5"))  # <target>.<encoder hash>.rank0.h5
    assert len(encodings) == 1 and len(encodings[0].name.split(".")) == 4
    assert [p for p in (tiny_study / "study").rglob("*.h5")] == encodings  # no pattern cache left


@pytest.mark.slow
def test_the_report_is_logged_to_the_study_run(tiny_study):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tiny_study / 'mlflow.db'}")
    run_id = json.loads((tiny_study / "study" / "stages" / "report.json").read_text())["result"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.run_name == "study/target" and run.data.tags["apmae.variant"] == "study"
    assert {f"headline/claim_{k}_verdict" for k in ("i", "ii", "iii", "iv", "v")} <= set(run.data.metrics)
    assert run.data.params["corpus.origin"] == "CORPUS"
    names = {a.path for a in client.list_artifacts(run_id, "report")}
    assert names == {"report/claims.md", "report/claims.html"}


@pytest.mark.slow
def test_a_rerun_reuses_every_stage_and_a_resumed_study_writes_the_same_report(tiny_study, capsys):
    first = _report(tiny_study)
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(tiny_study)
    try:
        assert study_run.main(_argv(tiny_study)) == 0
        out = capsys.readouterr().out
        assert all(f"[study] {stage}: finished before" in out for stage in STAGES)
        assert _report(tiny_study) == first
        # a study killed during the interventions: their record and every later one is missing
        for stage in STAGES[STAGES.index("interventions"):]:
            (tiny_study / "study" / "stages" / f"{stage}.json").unlink()
        for folder in ("interventions", "patterns", "atlas", "report"):
            shutil.rmtree(tiny_study / "study" / folder, ignore_errors=True)
        assert study_run.main(_argv(tiny_study)) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "[study] protocol: finished before" in out and "[study] interventions: finished before" not in out
    assert _without_times(_report(tiny_study)) == _without_times(first)


@pytest.mark.slow
def test_live_patterns_equal_the_extracted_cache_and_the_pilot_labels_the_streamed_ones(tiny_study, tmp_path):
    from apmae.cache.extract import extract
    from apmae.cache.live import LivePatterns
    from apmae.cache.store import AttentionCache
    from apmae.encodings.store import EncodingSet, EncodingSubset
    from apmae.mining.scenario_set import ScenarioSet
    from apmae.target.access import load_target

    mining = json.loads((tiny_study / "study" / "stages" / "mining.json").read_text())["result"]
    scenarios = ScenarioSet.load(mining["path"])
    target = load_target(str(tiny_study / "target"), device="cpu")
    few = scenarios.subset(np.arange(6))
    extract(target, few, tmp_path / "c.h5", {"progress": False})
    cache = AttentionCache(tmp_path / "c.h5")
    live = LivePatterns(target, few, {"scenario_index": np.arange(6)}, keep=1)
    for i in (0, 5, 0):
        np.testing.assert_allclose(live.scenario(i), cache.scenario(i), atol=4e-3)  # the cache stores bfloat16
    assert live.computed == 3 and live.pattern(5, 1, 2).shape == (few.seq_len, few.seq_len)
    path = json.loads((tiny_study / "study" / "stages" / "encodings.json").read_text())["result"]["path"]
    encodings = EncodingSet(path)
    pilot = study_run.first_token_correct(target, scenarios)
    np.testing.assert_array_equal(pilot[encodings.scenario_index], encodings.correct)
    subset = EncodingSubset(encodings, [3, 1])
    np.testing.assert_array_equal(subset.array("cls"), encodings.rows([3, 1], "cls"))
    assert list(subset.scenario_index) == list(encodings.scenario_index[[3, 1]]) and len(subset) == 2


def test_a_target_that_completes_nothing_stops_the_study_with_what_to_change():
    with pytest.raises(study_run.StudyError, match="completes none of the 3 scenarios"):
        study_run.check_both_classes(np.zeros(3, dtype=bool), "tiny")
    study_run.check_both_classes(np.array([True, False]), "tiny")


def test_pattern_rows_are_a_stratified_seeded_draw():
    task = np.repeat([0, 1, 2], 100)
    correct = np.tile([True, False], 150)
    rows = study_run.pattern_rows(task, correct, 60, seed=0)
    assert len(rows) == 60 and np.array_equal(rows, study_run.pattern_rows(task, correct, 60, seed=0))
    assert [int((task[rows] == t).sum()) for t in range(3)] == [20, 20, 20]
    assert np.array_equal(study_run.pattern_rows(task[:10], correct[:10], 60, seed=0), np.arange(10))


def test_missing_inputs_are_named_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit, match="artifacts/demo/nothing does not exist: build the demo first"):
        study_run.main(["--study-dir", str(tmp_path), "--target", "artifacts/demo/nothing"])
    with pytest.raises(SystemExit, match="--settings / --protocol"):
        study_run.main(["--study-dir", str(tmp_path), "--settings", '{"n_scenarios": 5, "noise": 10}'])
    with pytest.raises(SystemExit, match="CORPUS=.*does not exist"):
        study_run.main(["--study-dir", str(tmp_path), "--target", str(tmp_path), "--cross-target", "",
                        "--corpus", str(tmp_path / "none")])
    assert study_run.looks_local("./m") and study_run.looks_local("/abs/m") and not study_run.looks_local("org/model")
