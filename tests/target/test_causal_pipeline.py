"""End to end on a Llama-layout target in ``causal`` format: scenarios -> cache -> AP-MAE (with the head metrics) -> probe -> interventions -> recurring patterns."""

from __future__ import annotations

import csv

import lightning as L
import numpy as np
import pytest
import torch

from apmae.lit_models.training import TrainingRecipe
from apmae.mining.settings import MiningConfig
from apmae.model.net import APMAE
from apmae.patterns.run import run_recurring_patterns
from apmae.callbacks.head_metrics import HeadMetrics
from apmae.callbacks.interventions import Interventions
from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.datamodules.java_scenarios import JavaScenarioDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.encodings.settings import EncoderSettings
from apmae.lit_models.apmae_module import LitAPMAE
from apmae.lit_models.probe_module import LitProbe
from tests.training.conftest import MICRO_NET

S = 32


def _trainer(root, epochs, **kwargs):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     default_root_dir=root, **kwargs)


@pytest.mark.slow
def test_causal_llama_runs_every_stage(java_corpus, llama_dir, llama_tokenizer, tmp_path):
    L.seed_everything(0)
    scenarios = JavaScenarioDataModule(sources=str(java_corpus),
                                       tokenizer=str(llama_dir),
                                       mining=MiningConfig(seq_len=S, n_per_task=6, max_per_file=2, max_label_tokens=8,
                                                           splits=(0.5, 0.25, 0.25), prompt_format="auto"),
                                       cache_dir=str(tmp_path / "scenarios"),
                                       progress=False)
    extraction = ExtractionSettings(device="cpu", progress=False)
    heads = AttentionCacheDataModule(target=str(llama_dir), scenarios=scenarios, cache_dir=str(tmp_path / "cache"),
                                     batch_size=16, extraction=extraction)
    reconstruct = LitAPMAE(
        seq_len=S, net_overrides=dict(MICRO_NET), recipe=TrainingRecipe(lr=1e-3, export_dir=str(tmp_path / "apmae"))
    )
    metrics = HeadMetrics(n_scenarios=2, methods=["contribution", "distance", "types", "maps"], device="cpu")
    _trainer(tmp_path, 2, callbacks=[metrics]).fit(reconstruct, datamodule=heads)
    written = {p.name for p in (tmp_path / "head_metrics").rglob("*.csv")}
    assert {"contribution.csv", "distance.csv", "types.csv", "maps_scores.csv"} <= written
    assert scenarios.scenario_set().prompt_format == "causal"
    cache = heads.caches[heads.train_target_name]
    assert (cache.input_ids[:, 0] == llama_tokenizer.bos_token_id).all()  # one BOS, at position 0
    net = APMAE.load(tmp_path / "apmae")
    assert net.config.seq_len == S

    probe_data = AttentionCacheDataModule(target=str(llama_dir), scenarios=scenarios, cache_dir=str(tmp_path / "cache"),
                                          mode="scenarios", batch_size=8, extraction=extraction,
                                          encoder=EncoderSettings(path=str(tmp_path / "apmae")))
    interventions = Interventions(
        every_n_epochs=None,
        run_at_fit_end=False,
        settings=dict(split="test", n_scenarios=64, exclude_tasks=[], random_seeds=[0], batch_size=8, ks=[1, 2]),
        output_dir=str(tmp_path / "interventions"),
        verbose=False,
    )
    probe = LitProbe(seq_len=S, encoder=str(tmp_path / "apmae"), importance_steps=4,
                     recipe=TrainingRecipe(lr=1e-2, export_dir=str(tmp_path / "probe")))
    trainer = _trainer(tmp_path, 3, callbacks=[interventions])
    trainer.fit(probe, datamodule=probe_data)
    assert probe.head_importance is not None and probe.head_importance.shape == (2, 4)
    trainer.test(probe, datamodule=probe_data)
    rows = list(csv.DictReader(open(next((tmp_path / "interventions").rglob("results.csv")))))
    assert {r["strategy"] for r in rows} >= {"positive", "negative", "random"}
    accuracy = {(r["strategy"], int(r["k"])): float(r["accuracy"]) for r in rows if r["seed"] in ("", "0")}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
    assert np.isfinite(torch.as_tensor(probe.head_importance).numpy()).all()
    report = run_recurring_patterns(probe_data.encodings[probe_data.train_target_name], cache, tmp_path / "patterns",
                                    {"min_samples": 2, "min_cluster_size": 3, "probe": None, "stability": False})
    families = (tmp_path / "patterns" / "clusters" / "summary.csv").read_text().splitlines()
    assert len(families) == 1 + 2 * 4 and report is not None  # one row per head of the causal target
