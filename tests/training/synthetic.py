"""A small DataModule of causal attention-like images, shaped like AttentionCacheDataModule's.

Each "head" has its own characteristic pattern (a mix of a local band, a sink
on the first token and random scores), so reconstructions can be learnt and
the mean-pattern baseline is beatable. Images are softmax rows of
lower-triangular scores, log-normalised to [0, 1] with zeros above the diagonal.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from apmae.datamodules.sampling import evaluation_sampler


def causal_patterns(n: int, seq_len: int, *, seed: int, layers: int = 2, heads: int = 4) -> dict[str, torch.Tensor]:
    """``n`` log-normalised causal patterns (n, 1, S, S) with their layer/head ids."""
    g = torch.Generator().manual_seed(seed)
    layer = torch.randint(0, layers, (n,), generator=g)
    head = torch.randint(0, heads, (n,), generator=g)
    kind = layer * heads + head
    q = torch.arange(seq_len).view(-1, 1).float()
    k = torch.arange(seq_len).view(1, -1).float()
    width = (1.0 + kind.float()).view(-1, 1, 1)
    band = -((q - k).abs().unsqueeze(0) / width)  # (n, S, S) local attention of head-specific width
    sink = (k == 0).float().unsqueeze(0) * (kind % 3).float().view(-1, 1, 1)  # attention sink strength
    scores = band + sink + 0.3 * torch.randn(n, seq_len, seq_len, generator=g)
    causal = torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool))
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    logp = torch.log(probs.clamp_min(1e-30))
    lo = logp.masked_fill(~causal, float("inf")).amin(dim=(1, 2), keepdim=True)
    images = ((logp - lo) / (0.0 - lo).clamp_min(1e-6)).clamp(0, 1) * causal
    return {"images": images.unsqueeze(1), "layer": layer, "head": head}


class _Patterns(Dataset):
    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data["images"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "images": self.data["images"][i],
            "layer": self.data["layer"][i],
            "head": self.data["head"][i],
            "scenario": torch.tensor(i),
            "task": torch.tensor(0),
            "correct": torch.tensor(True),
        }


class SyntheticAttentionDataModule(LightningDataModule):
    """Synthetic head images; validation has the training "target" plus shifted extra targets.

    Args:
        seq_len: image side S.
        n_train: training images.
        n_val: validation images per target.
        batch_size: images per batch.
        extra_targets: names of extra validation targets (their patterns use other seeds).
    """

    def __init__(
        self, *, seq_len: int = 64, n_train: int = 64, n_val: int = 16, batch_size: int = 8,
        extra_targets: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.n_train = n_train
        self.n_val = n_val
        self.batch_size = batch_size
        self.train_target_name = "synth-a"
        self.val_target_names = [self.train_target_name, *(extra_targets or [])]
        self.test_target_names = self.val_target_names

    def setup(self, stage: str) -> None:
        self.train = _Patterns(causal_patterns(self.n_train, self.seq_len, seed=0))
        self.vals = [_Patterns(causal_patterns(self.n_val, self.seq_len, seed=1 + i))
                     for i in range(len(self.val_target_names))]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(v, batch_size=self.batch_size, sampler=evaluation_sampler(v)) for v in self.vals]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()
