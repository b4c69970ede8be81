"""Attention extraction: scenarios/s and bytes against a naive baseline; prints JSON.

    python benchmarks/bench_extraction.py [--model DIR] [--scenarios NPZ] [--n 256]
    python benchmarks/bench_extraction.py --starcoder2-3b        # GPU: a StarCoder2-3B-sized random model
    python benchmarks/bench_extraction.py --stages --starcoder2-3b --hidden 384 --dtype float32 --n 4 --batch-size 1

Without --model / --scenarios it uses a random-init StarCoder2 of the demo
target's size (4 layers, 8 heads, 2 kv heads, hidden 128, vocab 2048) and
random scenarios at S=128 (the demo's length; --seq-len 256 for the paper's).

Measured in one run over the same scenarios:

- ``baseline`` (run first, before anything of apmae's extraction touches the
  process): batch of 1, full float32 S x S per head, one HDF5 row per head,
  no compression (the public reproduction's approach);
- ``cache``: apmae's extraction (batched forwards in worker threads, packed
  bfloat16 triangles in the default encoding, one HDF5 write per batch);
- ``compression``: bytes per head and write/read speed of each encoding with
  none / lzf / gzip on the same real patterns;
- ``precision``: bfloat16 of probabilities against float16 of log-probabilities.

``--stages`` instead times each stage of extraction per scenario (forward;
bfloat16 rounding + triangle gather and 14-bit packing, each with numpy on the
host and with the torch ops a GPU runs on the device; the copy of the packed
bytes to the host; the HDF5 write) and projects a GPU box's rate from them
(``projection``, assuming ``--disk-gb-per-s``). ``--hidden`` shrinks the
model's width so a StarCoder2-3B-shaped target (30 layers x 24 heads, the
same patterns) runs on a CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apmae.cache.settings import ExtractionSettings
from apmae.common.allocator import keep_freed_memory  # noqa: E402
from apmae.cache.store import (COMPRESSIONS, DEFAULT_COMPRESSION, AttentionCache, CacheSpec, CacheWriter,  # noqa: E402
                         shard_path)
from apmae.cache.codec import (DEFAULT_ENCODING, ENCODINGS, decode_patterns, decode_stored,  # noqa: E402
                         encode_attentions, encode_patterns, encode_stored, packed_width, to_14bit,
                         to_14bit_torch, triangle_bits_torch)
from apmae.cache.extract import extract  # noqa: E402
from apmae.mining.scenario_set import ScenarioSet  # noqa: E402
from apmae.cache.gather import run_batch_stored  # noqa: E402
from apmae.target.access import Target, load_target, run_batch_triangles, wrap_model  # noqa: E402
from apmae.common.triangle import triangle_size  # noqa: E402

DEMO = {"layers": 4, "heads": 8, "kv_heads": 2, "hidden": 128, "vocab": 2048}
STARCODER2_3B = {"layers": 30, "heads": 24, "kv_heads": 2, "hidden": 3072, "vocab": 49152}


def random_target(size: dict, *, dtype: str, device: str) -> Target:
    """A random-init StarCoder2 of the given size, wrapped like a loaded target."""
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    torch.manual_seed(0)
    cfg = Starcoder2Config(vocab_size=size["vocab"], hidden_size=size["hidden"], intermediate_size=4 * size["hidden"],
                           num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                           num_key_value_heads=size["kv_heads"], max_position_embeddings=4096,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="eager")
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    with torch.device(device):  # initialise on the device: a 3B model initialises slowly on a CPU
        model = Starcoder2ForCausalLM(cfg).to(dtype=dt).eval()
    return wrap_model(model, name=f"random-starcoder2-{size['layers']}x{size['heads']}", dtype=dtype)


def random_scenarios(n: int, seq_len: int, vocab: int, seed: int = 0) -> ScenarioSet:
    """Random prompts whose last token stands in for <fim_middle> (id 2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(n, seq_len), dtype=np.int32)
    ids[:, -1] = 2
    return ScenarioSet(input_ids=ids, label_ids=rng.integers(5, vocab, size=(n, 1), dtype=np.int32),
                       label_len=np.ones(n, np.int32), middle_pos=np.full(n, seq_len - 1, np.int32),
                       task=np.zeros(n, np.int16), source_id=np.array([f"f{i % 50}" for i in range(n)]),
                       span_start=np.zeros(n, np.int64), span_end=np.ones(n, np.int64),
                       split=np.zeros(n, np.int8), task_names=["random"], meta={"seq_len": seq_len, "random": True})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_cache(target: Target, scenarios: ScenarioSet, out: Path, *, batch_size: int, compression: str,
                encoding: str, workers: int) -> dict:
    """apmae's extraction into a fresh cache file."""
    settings = ExtractionSettings(batch_size=batch_size, progress=False, compression=compression, encoding=encoding,
                                  workers=workers)
    warm = scenarios.subset(np.arange(min(batch_size * workers, len(scenarios))))
    extract(target, warm, out / "warmup.rank0.h5", settings)
    path = shard_path(out, "bench", 0)
    result = extract(target, scenarios, path, settings)
    n, heads = len(scenarios), target.n_layers * target.n_heads
    with h5py.File(path, "r") as f:
        pattern_bytes = f["patterns"].id.get_storage_size()
    return {"scenarios_per_s": round(result.scenarios_per_s, 2), "seconds": round(result.seconds, 2),
            "file_mb_per_1000_scenarios": round(result.bytes / n * 1000 / 1e6, 2),
            "bytes_per_head_pattern": round(pattern_bytes / (n * heads), 1),
            "batch_size": batch_size, "workers": workers, "compression": compression, "encoding": encoding,
            "path": path}


def bench_baseline(target: Target, scenarios: ScenarioSet, out: Path) -> dict:
    """Batch of 1, full float32 S x S per head, one HDF5 row per head, no compression."""
    model, device, s = target.model, target.device, scenarios.seq_len
    heads = target.n_layers * target.n_heads
    path = out / "baseline.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("patterns", shape=(len(scenarios) * heads, s, s), dtype=np.float32)
        correct = f.create_dataset("correct", shape=(len(scenarios),), dtype=np.uint8)
        _baseline_one(model, scenarios, 0, ds, correct, heads, device)  # warm-up, overwritten below
        start = time.perf_counter()
        for i in range(len(scenarios)):
            _baseline_one(model, scenarios, i, ds, correct, heads, device)
        f.flush()
        seconds = time.perf_counter() - start
    size = path.stat().st_size
    return {"scenarios_per_s": round(len(scenarios) / seconds, 2), "seconds": round(seconds, 2),
            "file_mb_per_1000_scenarios": round(size / len(scenarios) * 1000 / 1e6, 2),
            "bytes_per_head_pattern": round(size / (len(scenarios) * heads), 1)}


def _baseline_one(model, scenarios: ScenarioSet, i: int, ds, correct, heads: int, device) -> None:
    ids = torch.from_numpy(scenarios.input_ids[i:i + 1]).long().to(device)
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    correct[i] = int(out.logits[0, -1].argmax()) == int(scenarios.label_ids[i, 0])
    for layer, att in enumerate(out.attentions):
        pats = att[0].float().cpu().numpy()  # (H, S, S)
        for h in range(len(pats)):
            ds[i * heads + layer * len(pats) + h] = pats[h]


def bench_compression(target: Target, scenarios: ScenarioSet, out: Path, *, n: int, batch_size: int) -> dict:
    """Bytes per head, encode + write speed and read speed of each encoding and compression on the same patterns.

    ``encode_write_mb_per_s`` counts the raw bfloat16 triangles (2T bytes per head) encoded and written per
    second in one thread, so the rows compare CPU cost directly.
    """
    sample = scenarios.subset(np.arange(min(n, len(scenarios))))
    batches = [_packed_batch(target, sample, lo, batch_size) for lo in range(0, len(sample), batch_size)]
    heads = target.n_layers * target.n_heads
    raw = len(sample) * heads * triangle_size(sample.seq_len) * 2
    report = {}
    for encoding in ENCODINGS:
        for name in COMPRESSIONS:
            path = shard_path(out / f"compress-{encoding}-{name}", "bench", 0)
            spec = CacheSpec(target=target.summary(), seq_len=sample.seq_len,
                             scenario_fingerprint=sample.fingerprint(), n_scenarios=len(sample), compression=name,
                             encoding=encoding)
            start = time.perf_counter()
            with CacheWriter.open(path, spec, sample) as writer:
                for bits, outc in batches:
                    writer.append(writer.encode(bits), outc.prediction.cpu(), outc.probability.cpu(),
                                  outc.correct.cpu(), outc.loss.cpu())
            write_s = time.perf_counter() - start
            with h5py.File(path, "r") as f:
                stored = f["patterns"].id.get_storage_size()
            report[f"{encoding}/{name}"] = {"bytes_per_head_pattern": round(stored / (len(sample) * heads), 1),
                                            "encode_write_mb_per_s": round(raw / write_s / 1e6, 1),
                                            **_read_speed(path, target)}
    return report


def _packed_batch(target: Target, scenarios: ScenarioSet, lo: int, batch_size: int):
    idx = np.arange(lo, min(lo + batch_size, len(scenarios)))
    out = run_batch_stored(target, torch.from_numpy(scenarios.input_ids[idx]),
                           torch.from_numpy(scenarios.label_ids[idx, 0]), encoding="bfloat16-bits")
    return out.stored, out  # the bfloat16 bits of the triangles (B, L, H, T) uint16


def _read_speed(path: Path, target: Target) -> dict:
    """Random single-head reads and whole-scenario reads, decoded to (S, S) float32."""
    cache = AttentionCache(path)
    rng = np.random.default_rng(0)
    picks = [(int(rng.integers(len(cache))), int(rng.integers(cache.n_layers)), int(rng.integers(cache.n_heads)))
             for _ in range(300)]
    start = time.perf_counter()
    for i, layer, head in picks:
        cache.pattern(i, layer, head)
    heads_s = len(picks) / (time.perf_counter() - start)
    start = time.perf_counter()
    n = min(len(cache), 16)
    for i in range(n):
        cache.scenario(i)
    cache.close()
    return {"head_reads_per_s": round(heads_s, 1), "scenario_reads_per_s": round(n / (time.perf_counter() - start), 1)}


def bench_chunks(target: Target, scenarios: ScenarioSet, out: Path, *, n: int, batch_size: int) -> dict:
    """Head reads/s and scenario reads/s (default encoding, uncompressed) for three chunk shapes."""
    sample = scenarios.subset(np.arange(min(n, len(scenarios))))
    bits = np.concatenate([_packed_batch(target, sample, lo, batch_size)[0]
                           for lo in range(0, len(sample), batch_size)])  # (N, L, H, T)
    values = bits.shape[-1]
    stored = encode_stored(bits, DEFAULT_ENCODING)  # (N, L, H, P)
    n_rows, n_layers, n_heads, t = stored.shape
    shapes = {"one_head": (1, 1, 1, t), "one_layer": (1, 1, n_heads, t), "one_scenario": (1, n_layers, n_heads, t)}
    rng = np.random.default_rng(0)
    picks = [tuple(int(rng.integers(k)) for k in (n_rows, n_layers, n_heads)) for _ in range(300)]
    report = {}
    for name, chunks in shapes.items():
        with h5py.File(out / f"chunks-{name}.h5", "w") as f:
            f.create_dataset("p", data=stored, chunks=chunks)
        with h5py.File(out / f"chunks-{name}.h5", "r") as f:
            ds = f["p"]
            start = time.perf_counter()
            for i, layer, head in picks:
                decode_stored(ds[i, layer, head], DEFAULT_ENCODING, values)
            heads_s = len(picks) / (time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(n_rows):
                decode_stored(ds[i], DEFAULT_ENCODING, values)
            report[name] = {"chunk_kib": round(np.prod(chunks) * stored.itemsize / 1024, 1),
                            "head_reads_per_s": round(heads_s, 1),
                            "scenario_reads_per_s": round(n_rows / (time.perf_counter() - start), 1)}
    return report


def bench_precision(target: Target, scenarios: ScenarioSet, n: int) -> dict:
    """bfloat16 of probabilities against float16 of log-probabilities, on real packed patterns."""
    idx = np.arange(min(n, len(scenarios)))
    with torch.no_grad():
        out = run_batch_triangles(target, torch.from_numpy(scenarios.input_ids[idx]),
                                  torch.from_numpy(scenarios.label_ids[idx, 0]))
    x = out.triangles.float().cpu()
    nz = x > 0
    bits = encode_patterns(x)
    bf16 = torch.from_numpy(decode_patterns(bits))
    bf14 = decode_stored(encode_stored(bits, "bfloat16-14bit"), "bfloat16-14bit", bits.shape[-1])
    logs = torch.log(torch.where(nz, x, torch.ones_like(x))).half().float().exp()
    f16 = x.half().float()

    def stats(y: torch.Tensor) -> dict:
        rel = ((y - x).abs() / x.clamp_min(1e-45))[nz]
        return {"max_rel_err": float(rel.max()), "mean_rel_err": float(rel.mean()),
                "nonzero_became_zero": int((nz & (y == 0)).sum())}

    return {"values": int(nz.sum()), "min_nonzero": float(x[nz].min()), "bfloat16": stats(bf16),
            "bfloat16_14bit_equals_bfloat16": bool(np.array_equal(bf14, bf16.numpy())),
            "float16_log": stats(torch.where(nz, logs, torch.zeros_like(x))), "float16": stats(f16)}


def bench_stages(target: Target, scenarios: ScenarioSet, out: Path, *, batch_size: int,
                 disk_gb_per_s: float) -> dict:
    """Seconds per scenario of each extraction stage (the first batch warms up, untimed), and a projection."""
    batches = [np.arange(lo, min(lo + batch_size, len(scenarios))) for lo in range(0, len(scenarios), batch_size)]
    spec = CacheSpec(target=target.summary(), seq_len=scenarios.seq_len, scenario_fingerprint=scenarios.fingerprint(),
                     n_scenarios=len(scenarios))
    totals: dict[str, float] = {}
    with CacheWriter.open(shard_path(out, "stages", 0), spec, scenarios) as writer:
        _stage_seconds(target, scenarios, batches[0], None)
        for idx in batches:
            for stage, seconds in _stage_seconds(target, scenarios, idx, writer).items():
                totals[stage] = totals.get(stage, 0.0) + seconds
    heads = target.n_layers * target.n_heads
    n_values = scenarios.seq_len * (scenarios.seq_len + 1) // 2
    stored_bytes, bits_bytes = heads * packed_width(n_values), heads * 2 * n_values  # per scenario
    made = {"gather_numpy": bits_bytes, "gather_torch": bits_bytes, "pack_numpy": stored_bytes,
            "pack_torch": stored_bytes, "copy_to_host": stored_bytes, "write_hdf5": stored_bytes}
    per = {stage: seconds / len(scenarios) for stage, seconds in totals.items()}
    stages = {stage: {"ms_per_scenario": round(1e3 * s, 2),
                      **({"mb_per_s": round(made[stage] / s / 1e6, 1)} if stage in made else {})}
              for stage, s in per.items()}
    return {"stored_mb_per_scenario": round(stored_bytes / 1e6, 2), "bf16_triangle_mb_per_scenario":
            round(bits_bytes / 1e6, 2), "stages": stages,
            "projection": _projection(per, stored_bytes, disk_gb_per_s)}


def _stage_seconds(target: Target, scenarios: ScenarioSet, idx: np.ndarray, writer: CacheWriter | None) -> dict:
    """One batch through every stage; numpy and torch paths must give the same bytes."""
    device = target.device
    ids = torch.from_numpy(scenarios.input_ids[idx]).long().to(device)
    clock = [time.perf_counter()]

    def lap() -> None:
        _sync(device)
        clock.append(time.perf_counter())

    with torch.inference_mode():
        layers = target.model(input_ids=ids, output_attentions=True, use_cache=False, logits_to_keep=1).attentions
        lap()
        bits = encode_attentions(layers)  # (B, L, H, T) uint16, host numpy
        lap()
        stored = to_14bit(bits)  # (B, L, H, W) uint8
        lap()
        device_bits = triangle_bits_torch(layers)  # (B, L, H, T) int16 where the model is
        lap()
        device_stored = to_14bit_torch(device_bits)
        lap()
        copied = device_stored.cpu().numpy()
        lap()
    if not np.array_equal(copied, stored):
        raise AssertionError("the torch and numpy packings differ")
    if writer is not None:
        zeros = np.zeros(len(idx))
        writer.append(stored, zeros, zeros, zeros, zeros)
        lap()
    names = ["forward", "gather_numpy", "pack_numpy", "gather_torch", "pack_torch", "copy_to_host", "write_hdf5"]
    return {name: b - a for name, a, b in zip(names, clock, clock[1:])}


def _projection(seconds: dict[str, float], stored_bytes: int, disk_gb_per_s: float) -> dict:
    """A GPU box's scenarios/s bounds from this machine's per-core seconds per scenario (a projection)."""
    disk = disk_gb_per_s * 1e9 / stored_bytes
    host_pack = 1 / seconds["pack_numpy"]  # per core, when the device gathers the bits
    write = 1 / seconds["write_hdf5"]
    return {"assumed_disk_gb_per_s": disk_gb_per_s, "disk_bound_scenarios_per_s": round(disk, 1),
            "host_numpy_packing_scenarios_per_s_per_core": round(host_pack, 2),
            "cores_to_pack_at_disk_speed": round(disk / host_pack, 1),
            "hdf5_write_scenarios_per_s_here": round(write, 1),
            "device_packing_host_bound_scenarios_per_s": round(min(disk, write), 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="target model directory or hub name (default: random demo-size StarCoder2)")
    p.add_argument("--scenarios", help="ScenarioSet .npz (default: random scenarios at --seq-len)")
    p.add_argument("--n", type=int, default=256, help="scenarios to extract")
    p.add_argument("--seq-len", type=int, default=None, help="random scenarios: default 128, 256 with --starcoder2-3b")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--compression", default=DEFAULT_COMPRESSION, choices=COMPRESSIONS)
    p.add_argument("--encoding", default=DEFAULT_ENCODING, choices=ENCODINGS)
    p.add_argument("--workers", type=int, default=2, help="batches in flight (apmae.cache.extract.extract)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--starcoder2-3b", action="store_true", help="random StarCoder2-3B-sized target (GPU, bfloat16)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default float32 on CPU, bfloat16 with --starcoder2-3b")
    p.add_argument("--hidden", type=int, default=None, help="random target: another width (same layers and heads)")
    p.add_argument("--stages", action="store_true", help="per-stage times and the GPU-box projection only")
    p.add_argument("--disk-gb-per-s", type=float, default=2.0, help="disk bandwidth the projection assumes")
    args = p.parse_args(argv)
    from apmae.target.access import resolve_device

    device = str(resolve_device(args.device))
    dtype = args.dtype or ("bfloat16" if args.starcoder2_3b else "float32")
    if args.model:
        target = load_target(args.model, dtype=dtype, device=device)
    else:
        size = STARCODER2_3B if args.starcoder2_3b else DEMO
        target = random_target({**size, "hidden": args.hidden or size["hidden"]}, dtype=dtype, device=device)
    if args.scenarios:
        scenarios = ScenarioSet.load(args.scenarios)
        scenarios = scenarios.subset(np.arange(min(args.n, len(scenarios))))
    else:
        seq_len = args.seq_len or (256 if args.starcoder2_3b else 128)
        scenarios = random_scenarios(args.n, seq_len, int(target.model.config.vocab_size))
    torch.set_grad_enabled(False)
    report = {"device": device, "host": platform.node(), "torch_threads": torch.get_num_threads(),
              "target": target.summary(), "scenarios": len(scenarios), "seq_len": scenarios.seq_len,
              "scenario_source": args.scenarios or "random"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.stages:
            keep_freed_memory()
            report["stages"] = bench_stages(target, scenarios, out, batch_size=args.batch_size,
                                            disk_gb_per_s=args.disk_gb_per_s)
            print(json.dumps(report, indent=2))
            return report
        if not args.no_baseline:  # first, before the process's allocator is tuned
            report["baseline"] = bench_baseline(target, scenarios, out)
        if not args.starcoder2_3b:
            report["precision"] = bench_precision(target, scenarios, 8)
            report["compression"] = bench_compression(target, scenarios, out, n=64, batch_size=args.batch_size)
            report["chunks"] = bench_chunks(target, scenarios, out, n=32, batch_size=args.batch_size)
        keep_freed_memory()  # as the extracting entry points do (python -m apmae, the demo)
        report["cache"] = bench_cache(target, scenarios, out, batch_size=args.batch_size, compression=args.compression,
                                      encoding=args.encoding, workers=args.workers)
        report["cache"].pop("path")
        if not args.no_baseline:
            report["speedup"] = round(report["cache"]["scenarios_per_s"] / report["baseline"]["scenarios_per_s"], 2)
            report["bytes_ratio"] = round(report["baseline"]["bytes_per_head_pattern"]
                                          / report["cache"]["bytes_per_head_pattern"], 2)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
