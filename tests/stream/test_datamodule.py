"""EncodingsDataModule: streamed or cache-derived encodings served per scenario with the probe's batch keys."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from apmae.lit_models.training import TrainingRecipe
from apmae.encodings.store import EncodingSet, EncodingsMismatchError
from apmae.datamodules.attention_cache import target_short_name
from apmae.datamodules.encodings import EncodingsDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.encodings.settings import EncoderSettings
from tests.stream.test_stream import _other_scenarios, assert_same_encodings


def _dm(target_dir, scenarios_path, encoder_dir, encodings_dir, *, extraction: dict | None = None,
        encoder: dict | None = None, **kwargs) -> EncodingsDataModule:
    """On the CPU, no progress bar; ``extraction`` and ``encoder`` add settings fields."""
    return EncodingsDataModule(target=str(target_dir), scenarios=str(scenarios_path),
                               encoder=EncoderSettings(path=str(encoder_dir), **(encoder or {})),
                               encodings_dir=str(encodings_dir),
                               extraction=ExtractionSettings(device="cpu", progress=False, **(extraction or {})),
                               **kwargs)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, target_dir, scenarios_path, encoder_dir):
    """Encodings streamed once through prepare_data; the cache directory stays empty."""
    root = tmp_path_factory.mktemp("streamed")
    dm = _dm(target_dir, scenarios_path, encoder_dir, root / "encodings", cache_dir=str(root / "cache"))
    dm.prepare_data()
    return root


def _all(loader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_streamed_batches_carry_encodings_and_labels_of_their_rows(streamed, target_dir, scenarios_path, encoder_dir,
                                                                   scenarios):
    dm = _dm(target_dir, scenarios_path, encoder_dir, streamed / "encodings", batch_size=4)
    dm.setup("fit")
    assert not (streamed / "cache").exists()
    assert (dm.n_layers, dm.n_heads, dm.task_names, dm.seq_len) == (2, 4, scenarios.task_names, 24)
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["cls"].shape == batch["mean"].shape == (4, 2, 4, 16) and batch["stats"].shape == (4, 2, 4, 4)
    assert all(batch[k].dtype == torch.float32 for k in ("cls", "mean", "stats", "probability"))
    assert all(batch[k].dtype == torch.long for k in ("scenario", "row", "task"))
    assert batch["correct"].dtype == torch.bool
    enc = EncodingSet(dm.encodings.paths)
    rows = batch["row"].numpy()
    np.testing.assert_array_equal(batch["scenario"].numpy(), enc.scenario_index[rows])
    np.testing.assert_array_equal(batch["task"].numpy(), scenarios.task[batch["scenario"].numpy()])
    for name in ("cls", "mean", "stats"):
        np.testing.assert_array_equal(batch[name].numpy(), enc.rows(rows, name).astype(np.float32))
    np.testing.assert_array_equal(batch["correct"].numpy(), enc.correct[rows])
    np.testing.assert_array_equal(batch["probability"].numpy(), enc.probability[rows])


def test_splits_follow_the_scenario_splits_and_prepare_is_then_a_no_op(streamed, target_dir, scenarios_path,
                                                                        encoder_dir, scenarios):
    files = sorted((streamed / "encodings").glob("*.h5"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    dm = _dm(target_dir, scenarios_path, encoder_dir, streamed / "encodings", batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    assert [f.stat().st_mtime_ns for f in files] == mtimes and len(files) == 1
    for split, loader in [("train", dm.train_dataloader()), ("val", dm.val_dataloader()[0]),
                          ("test", dm.test_dataloader()[0])]:
        np.testing.assert_array_equal(np.sort(_all(loader)["scenario"].numpy()), scenarios.split_indices(split))


def test_balance_and_task_filters(streamed, target_dir, scenarios_path, encoder_dir):
    dm = _dm(target_dir, scenarios_path, encoder_dir, streamed / "encodings", balance=True,
             tasks=["identifiers", "noise"])
    dm.setup("fit")
    got = _all(dm.train_dataloader())
    names = dm.task_names
    assert set(got["task"].tolist()) <= {names.index("identifiers"), names.index("noise")}
    for t in got["task"].unique():
        correct = got["correct"][got["task"] == t]
        assert int(correct.sum()) == int((~correct).sum()) > 0


def test_stream_false_builds_the_cache_and_gives_the_same_encodings(streamed, target_dir, scenarios_path,
                                                                    encoder_dir, tmp_path):
    dm = _dm(target_dir, scenarios_path, encoder_dir, tmp_path / "encodings", stream=False,
             cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    assert [p.name for p in (tmp_path / "cache").glob("*.h5")] == [f"{target_short_name(str(target_dir))}.rank0.h5"]
    streamed_set = EncodingSet(sorted((streamed / "encodings").glob("*.h5")))
    assert_same_encodings(dm.encodings, streamed_set)
    # The same identity: switching the setting on the same directory reuses what is there.
    again = _dm(target_dir, scenarios_path, encoder_dir, tmp_path / "encodings", stream=True)
    mtime = dm.encodings.path.stat().st_mtime_ns
    again.prepare_data()
    again.setup("fit")
    assert again.encodings.path == dm.encodings.path and again.encodings.path.stat().st_mtime_ns == mtime


def test_both_datamodules_name_a_caches_encodings_alike_and_reuse_them(streamed, target_dir, scenarios_path,
                                                                        encoder_dir, tmp_path):
    """One file name for a cache's encodings under an encoder, whichever DataModule wrote it; a file of the
    former attention-cache name is read where it is."""
    from apmae.datamodules.attention_cache import AttentionCacheDataModule
    from apmae.encodings.store import encoder_hash
    from apmae.model.net import APMAE

    name = f"{target_short_name(str(target_dir))}.{encoder_hash(APMAE.load(encoder_dir))}"
    cache = AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(tmp_path),
                                     mode="scenarios", encoder=EncoderSettings(path=str(encoder_dir)),
                                     extraction=ExtractionSettings(device="cpu", progress=False))
    cache.prepare_data()
    cache.setup("fit")
    written = tmp_path / f"{name}.rank0.h5"
    assert written.is_file() and cache.encoder_hash == name.split(".")[-1]
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.h5")}
    dm = _dm(target_dir, scenarios_path, encoder_dir, tmp_path, stream=False, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.encodings.paths == [written] and {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.h5")} == mtimes
    assert_same_encodings(dm.encodings, EncodingSet(sorted((streamed / "encodings").glob("*.h5"))))
    former = tmp_path / f"{name}.encodings.h5"
    written.rename(former)
    for reader in (_dm(target_dir, scenarios_path, encoder_dir, tmp_path, stream=False, cache_dir=str(tmp_path)),
                   AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path),
                                            cache_dir=str(tmp_path), mode="scenarios",
                                            encoder=EncoderSettings(path=str(encoder_dir)),
                                            extraction=ExtractionSettings(device="cpu", progress=False))):
        reader.prepare_data()
        reader.setup("fit")
        assert former.stat().st_mtime_ns == mtimes[written.name] and not written.exists()
    assert reader.encodings[reader.train_target_name].paths == [former]


def test_encodings_of_other_scenarios_are_refused(streamed, target_dir, scenarios, encoder_dir, tmp_path):
    other = _other_scenarios(scenarios).save(tmp_path / "other.npz")
    dm = _dm(target_dir, other, encoder_dir, streamed / "encodings")
    with pytest.raises(EncodingsMismatchError, match="scenario_fingerprint"):
        dm.prepare_data()


def test_bad_settings_are_refused_at_construction(target_dir, scenarios_path, encoder_dir, tmp_path):
    with pytest.raises(ValueError, match="encoder.precision"):
        _dm(target_dir, scenarios_path, encoder_dir, tmp_path, encoder={"precision": "bf16"})
    with pytest.raises(ValueError, match="unknown scaler"):
        _dm(target_dir, scenarios_path, encoder_dir, tmp_path, scaler="logg")
    with pytest.raises(ValueError, match="is not a file"):
        _dm(target_dir, tmp_path / "missing.npz", encoder_dir, tmp_path)


def test_the_encoder_is_required_and_only_attention_is_encoded(target_dir, scenarios_path, encoder_dir, tmp_path):
    with pytest.raises(ValueError) as info:
        EncodingsDataModule(target=str(target_dir), scenarios=str(scenarios_path), encoder=None)
    assert str(info.value) == ("EncodingsDataModule needs an encoder: set encoder: {path: <exported AP-MAE or "
                               "LitAPMAE checkpoint>}")
    with pytest.raises(ValueError) as info:
        _dm(target_dir, scenarios_path, encoder_dir, tmp_path, extraction={"pattern_kind": "contribution"})
    assert str(info.value) == ("extraction.pattern_kind='contribution': EncodingsDataModule encodes attention "
                               "patterns only; set it to 'attention', or encode contribution caches with "
                               "AttentionCacheDataModule (mode: scenarios, encoder)")
    with pytest.raises(TypeError, match="encoder='enc': pass encoder=EncoderSettings"):
        EncodingsDataModule(target=str(target_dir), scenarios=str(scenarios_path), encoder="enc")


@pytest.mark.parametrize("encoder, steps", [({}, 8), ({"batch_size": 3}, 3)])
def test_a_cache_is_encoded_in_the_stream_s_steps_unless_the_encoder_says_otherwise(
        encoder, steps, target_dir, scenarios_path, encoder_dir, tmp_path, monkeypatch):
    import apmae.encodings.encode as module

    seen = []

    def recording(*args, **kwargs):
        seen.append((kwargs["batch_size"], kwargs["autocast_dtype"]))
        return ensure(*args, **kwargs)

    ensure = module.ensure_encodings
    monkeypatch.setattr(module, "ensure_encodings", recording)
    dm = _dm(target_dir, scenarios_path, encoder_dir, tmp_path / "encodings", stream=False,
             cache_dir=str(tmp_path / "cache"), encoder={**encoder, "precision": "bf16-mixed"})
    dm.prepare_data()
    assert seen == [(steps, torch.bfloat16)]


class _Trainer:
    """The trainer facts a DataModule reads under DDP; ``barrier`` runs ``on_barrier`` (the other rank's turn)."""

    def __init__(self, rank: int, world: int, on_barrier=lambda: None) -> None:
        self.global_rank, self.world_size, self.local_rank = rank, world, 0
        self.strategy = SimpleNamespace(barrier=lambda name: on_barrier())


def test_under_ddp_each_rank_streams_its_shard_and_reads_the_merged_set(target_dir, scenarios_path, encoder_dir,
                                                                        tmp_path):
    ranks = [_dm(target_dir, scenarios_path, encoder_dir, tmp_path, extraction={"batch_size": 1}) for _ in range(2)]
    ranks[0].trainer = _Trainer(0, 2)
    ranks[1].trainer = _Trainer(1, 2, on_barrier=lambda: ranks[0].setup("fit"))
    ranks[1].prepare_data()  # under DDP a no-op: the ranks build in setup
    assert not list(tmp_path.glob("*.h5"))
    ranks[1].setup("fit")
    assert sorted(p.name.split(".")[-2] for p in tmp_path.glob("*.h5")) == ["rank0", "rank1"]
    single = _dm(target_dir, scenarios_path, encoder_dir, tmp_path / "one", extraction={"batch_size": 1})
    single.setup("fit")
    for dm in ranks:
        assert_same_encodings(dm.encodings, single.encodings)


def _probe_fit(model, data, tmp_path):
    import lightning as L

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_train_batches=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)


def test_the_encoder_guard_holds_for_the_encodings_datamodule(streamed, target_dir, scenarios_path, encoder_dir,
                                                             tmp_path):
    """LitProbe reads stored encodings as its own encoder's: the DataModule names theirs, and another is refused."""
    from apmae.encodings.store import encoder_hash
    from apmae.model.net import APMAE
    from apmae.lit_models.probe_module import LitProbe
    from tests.stream.conftest import micro_apmae

    dm = _dm(target_dir, scenarios_path, encoder_dir, streamed / "encodings", batch_size=4)
    dm.setup("fit")
    assert dm.encoder_hash == encoder_hash(APMAE.load(encoder_dir))
    other = micro_apmae(seed=1).save(tmp_path / "other")
    with pytest.raises(ValueError, match=r"serves encodings of encoder [0-9a-f]{16} but the probe's encoder is"):
        _probe_fit(LitProbe(seq_len=24, encoder=str(other), importance_steps=2), dm, tmp_path)
    _probe_fit(
        LitProbe(seq_len=24, encoder=str(encoder_dir), importance_steps=2,
                 recipe=TrainingRecipe(export_dir=str(tmp_path / "p"))),
        dm,
        tmp_path,
    )  # its own encoder: the fit runs
    # a DataModule that serves encodings without naming their encoder cannot be checked: refused
    dm.encoder_hash = None
    with pytest.raises(ValueError, match="serves stored encodings without saying of which encoder"):
        _probe_fit(LitProbe(seq_len=24, encoder=str(encoder_dir), importance_steps=2), dm, tmp_path)
