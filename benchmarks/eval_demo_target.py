"""Quality bar of a demo target: first-token accuracy of FIM scenarios per task, on held-out files.

Held-out files are generated with a seed the training corpus did not use. A
scenario is correct when the argmax at ``<fim_middle>`` equals the first token
of the hole (the paper's criterion). Prints one JSON object.

    python benchmarks/eval_demo_target.py --target artifacts/demo/target-a
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def first_token_accuracy(model, scenarios, *, batch_size: int = 32) -> dict[str, float]:
    """Per task: fraction of scenarios whose predicted first token is the label's first token."""
    import numpy as np
    import torch

    correct = np.zeros(len(scenarios), dtype=bool)
    with torch.no_grad():
        for lo in range(0, len(scenarios), batch_size):
            ids = torch.as_tensor(scenarios.input_ids[lo:lo + batch_size], dtype=torch.long)  # (B, S)
            pos = torch.as_tensor(scenarios.middle_pos[lo:lo + batch_size], dtype=torch.long)  # (B,)
            logits = model(input_ids=ids).logits  # (B, S, V)
            predicted = logits[torch.arange(len(ids)), pos].argmax(-1).numpy()
            correct[lo:lo + batch_size] = predicted == scenarios.label_ids[lo:lo + batch_size, 0]
    return {name: float(correct[scenarios.task == t].mean())
            for t, name in enumerate(scenarios.task_names) if (scenarios.task == t).any()}


def summarize(per_task: dict[str, float]) -> dict[str, float | int]:
    """Overall accuracy over non-noise tasks (mean of task accuracies), tasks above 50 %, noise."""
    real = {k: v for k, v in per_task.items() if k != "noise"}
    return {
        "overall_non_noise": sum(real.values()) / max(1, len(real)),
        "tasks_above_50": sum(v > 0.5 for v in real.values()),
        "noise": per_task.get("noise", float("nan")),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="exported target directory (model + tokenizer)")
    parser.add_argument("--heldout-seed", type=int, default=987654, help="corpus seed of the held-out files")
    parser.add_argument("--n-files", type=int, default=400, help="held-out files to generate")
    parser.add_argument("--n-per-task", type=int, default=150)
    parser.add_argument(
        "--seq-len", type=int, default=128, help="scenario length (the demo targets are trained for 128)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from apmae.demo.corpus import write_corpus
    from apmae.mining.miner import mine_scenarios
    from apmae.mining.settings import MiningConfig

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    model = AutoModelForCausalLM.from_pretrained(args.target).eval()
    with tempfile.TemporaryDirectory() as heldout:
        write_corpus(heldout, args.n_files, seed=args.heldout_seed)
        mined = mine_scenarios(heldout,
                               tokenizer,
                               MiningConfig(seq_len=args.seq_len, n_per_task=args.n_per_task, seed=args.heldout_seed,
                                            exhaustive=True),
                               progress=False)
    scenarios = mined.scenarios
    start = time.perf_counter()
    per_task = first_token_accuracy(model, scenarios)
    result = {
        "target": args.target,
        "heldout_seed": args.heldout_seed,
        "n_scenarios": len(scenarios),
        "per_task": {k: round(v, 4) for k, v in per_task.items()},
        "per_task_n": {name: int((scenarios.task == t).sum()) for t, name in enumerate(scenarios.task_names)},
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in summarize(per_task).items()},
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
