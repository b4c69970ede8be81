"""A tiny causal LM that completes some Java right: a random model completes none, and a probe needs both classes."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.cache.helpers import save_target
from tests.target.tiny_models import tiny_llama


def trained_tiny_llama(tokenizer, texts: list[str], out: Path, *, steps: int = 60, heads: int = 4,
                       seed: int = 0) -> Path:
    """A 2-layer llama fitted for ``steps`` Adam steps to next-token prediction on ``texts``, saved to ``out``."""
    torch.manual_seed(seed)
    model = tiny_llama(tokenizer, layers=2, heads=heads, kv_heads=2 if heads % 2 == 0 else 1, seed=seed).train()
    ids = torch.tensor([t for text in texts for t in tokenizer(text)["input_ids"]])
    width = 64
    rows = ids[: len(ids) // width * width].view(-1, width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_target(model.eval(), tokenizer, out)
