"""Training throughput of AP-MAE against a plain full-grid MAE of the same size.

Prints one JSON object: for each preset and batch size, training images/s
(forward + backward + AdamW step) of AP-MAE at each ``--precision`` and of the
float32 baseline, their parameter counts and the speed-ups over the baseline.
All models run in the same process on the same inputs with the same optimizer
settings; their timed steps are interleaved round by round so that load from
other processes hits them alike, and the median step is used.

``bf16-mixed`` is what Lightning's precision plugin does: the forward pass
(loss included) under ``torch.autocast(device, dtype=torch.bfloat16,
cache_enabled=False)``, backward and the optimizer step outside it, weights
and optimizer state in float32. Every step clips the gradient norm at 1.0, as the
paper config does. ``--compile`` adds AP-MAE under
``torch.compile`` at each precision; its start-up shows in ``warmup_step_s``.

The baseline is the usual MAE recipe: every patch of the G x G grid is a token
(upper-triangle patches included), the same share of them is masked, the
decoder un-shuffles the full grid, and attention is an explicit
matmul-softmax-matmul. Its widths, depths and heads are AP-MAE's.

    python benchmarks/bench_model.py                 # paper and tiny, batch 8 and 32, 32 and bf16-mixed
    python benchmarks/bench_model.py --presets paper --batch 32 --threads 2 --precision bf16-mixed
    python benchmarks/bench_model.py --presets tiny --batch 32 --rounds 10 --compile

One thread is timed first by default: on a machine busy with other work, two
intra-op threads wait on each other at every op and the timings mostly measure
the scheduler; the single-thread speed-up still measures the models.
``OMP_WAIT_POLICY=PASSIVE`` in the environment also makes the multi-thread
timings far less sensitive to such load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from typing import Any

import torch
from einops import rearrange
from torch import nn

from apmae.model.net import PRESETS, APMAE, APMAEConfig, APMAEOutput, num_visible
from apmae.model.scaling import scale


class PlainAttention(nn.Module):
    """Multi-head attention written out: scores, softmax, weighted sum."""

    def __init__(self, *, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, h, n, n)
        return self.proj(rearrange(attn @ v, "b h n d -> b n (h d)"))


class PlainBlock(nn.Module):
    def __init__(self, *, dim: int, heads: int, head_dim: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = PlainAttention(dim=dim, heads=heads, head_dim=head_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _plain_blocks(c: APMAEConfig, part: str) -> nn.Sequential:
    dim, heads, head_dim, mlp, depth = (getattr(c, f"{part}_{k}") for k in ("dim", "heads", "head_dim", "mlp", "depth"))
    return nn.Sequential(*(PlainBlock(dim=dim, heads=heads, head_dim=head_dim or dim // heads, mlp=mlp)
                           for _ in range(depth)))


class FullGridMAE(nn.Module):
    """The baseline: a standard MAE over all G x G patches of the image."""

    def __init__(self, c: APMAEConfig) -> None:
        super().__init__()
        self.c, n, p2 = c, c.grid**2, c.patch_size**2
        self.patch_embed = nn.Linear(p2, c.enc_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.enc_dim))
        self.enc_pos = nn.Parameter(torch.randn(1, n, c.enc_dim) * 0.02)
        self.encoder, self.enc_norm = _plain_blocks(c, "enc"), nn.LayerNorm(c.enc_dim, eps=1e-6)
        self.dec_embed = nn.Linear(c.enc_dim, c.dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dec_dim))
        self.dec_pos = nn.Parameter(torch.randn(1, n, c.dec_dim) * 0.02)
        self.decoder, self.dec_norm = _plain_blocks(c, "dec"), nn.LayerNorm(c.dec_dim, eps=1e-6)
        self.dec_pred = nn.Linear(c.dec_dim, p2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.c.patch_size
        target = rearrange(images, "b 1 (g p) (h q) -> b (g h) (p q)", p=p, q=p)  # (B, G*G, P2)
        batch, n, _ = target.shape
        keep = num_visible(n, self.c.mask_ratio)
        ids_shuffle = torch.rand(batch, n).argsort(dim=1)
        ids_restore, ids_keep = ids_shuffle.argsort(dim=1), ids_shuffle[:, :keep]
        x = self.patch_embed(target) + self.enc_pos
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = self.enc_norm(self.encoder(torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)))
        x = self.dec_embed(x)
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(batch, n - keep, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = self.dec_norm(self.decoder(torch.cat([x[:, :1], tokens + self.dec_pos], dim=1)))
        pred = self.dec_pred(x[:, 1:])
        mask = torch.ones(batch, n).scatter_(1, ids_keep, 0.0)
        return (((pred - target) ** 2).mean(dim=-1) * mask).sum() / mask.sum()


def causal_images(batch: int, seq_len: int) -> torch.Tensor:
    """Scaled synthetic causal attention patterns, (B, 1, S, S)."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, 1, seq_len, seq_len, generator=gen)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    return scale(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1), "log_normalize")


PRECISIONS = ("32", "bf16-mixed")


def _optimizer(model: nn.Module, batch: int) -> torch.optim.Optimizer:
    if isinstance(model, APMAE):
        groups = model.param_groups(0.05)
    else:  # the same split: no decay on vectors (biases, norms) and on tokens / position tables
        params = dict(model.named_parameters())
        flat = {n for n, p in params.items() if p.ndim < 2 or n in ("cls_token", "mask_token", "enc_pos", "dec_pos")}
        groups = [{"params": [p for n, p in params.items() if n not in flat], "weight_decay": 0.05},
                  {"params": [params[n] for n in sorted(flat)], "weight_decay": 0.0}]
    # The paper's optimizer: AdamW, lr 1.5e-4 x batch / 50, betas (0.9, 0.95), wd 0.05. The fused
    # kernel makes one pass over the 127 M parameters; the per-tensor loop costs as much as a forward.
    return torch.optim.AdamW(groups, lr=1.5e-4 * batch / 50, betas=(0.9, 0.95), weight_decay=0.05, fused=True)


def _forward_context(precision: str, device: torch.device) -> Any:
    """What Lightning's precision plugin wraps the training step in (no weight-cast cache, as there)."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def _step_fn(model: nn.Module, images: torch.Tensor, *, batch: int, precision: str, compiled: bool):
    optimizer = _optimizer(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    if compiled:  # as LitAPMAE(compile=True) does it
        model.compile()

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with _forward_context(precision, images.device):
            out = model(images)
            loss = out.loss if isinstance(out, APMAEOutput) else out
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the paper config clips at 1.0 (gradient_clip_val)
        optimizer.step()
        return time.perf_counter() - start

    step.batch = batch
    return step


def _time_models(steps_of: dict, *, threads: int, warmup: int, rounds: int, steps: int) -> dict:
    """Median step time of each model at one intra-op thread count."""
    torch.set_num_threads(threads)
    startup = {k: [round(step(), 3) for _ in range(warmup)] for k, step in steps_of.items()}
    times: dict[str, list[float]] = {k: [] for k in steps_of}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):  # interleaved so background load hits every model alike
        for k, step in steps_of.items():
            times[k].extend(step() for _ in range(steps))
    median = {k: statistics.median(v) for k, v in times.items()}
    batch = steps_of["baseline"].batch
    return {
        "threads": threads,
        # 1-minute load average before and after: above the core count the timings are contended
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "warmup_step_s": startup,
        "median_step_s": {k: round(v, 4) for k, v in median.items()},
        "spread_step_s": {k: [round(min(v), 4), round(max(v), 4)] for k, v in times.items()},
        "images_per_s": {k: round(batch / v, 2) for k, v in median.items()},
        "speedup_over_baseline": {k: round(median["baseline"] / v, 3) for k, v in median.items() if k != "baseline"},
        "timed_steps": rounds * steps,
    }


def _models(config: APMAEConfig, precisions: list[str], compiled: bool) -> dict[str, dict[str, Any]]:
    """name -> model and how it runs: the float32 baseline, then AP-MAE at each precision (same init)."""
    torch.manual_seed(0)
    models = {"baseline": {"model": FullGridMAE(config).train(), "precision": "32", "compiled": False}}
    for precision in precisions:
        for compile_it in (False, True) if compiled else (False,):
            torch.manual_seed(0)
            name = f"apmae-{precision}" + ("-compiled" if compile_it else "")
            models[name] = {"model": APMAE(config).train(), "precision": precision, "compiled": compile_it}
    return models


def bench_preset(name: str, *, batch: int, threads: list[int], precisions: list[str], compiled: bool, warmup: int,
                 rounds: int, steps: int) -> dict:
    config = APMAEConfig.preset(name)
    models = _models(config, precisions, compiled)
    params = {k: sum(p.numel() for p in m["model"].parameters()) for k, m in models.items()}
    images = causal_images(batch, config.seq_len)
    steps_of = {k: _step_fn(m.pop("model"), images, batch=batch, **m) for k, m in models.items()}
    return {
        "config": name,
        "batch": batch,
        "params": {"apmae": params[f"apmae-{precisions[0]}"], "baseline": params["baseline"]},
        "tokens": {"apmae_encoder": num_visible(config.num_patches, config.mask_ratio) + 1,
                   "apmae_decoder": config.num_patches + 1,
                   "baseline_encoder": num_visible(config.grid**2, config.mask_ratio) + 1,
                   "baseline_decoder": config.grid**2 + 1},
        "runs": [_time_models(steps_of, threads=t, warmup=warmup, rounds=rounds, steps=steps) for t in threads],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["paper", "tiny"], choices=sorted(PRESETS),
                        help="AP-MAE presets to time")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="images per training step")
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                        help="AP-MAE training precisions (Lightning's names); the baseline is always float32")
    parser.add_argument("--compile", action="store_true", help="also time AP-MAE under torch.compile")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()],
                        help="intra-op thread counts to time (default: 1, then all cores)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model and thread count")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per model per round")
    args = parser.parse_args(argv)
    if min(args.batch) < 1 or args.rounds < 1 or args.steps < 1 or args.warmup < 0 or min(args.threads) < 1:
        parser.error("--batch, --threads, --rounds and --steps must be >= 1 and --warmup >= 0")
    threads = list(dict.fromkeys(args.threads))
    results = [bench_preset(p, batch=b, threads=threads, precisions=list(dict.fromkeys(args.precision)),
                            compiled=args.compile, warmup=args.warmup, rounds=args.rounds, steps=args.steps)
               for p in args.presets for b in dict.fromkeys(args.batch)]
    print(json.dumps({
        "benchmark": "apmae_training_throughput",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "target": "paper preset, batch 32, two threads: apmae-bf16-mixed speedup_over_baseline >= 2.0",
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
