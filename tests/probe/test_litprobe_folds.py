"""LitProbe inside the protocol's folds: a Trainer fit per outer fold, on its training files only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apmae.cache.store import AttentionCache
from apmae.encodings.store import EncodingSet, ensure_encodings
from apmae.probe.crossfit import ProtocolSettings
from apmae.probe.features import ProbeData
from apmae.probe.metrics import auroc
from apmae.probe.report import ProbePlan, run_protocol
from apmae.lit_models import probe_folds
from apmae.lit_models.probe_folds import LitProbeFolds, litprobe_fits
from tests.probe.synthetic_cache import write_planted_cache
from tests.probe.test_encodings import micro_net

SETTINGS = ProtocolSettings(n_splits=3, n_repeats=1, inner_splits=2, permutations=1, bootstrap_resamples=200)
# no permutation-tested claim: the row scalars as a control rank the heads
PLAN = ProbePlan(attention=(), controls=("row",), readouts=(), other_models=(), comparisons=(), rank_heads_by="row",
                 baselines=("confidence", "task", "confidence+task"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lp")
    cache = AttentionCache(write_planted_cache(folder, n=90))  # head (1, 2) carries the label
    net = micro_net()
    net.save(folder / "encoder")
    ensure_encodings(net, cache, folder / "e.h5", progress=False)
    return folder


def test_litprobe_is_fitted_per_fold_on_training_files_only_and_scores_every_scenario(planted, monkeypatch):
    seen = []
    original = probe_folds.FoldRowsDataModule.__init__

    def spy(self, encodings, train, test, **kwargs):
        seen.append((np.asarray(train), np.asarray(test)))
        original(self, encodings, train, test, **kwargs)

    monkeypatch.setattr(probe_folds.FoldRowsDataModule, "__init__", spy)
    data = ProbeData.from_encodings(EncodingSet(planted / "e.h5"))
    two_repeats = dataclasses.replace(SETTINGS, n_repeats=2)
    litprobe = LitProbeFolds(encoder=str(planted / "encoder"), epochs=30, repeats=1)
    report = run_protocol(data, settings=two_repeats, plan=PLAN, external=[litprobe_fits(litprobe)])
    assert len(seen) == 3  # one Trainer fit per outer fold of the first repeat
    files = data.source.columns["source_id"]
    for train, test in seen:
        assert not set(files[train]) & set(files[test])  # no source file on both sides
    covered = np.sort(np.concatenate([test for _, test in seen]))
    assert np.array_equal(covered, np.sort(data.rows))  # every scenario scored once per repeat
    row = report.row("apmae [litprobe]")
    assert row.kind == "model" and row.model == "litprobe"
    scores = report.scores["apmae [litprobe]"]
    assert np.all(np.isfinite(scores)) and np.all((scores > 0) & (scores < 1))
    # the planted head changes the pooled encodings: LitProbe finds it out of fold, well above task identity
    # (0.79 against 0.55 on this machine; 90 scenarios, so the null's spread is about 0.06)
    assert auroc(scores, data.correct) > max(0.7, report.row("task").auroc + 0.15)
    assert "confidence+apmae [litprobe]" in report.scores


def test_litprobe_refuses_encodings_of_another_encoder(planted, tmp_path):
    other = micro_net(seed=1)
    other.save(tmp_path / "other")
    data = ProbeData.from_encodings(EncodingSet(planted / "e.h5"))
    with pytest.raises(ValueError, match="serves encodings of encoder"):
        run_protocol(data, settings=SETTINGS, plan=PLAN,
                     external=[litprobe_fits(LitProbeFolds(encoder=str(tmp_path / "other")))])


def test_an_external_predictor_may_not_shadow_the_plan(planted):
    data = ProbeData.from_encodings(EncodingSet(planted / "e.h5"))
    with pytest.raises(ValueError, match="rename it"):
        run_protocol(data, settings=SETTINGS, plan=PLAN, external=[lambda protocol: {"task": None}])
