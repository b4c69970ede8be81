"""The pattern-statistics baseline learns a signal carried by its smallest-scale statistic.

Real per-head statistics live on unrelated scales (entropy ~1 nat, mean distance ~10
tokens, first-token and diagonal masses ~0.05). A probe that LayerNorms the four of
them together, or trains on them raw, sees mostly the distance; this is the case the
demo hit (the stats baseline stuck at chance), rebuilt by hand.
"""

from __future__ import annotations

import torch

from apmae.probe.stage import ProbeStage


def _stats(correct: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = len(correct)
    stats = torch.empty(n, 2, 3, 4)
    stats[..., 0] = 1.2 + 0.4 * torch.randn(n, 2, 3, generator=generator)  # entropy: noise
    stats[..., 1] = 13.0 + 6.0 * torch.randn(n, 2, 3, generator=generator)  # distance: noise, large scale
    stats[..., 2] = 0.03 + 0.01 * torch.randn(n, 2, 3, generator=generator)  # first-token mass
    stats[..., 3] = 0.17 + 0.05 * torch.randn(n, 2, 3, generator=generator)  # diagonal: noise
    stats[:, 1, 2, 2] += 0.03 * correct.float()  # the label: head (1, 2) sinks more when correct
    return stats


def test_stats_probe_finds_a_small_scale_signal() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    correct = torch.arange(400) % 2 == 0
    stats = _stats(correct, g)
    stage = ProbeStage(n_layers=2, n_heads=3, enc_dim=8, features="cls", hidden=16, dropout=0.0)
    batches = [{"cls": torch.zeros(100, 2, 3, 8), "mean": torch.zeros(100, 2, 3, 8), "stats": stats[i:i + 100],
                "correct": correct[i:i + 100], "task": torch.zeros(100, dtype=torch.long)} for i in range(0, 400, 100)]
    stage.fit_reference(batches, net=None)
    assert torch.allclose(stage.stats_mean, stats.mean(0), atol=1e-5)
    assert torch.allclose(stage.stats_std, stats.std(0, unbiased=False), rtol=1e-4)
    probe = stage.probes["stats_probe"]
    optimizer = torch.optim.AdamW(probe.parameters(), lr=3e-3)
    for _ in range(200):
        optimizer.zero_grad()
        logit = probe(stage.standard_stats(stats))
        torch.nn.functional.binary_cross_entropy_with_logits(logit, correct.float()).backward()
        optimizer.step()
    fresh = torch.arange(400) % 2 == 0
    test = _stats(fresh, torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = ((probe(stage.standard_stats(test)) > 0) == fresh).float().mean()
    assert accuracy >= 0.85  # two noisy classes 3 std apart: the Bayes accuracy is ~0.93
