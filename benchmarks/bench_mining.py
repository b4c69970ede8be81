"""Scenario-mining throughput: files/s and scenarios/s, per number of worker processes.

    python benchmarks/bench_mining.py CORPUS [CORPUS ...] --workers 0 1 2 --tokenizer DIR_OR_NAME

CORPUS is any source :func:`apmae.mining.miner.mine_scenarios` reads (directory, .zip/.tar(.gz)
archive, JSONL/Parquet). Without one, a corpus of ``--files`` files of about
``--lines`` lines is generated from the demo corpus generator (several generated
classes per file). Without ``--tokenizer``, a byte-level BPE with FIM tokens is
trained on the corpus (vocabulary ``--vocab``). Every file is mined with all file tasks
(``exhaustive``: no early stop), so the figures are the cost per file. Prints JSON.
Target: >= 20 files/s per core on files of a few hundred lines. ``files_per_cpu_s`` divides
by the CPU time actually used (this process plus its workers), which stays meaningful
when other jobs share the machine; wall-clock figures are reported too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generated_corpus(out: Path, n_files: int, lines: int, seed: int) -> Path:
    """``n_files`` Java files of about ``lines`` lines, each several demo classes back to back."""
    from apmae.demo.corpus import generate_file

    counter = itertools.count()
    for i in range(n_files):
        parts, n_lines = [], 0
        while n_lines < lines:
            _, text = generate_file(seed, next(counter))
            if parts:  # one package/import header per file, as in real code
                text = "\n".join(l for l in text.splitlines() if not l.startswith(("package ", "import ")))
            parts.append(text)
            n_lines += text.count("\n") + 1
        path = out / f"f{i:05d}.java"
        path.write_text("\n".join(parts), encoding="utf-8")
    return out


def _cpu_seconds() -> float:
    """CPU seconds used by this process and its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def corpus_stats(sources) -> dict:
    from apmae.mining.sources import JavaSources

    files = JavaSources(sources)
    n, n_bytes, n_lines, sample = 0, 0, 0, []
    for f in files:
        n, n_bytes, n_lines = n + 1, n_bytes + len(f.data), n_lines + f.text.count("\n") + 1
        if len(sample) < 400:
            sample.append(f.text)
    return {"files": n, "mean_lines": round(n_lines / max(n, 1), 1), "mean_bytes": round(n_bytes / max(n, 1)),
            "skipped": dict(files.skipped)}, sample


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="*", help="directories / archives / JSONL / Parquet files")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tokenizer", help="hub name or local directory (default: train one on the corpus)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-per-file", type=int, default=2)
    ap.add_argument("--files", type=int, default=200, help="generated corpus size")
    ap.add_argument("--lines", type=int, default=300, help="lines per generated file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from apmae.mining.miner import mine_scenarios
    from apmae.mining.settings import MiningConfig
    from apmae.mining.tasks import get_tasks

    # every task that reads files; noise costs nothing per file
    tasks = [t.name for t in get_tasks() if t.needs_source]

    with tempfile.TemporaryDirectory() as tmp:
        sources = args.corpus or [str(generated_corpus(Path(tmp), args.files, args.lines, args.seed))]
        stats, sample = corpus_stats(sources)
        if args.tokenizer:
            tokenizer = args.tokenizer
        else:
            from apmae.demo.tokenizer import train_tokenizer

            tokenizer = train_tokenizer(sample, vocab_size=args.vocab)
        logging.getLogger("apmae.mining.miner").setLevel(logging.ERROR)  # "quota not reached" is expected here
        runs = []
        for workers in args.workers:
            start, cpu0 = time.perf_counter(), _cpu_seconds()
            res = mine_scenarios(sources, tokenizer,
                                 MiningConfig(
                    tasks=tasks,
                    seq_len=args.seq_len,
                    n_per_task=10**9,
                    max_per_file=args.max_per_file,
                    exhaustive=True,
                    seed=args.seed,
                ),
                                 num_workers=workers, progress=False)
            seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
            built = sum(t.assembled for t in res.report.tasks)
            runs.append({"num_workers": workers, "seconds": round(seconds, 2),
                         "files_mined": res.report.files_mined,
                         "files_per_s": round(res.report.files_seen / seconds, 1),
                         "files_per_s_per_core": round(res.report.files_seen / seconds / max(workers, 1), 1),
                         "scenarios_per_s": round(built / seconds, 1),
                         # CPU time of this process and its (reaped) workers: stable on a shared machine
                         "cpu_seconds": round(cpu, 2),
                         "files_per_cpu_s": round(res.report.files_seen / cpu, 1),
                         "scenarios": len(res.scenarios)})
    out = {"corpus": stats, "tokenizer": args.tokenizer or f"trained byte-level BPE, vocab {args.vocab}",
           "seq_len": args.seq_len, "tasks": tasks, "cpu_count": os.cpu_count(), "runs": runs}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
