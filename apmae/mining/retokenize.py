"""The same holes for another tokenizer: a scenario set re-cut for a target that tokenizes differently.

Cross-model comparisons need every target to see the same completion problems. Targets of one
family share a tokenizer (StarCoder2 3B/7B/15B) and read one scenario set. A target with another
tokenizer gets its own set, cut from the same source files at the same holes (byte spans) with its
own tokens and prompt format, in the original row order, each row keeping its task and split. A
hole its tokenization cannot serve (the label is longer than ``max_label_tokens``, or too little
context on its side) is dropped and counted by reason; noise controls are drawn again from its
vocabulary, as many as before.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from apmae.mining.miner import (FileMiner, FileResult, FileSettings, load_tokenizer, noise_scenarios, noise_vocab,
                                pad_id_of)
from apmae.mining.prompts import PromptFormat, tokenizer_fingerprint
from apmae.mining.scenario_set import ScenarioSet
from apmae.mining.settings import DEFAULTS
from apmae.mining.sources import JavaSources
from apmae.mining.tasks import get_tasks


@dataclass
class RetokenizeReport:
    """What survived the re-cut."""

    kept: int = 0  # holes cut for the new tokenizer
    dropped: Counter = field(default_factory=Counter)  # reason -> holes that could not be cut
    missing_files: int = 0  # source files of the set that the sources no longer hold
    noise: int = 0

    def summary(self) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"{self.kept} holes re-cut, dropped: {dropped}, source files missing: {self.missing_files}, "
                f"noise controls: {self.noise}")


def retokenize(scenarios: ScenarioSet, sources: JavaSources, tokenizer: Any, *,
               prompt_format: str = "auto") -> tuple[ScenarioSet, RetokenizeReport]:
    """``scenarios``' holes, cut from ``sources`` for ``tokenizer`` (a fast HF tokenizer, name or directory).

    Raises:
        ValueError: the tokenizer cannot serve ``prompt_format`` (e.g. ``fim`` without FIM tokens).
    """
    hf_tok, tok_json, prompt = load_tokenizer(tokenizer, prompt_format)
    meta = scenarios.meta
    # a set's own settings are in its metadata; the defaults stand in for sets that do not record one
    config = FileSettings(seq_len=scenarios.seq_len,
                          max_label_tokens=int(meta.get("max_label_tokens", DEFAULTS.max_label_tokens)),
                          seed=int(meta.get("seed", DEFAULTS.seed)), pad=bool(meta.get("pad", DEFAULTS.pad)),
                          pad_id=pad_id_of(hf_tok, prompt) if meta.get("pad") else None,
                          fim=prompt.fim, prompt_format=prompt.name, bos=prompt.bos)
    tasks = get_tasks(scenarios.task_names)
    miner = FileMiner(config, tasks, tok_json)
    report = RetokenizeReport()
    cut = _cut_holes(scenarios, sources, miner, report)
    rows, built = [], []
    for i in range(len(scenarios)):
        key = (str(scenarios.source_id[i]), int(scenarios.span_start[i]), int(scenarios.span_end[i]))
        if key in cut:
            rows.append(i)
            built.append(cut[key])
    noise_rows = np.flatnonzero(scenarios.source_id == "")
    noise = _noise_rows(config, tasks, scenarios, noise_rows, noise_vocab(hf_tok, prompt.fim))
    report.kept, report.noise = len(rows), len(noise_rows)
    out = _assemble_set(scenarios, rows + noise_rows.tolist(), built + noise, prompt, hf_tok, report)
    return out, report


def _cut_holes(scenarios: ScenarioSet, sources: JavaSources, miner: FileMiner,
               report: RetokenizeReport) -> dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]]:
    """(source id, span) -> (prompt, label) for every hole the new tokenization can serve."""
    wanted: dict[str, list[tuple[int, tuple[int, int]]]] = {}
    for i in np.flatnonzero(scenarios.source_id != ""):
        span = (int(scenarios.span_start[i]), int(scenarios.span_end[i]))
        wanted.setdefault(str(scenarios.source_id[i]), []).append((int(scenarios.task[i]), span))
    found: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for file in sources:
        holes = wanted.pop(file.source_id, None)
        if holes is None:
            continue
        result = FileResult(file.source_id, len(miner.tasks))
        enc = miner.tokenizer.encode(file.text, add_special_tokens=False)
        miner.assemble(file, enc, sorted(holes, key=lambda h: h[1]), result)
        for m in result.scenarios:
            found[(file.source_id, m.span_start, m.span_end)] = (m.input_ids, m.label_ids)
        for counts in result.rejected:
            report.dropped.update(counts)
        if not wanted:
            break
    report.missing_files = len(wanted)
    if wanted:
        report.dropped["missing_file"] += sum(len(h) for h in wanted.values())
    return found


def _noise_rows(config: FileSettings, tasks: list, scenarios: ScenarioSet, rows: np.ndarray,
                vocab: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """New noise controls from the new vocabulary, as many per task as the set had."""
    out = []
    for ti in sorted(set(scenarios.task[rows].tolist())):
        n = int((scenarios.task[rows] == ti).sum())
        out += [(m.input_ids, m.label_ids) for m in noise_scenarios(config, tasks[ti], n, vocab)]
    return out


def _assemble_set(scenarios: ScenarioSet, rows: list[int], built: list[tuple[np.ndarray, np.ndarray]],
                  prompt: PromptFormat, tokenizer: Any, report: RetokenizeReport) -> ScenarioSet:
    index = np.asarray(rows, dtype=np.int64)
    seq_len = scenarios.seq_len
    width = max((len(label) for _, label in built), default=1)
    labels = np.zeros((len(built), width), dtype=np.int32)
    for k, (_, label) in enumerate(built):
        labels[k, :len(label)] = label
    meta = {**scenarios.meta, **prompt.describe(), "tokenizer": getattr(tokenizer, "name_or_path", ""),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "vocab_size": len(tokenizer), "retokenized_from": scenarios.fingerprint(),
            "retokenize_report": report.summary()}
    meta.pop("fim", None) if prompt.name != "fim" else meta.pop("bos", None)
    return ScenarioSet(
        input_ids=np.stack([ids for ids, _ in built]) if built else np.zeros((0, seq_len), np.int32),
        label_ids=labels, label_len=np.array([len(label) for _, label in built], dtype=np.int32),
        middle_pos=np.full(len(built), seq_len - 1, dtype=np.int32),
        task=scenarios.task[index], source_id=scenarios.source_id[index], span_start=scenarios.span_start[index],
        span_end=scenarios.span_end[index], split=scenarios.split[index], task_names=list(scenarios.task_names),
        meta=meta)


__all__ = ["RetokenizeReport", "retokenize"]
