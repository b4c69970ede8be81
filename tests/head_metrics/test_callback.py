"""HeadMetrics: tables that agree with the cache, MLflow artifacts and metrics, printed lines, an untouched fit."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from apmae.cache.store import AttentionCache, cache_files
from apmae.head_metrics.distance import waad
from apmae.mining.scenario_set import SPLITS
from apmae.callbacks.head_metrics import HeadMetrics, NoValidationRows, validation_rows
from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.lit_models.apmae_module import LitAPMAE
from tests.training.conftest import MICRO_NET


def _fit(tmp_path, target_dir, target_b_dir, scenarios_path, cache_dir, callbacks, logger=False):
    torch.manual_seed(0)
    data = AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(cache_dir),
                                    extra_targets=[str(target_b_dir)], batch_size=8,
                                    extraction=ExtractionSettings(device="cpu", progress=False))
    module = LitAPMAE(seq_len=24, net_overrides=dict(MICRO_NET), baseline_batches=1)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0,
                      logger=logger, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return module, data


def _table(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_logs_tables_that_agree_with_the_cache(tmp_path, target_dir, target_b_dir, scenarios_path, cache_dir,
                                               tracking_uri, capsys):
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow import MlflowClient

    callback = HeadMetrics(n_scenarios=4, window=3, batch_size=3)
    logger = MLFlowLogger(experiment_name="head-metrics", tracking_uri=tracking_uri)
    _, data = _fit(tmp_path, target_dir, target_b_dir, scenarios_path, cache_dir, [callback], logger)
    a, b = data.val_target_names  # the short names of target_dir and target_b_dir
    client = MlflowClient(tracking_uri)
    listed = {x.path for folder in (f"head_metrics/{a}", f"head_metrics/{b}")
              for x in client.list_artifacts(logger.run_id, folder)}
    assert {f"head_metrics/{a}/{n}" for n in ("contribution.csv", "contribution_sink_share.png", "distance.csv",
                                              "distance.png", "anchors.csv", "maps_scores.csv", "maps.png",
                                              "maps_top_pairs.csv", "maps_relations.csv")} <= listed
    assert {p for p in listed if b in p} == {p.replace(a, b) for p in listed if f"{a}/maps" in p}
    metrics = client.get_run(logger.run_id).data.metrics
    assert metrics[f"head_metrics/{a}/distance/local_heads"] + metrics[f"head_metrics/{a}/distance/global_heads"] == 8
    assert metrics[f"head_metrics/{a}/contribution/seconds"] > 0

    cache = AttentionCache(cache_files(cache_dir, a))
    rows = validation_rows(cache, 4)
    patterns = np.stack([cache.scenario(int(r)) for r in rows])  # (N, L, H, S, S) bfloat16-rounded attention
    local = tmp_path / "artifacts"
    client.download_artifacts(logger.run_id, "head_metrics", str(local))
    contribution = _table(local / f"head_metrics/{a}/contribution.csv")
    distance = _table(local / f"head_metrics/{a}/distance.csv")
    sink = patterns[..., 1:, 0].mean(-1).mean(0)  # (L, H) from the cache, not from the callback's forward
    mean_waad = waad(patterns, window=3)[..., 1:].mean(-1).mean(0)
    for row, d in zip(contribution, distance):
        layer, head = int(row["layer"]), int(row["head"])
        assert float(row["sink_attention"]) == pytest.approx(sink[layer, head], rel=1e-2, abs=1e-4)
        assert float(d["mean_waad"]) == pytest.approx(mean_waad[layer, head], rel=1e-5)
        assert d["focus"] == ("local" if mean_waad[layer, head] <= 1.5 else "global")
    _check_maps_tables(local / f"head_metrics/{b}", target_b_dir, cache)
    lines = capsys.readouterr().out.splitlines()
    starts = [f"contribution [{a}, 4 scenarios", f"WAAD/FAI [{a}, W=3, 4 scenarios", f"MAPS [{a}", f"MAPS [{b}",
              "head metrics: 4 reports"]
    assert [[line for line in lines if line.startswith(s)] for s in starts] == [[line] for line in callback.lines]
    assert set(callback.seconds) >= {f"{a}/contribution", f"{a}/distance", f"{a}/maps", f"{b}/maps"}


def _check_maps_tables(folder, target_dir, cache):
    """The MAPS tables of target-b against the relations and scores computed here from its parameters."""
    from apmae.head_metrics.maps import model_maps
    from apmae.head_metrics.relations import code_relations
    from apmae.target.access import load_target

    target = load_target(target_dir, device="cpu")
    vocab = target.model.config.vocab_size
    found = code_relations(target.tokenizer, cache.input_ids, vocab_size=vocab)
    relations = {r["relation"]: r for r in _table(folder / "maps_relations.csv")}
    assert {k: int(v["pairs"]) for k, v in relations.items()} == {
        **{r.name: len(r.pairs) for r in found.relations}, **{k: 0 for k in found.skipped}}
    assert all(relations[k]["skipped"] for k in found.skipped)
    result = model_maps(target.model, found.relations)
    for row in _table(folder / "maps_scores.csv"):
        layer, head = int(row["layer"]), int(row["head"])
        assert [float(row[n]) for n in result.relations] == pytest.approx(
            result.scores[:, layer, head].tolist(), rel=1e-5
        )


@pytest.mark.slow
def test_the_trained_model_is_the_same_with_and_without_the_callback(tmp_path, target_dir, target_b_dir,
                                                                     scenarios_path, cache_dir):
    callback = HeadMetrics(n_scenarios=2, methods=["contribution", "maps"])
    with_cb, data = _fit(tmp_path / "a", target_dir, target_b_dir, scenarios_path, cache_dir, [callback])
    without, _ = _fit(tmp_path / "b", target_dir, target_b_dir, scenarios_path, cache_dir, [])
    for (name, a), (_, b) in zip(with_cb.state_dict().items(), without.state_dict().items()):
        assert torch.equal(a, b), name
    # no MLflow logger: the artifacts land under the trainer's default_root_dir
    name = data.train_target_name
    assert (tmp_path / f"a/head_metrics/{name}/contribution.csv").is_file()
    assert not (tmp_path / f"a/head_metrics/{name}/distance.csv").exists()


def test_validation_rows_spread_over_the_split(cache_dir, target_dir):
    from apmae.datamodules.attention_cache import target_short_name

    cache = AttentionCache(cache_files(cache_dir, target_short_name(str(target_dir))))
    val = np.flatnonzero(cache.split == SPLITS.index("val"))
    rows = validation_rows(cache, 3)
    assert rows.tolist() == [val[0], val[len(val) // 2 if len(val) % 2 else round((len(val) - 1) / 2)], val[-1]]
    assert validation_rows(cache, 1000).tolist() == val.tolist()


def test_validation_rows_by_hand():
    """Seven validation rows 1, 2, 4, 5, 6, 8, 9: three spread evenly are the first, the middle and the last."""
    cache = SimpleNamespace(split=np.array([0, 1, 1, 0, 1, 1, 1, 2, 1, 1]))
    assert validation_rows(cache, 3).tolist() == [1, 5, 9]
    assert validation_rows(cache, 4).tolist() == [1, 4, 6, 9]  # positions 0, 2, 4, 6 of the seven
    assert validation_rows(cache, 2).tolist() == [1, 9]
    assert validation_rows(cache, 7).tolist() == [1, 2, 4, 5, 6, 8, 9]
    with pytest.raises(ValueError, match="no validation rows"):
        validation_rows(SimpleNamespace(split=np.array([0, 2, 2])), 3)


@pytest.mark.parametrize("kwargs, match", [({"methods": ["probes"]}, "methods"), ({"window": 0}, "window"),
                                           ({"local_threshold": 2.0}, "local_threshold"),
                                           ({"n_scenarios": 0}, "n_scenarios")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadMetrics(**kwargs)


def test_a_cache_without_validation_rows_skips_the_metrics_and_the_fit_goes_on(tmp_path, target, scenarios):
    """Small data can leave the validation split empty: a warning with the counts, no metrics, the fit runs."""
    from apmae.cache.extract import extract
    from apmae.mining.scenario_set import ScenarioSet

    cols = {k: getattr(scenarios, k) for k in ("input_ids", "label_ids", "label_len", "middle_pos", "task",
                                               "source_id", "span_start", "span_end")}
    no_val = ScenarioSet(**cols, split=np.where(scenarios.split == 1, 0, scenarios.split).astype(np.int8),
                         task_names=scenarios.task_names, meta=scenarios.meta)
    path = extract(target, no_val, tmp_path / "t.rank0.h5", ExtractionSettings(progress=False)).path
    with pytest.raises(NoValidationRows, match=r"no validation rows \(rows per split: \{'train': \d+, 'val': 0"):
        validation_rows(AttentionCache(path), 4)
    callback = HeadMetrics(n_scenarios=2, methods=["distance"], cache=str(path), target=target.name)

    class Stub:
        datamodule = None
        loggers = []
        global_step = 0
        default_root_dir = str(tmp_path)

    with pytest.warns(UserWarning, match="head metrics skipped: the attention cache has no validation rows"):
        callback._run(Stub())
    assert callback.lines and callback.lines[0].startswith("head metrics skipped") and not callback.artifacts


def test_maps_of_an_extra_target_reads_the_corpus_in_that_targets_own_tokens(monkeypatch):
    """A target with another tokenizer has a cache of its own: MAPS mines its relations from those ids."""
    import apmae.callbacks.head_metrics as module

    seen = {}

    def fake_maps(model, corpus_ids, *, name, **kwargs):
        seen[name] = corpus_ids
        return SimpleNamespace(method="maps", seconds=0.0)

    monkeypatch.setattr(module.suite, "maps_report", fake_maps)
    monkeypatch.setattr(HeadMetrics, "_load", lambda self, path: SimpleNamespace(name=path))
    monkeypatch.setattr(module, "validation_rows", lambda cache, n: np.arange(2))
    main = SimpleNamespace(input_ids=np.full((2, 4), 40000))  # ids of a 49k vocabulary
    other = SimpleNamespace(input_ids=np.full((2, 4), 7))  # the same holes in a 2k vocabulary
    data = SimpleNamespace(target="models/smollm2", extra_targets=["models/target-a"], train_target_name="smollm2",
                           caches={"smollm2": main, "target-a": other})
    HeadMetrics(methods=["maps"])._compute(data)
    assert seen["smollm2"] is main.input_ids and seen["target-a"] is other.input_ids
