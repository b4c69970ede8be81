"""The interfaces the callbacks read: who implements them, and the error a module without them gets."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule

from apmae.model.net import APMAE
from apmae.callbacks.interventions import Interventions
from apmae.callbacks.pattern_figures import PatternFigures
from apmae.lit_models.apmae_module import LitAPMAE
from apmae.lit_models.interfaces import RanksHeads, ReconstructsPatterns, implements, members, missing
from apmae.lit_models.probe_module import LitProbe
from tests.training.conftest import MICRO_NET


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> LitProbe:
    encoder = APMAE.from_preset("tiny", seq_len=32, **MICRO_NET).save(tmp_path_factory.mktemp("encoder"))
    return LitProbe(seq_len=32, encoder=str(encoder), probe_layers=2, probe_heads=4)


@pytest.fixture(scope="module")
def apmae() -> LitAPMAE:
    return LitAPMAE(seq_len=32, net_overrides=dict(MICRO_NET))


def test_members_are_the_declared_attributes_and_properties():
    assert members(RanksHeads) == ["device", "head_importance", "head_importance_by_task"]
    assert members(ReconstructsPatterns) == ["device", "net"]


def test_each_module_implements_what_its_callbacks_read(probe, apmae):
    assert implements(probe, RanksHeads) and implements(apmae, ReconstructsPatterns)
    assert missing(apmae, RanksHeads) == ["head_importance", "head_importance_by_task"]
    assert missing(LightningModule(), ReconstructsPatterns) == ["net"]
    assert probe.head_importance is None and probe.head_importance_by_task is None  # nothing validated yet


def test_properties_are_looked_up_without_running_them():
    class Ranked(LightningModule):
        @property
        def head_importance(self):
            raise AssertionError("evaluated")

        head_importance_by_task = head_importance

    assert implements(Ranked(), RanksHeads)


def test_interventions_refuse_a_module_that_ranks_no_heads_without_an_importance_file(apmae, probe, tmp_path):
    with pytest.raises(TypeError) as info:
        Interventions(verbose=False).setup(None, apmae, "fit")
    assert str(info.value) == (
        "Interventions reads device, head_importance, head_importance_by_task from the LightningModule "
        "(apmae.lit_models.interfaces.RanksHeads), but LitAPMAE has no head_importance, head_importance_by_task: "
        "attach the callback to an apmae.lit_models.probe_module.LitProbe run, or give importance_csv (a probe run's "
        "importance.csv)")
    Interventions(verbose=False).setup(None, probe, "fit")  # the probe ranks heads
    csv = tmp_path / "importance.csv"
    csv.write_text("layer,head,importance\n0,0,1.0\n")
    Interventions(importance_csv=str(csv), verbose=False).setup(None, apmae, "fit")  # the file stands in


def test_pattern_figures_refuse_a_module_without_an_apmae():
    with pytest.raises(TypeError, match=r"LightningModule has no net: attach the callback to an "
                                        r"apmae\.lit_models\.apmae_module\.LitAPMAE run"):
        PatternFigures().setup(None, LightningModule(), "fit")


def test_the_probe_trains_its_probes_and_a_frozen_encoder_not_at_all(probe):
    (group,) = probe.parameter_groups()
    assert {id(p) for p in group["params"]} == {id(p) for p in probe.probe.parameters()}
    assert group["weight_decay"] == 0.05 and not any(p.requires_grad for p in probe.net.parameters())
    assert torch.equal(probe.probe.head_importance, torch.zeros(2, 4))
