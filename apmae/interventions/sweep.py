"""Head interventions: re-run the target with heads zeroed and score what it then gets right.

Glossary: N scenarios, B scenarios in a batch, S prompt tokens, K longest hole
(tokens), V vocabulary, L layers, H heads.

For one set of heads (:class:`apmae.interventions.head_sets.HeadSet`) the target runs every
scenario's FIM prompt with those heads zeroed (:func:`apmae.target.access.zero_heads`)
and is scored twice:

- first token (the paper's measure): the prediction at ``<fim_middle>`` against
  the hole's first token, and the cross-entropy of that token;
- generation (what a user completing code sees): greedy decoding, with the KV
  cache, of as many tokens as the hole has; exact match of the whole hole and
  the share of hole tokens generated right at their position.

Against the unmodified target (the baseline) a setting counts flips:
``i2c`` scenarios incorrect before and correct after, ``c2i`` the reverse, so
``i2c - c2i`` is the change in the number of correct first tokens.

Prompts must end with ``<fim_middle>`` (``middle_pos == S - 1``), as every
scenario the miner writes does: generation continues right after the prompt.

A sweep scored on first tokens only (every ``label_len`` 1, e.g.
:meth:`InterventionScenarios.first_tokens`) shares work between head sets: a head set whose
lowest zeroed layer is l leaves layers 0..l-1 as they were, so for each batch the baseline's
outputs of those layers are kept and replayed instead of computed again. The outcome is the
same, bit for bit; the first batch checks that on the model before the sweep relies on it.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence, TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from apmae.interventions.head_sets import HeadSet
from apmae.target.access import accepts_argument, first_token_outcome, validate_heads, zero_heads
from apmae.target.layout import decoder_blocks

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.cache.store import AttentionCache
    from apmae.mining.scenario_set import ScenarioSet
    from apmae.target.access import Target

BASELINE = HeadSet(strategy="none", k=0, seed=None, heads=())
HeadKey = tuple[tuple[int, int], ...]  # a head set's sorted (layer, head) pairs


@dataclass
class InterventionScenarios:
    """The scenarios an intervention is scored on (rows of an attention cache or a ScenarioSet)."""

    input_ids: np.ndarray  # (N, S) int, FIM prompts ending with <fim_middle>
    label_ids: np.ndarray  # (N, K) int, the holes' tokens, padded
    label_len: np.ndarray  # (N,) int, valid entries of label_ids (>= 1)
    task: np.ndarray  # (N,) int, index into task_names
    task_names: list[str]
    scenario_index: np.ndarray  # (N,) int, row in the ScenarioSet
    source_id: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))  # (N,) or empty

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        for name in ("label_ids", "label_len", "task", "scenario_index"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"scenario column {name!r} has {len(getattr(self, name))} rows, expected {n}")
        if n and (self.label_len.min() < 1 or self.label_len.max() > self.label_ids.shape[1]):
            raise ValueError("label_len must lie in 1..label_ids.shape[1] for every scenario")

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, index: np.ndarray) -> "InterventionScenarios":
        """The given rows, in that order."""
        index = np.asarray(index, dtype=np.int64)
        return InterventionScenarios(
            input_ids=self.input_ids[index], label_ids=self.label_ids[index], label_len=self.label_len[index],
            task=self.task[index], task_names=list(self.task_names), scenario_index=self.scenario_index[index],
            source_id=self.source_id[index] if len(self.source_id) else self.source_id)

    def first_tokens(self, m: int) -> "InterventionScenarios":
        """The same scenarios scored on the first ``m`` tokens of each hole only: a sweep then generates at most
        ``m`` tokens, and its exact match and token accuracy read those tokens (``m = 1``: the first token,
        what a correctness probe predicts, for the cost of one forward pass per scenario).

        Raises:
            ValueError: ``m`` below 1.
        """
        if m < 1:
            raise ValueError(f"first_tokens needs m >= 1, got {m}")
        return InterventionScenarios(
            input_ids=self.input_ids, label_ids=self.label_ids[:, :m], label_len=np.minimum(self.label_len, m),
            task=self.task, task_names=list(self.task_names), scenario_index=self.scenario_index,
            source_id=self.source_id)

    @classmethod
    def from_cache(cls, cache: AttentionCache, rows: np.ndarray, *, middle_pos: np.ndarray) -> "InterventionScenarios":
        """Rows of an :class:`apmae.cache.AttentionCache`; ``middle_pos`` (N,) of those rows, from the ScenarioSet.

        Raises:
            ValueError: a prompt whose ``<fim_middle>`` is not its last token.
        """
        rows = np.asarray(rows, dtype=np.int64)
        check_prompts_end_at_middle(np.asarray(middle_pos), int(cache.seq_len))
        return cls._rows_of(cache, rows, scenario_index=cache.scenario_index[rows])

    @classmethod
    def from_scenario_set(cls, scenarios: ScenarioSet, rows: np.ndarray | None = None) -> "InterventionScenarios":
        """Rows of a :class:`apmae.mining.scenario_set.ScenarioSet` (every row by default); a row is its
        scenario index.

        Raises:
            ValueError: a prompt whose ``<fim_middle>`` is not its last token.
        """
        rows = np.arange(len(scenarios)) if rows is None else np.asarray(rows, dtype=np.int64)
        check_prompts_end_at_middle(scenarios.middle_pos[rows], scenarios.seq_len)
        return cls._rows_of(scenarios, rows, scenario_index=rows)

    @classmethod
    def _rows_of(cls, source: AttentionCache | ScenarioSet, rows: np.ndarray, *,
                 scenario_index: np.ndarray) -> "InterventionScenarios":
        return cls(input_ids=source.input_ids[rows], label_ids=source.label_ids[rows],
                   label_len=source.label_len[rows], task=source.task[rows], task_names=list(source.task_names),
                   scenario_index=scenario_index, source_id=source.source_id[rows])


def check_prompts_end_at_middle(middle_pos: np.ndarray, seq_len: int) -> None:
    """Raises ``ValueError`` unless every ``<fim_middle>`` sits at the last prompt position ``seq_len - 1``."""
    off = np.flatnonzero(middle_pos != seq_len - 1)
    if len(off):
        raise ValueError(f"{len(off)} scenarios have <fim_middle> before the end of the prompt (e.g. rows "
                         f"{off[:5].tolist()}); interventions generate right after the prompt, so they need "
                         "scenarios whose prompt ends with <fim_middle> (middle_pos == S - 1), as mined ones do")


@dataclass
class Outcome:
    """Per-scenario results of one setting (heads zeroed, or none)."""

    prediction: np.ndarray  # (N,) int64 first predicted token
    correct: np.ndarray  # (N,) bool, prediction == the hole's first token
    loss: np.ndarray  # (N,) float32 cross-entropy of the hole's first token
    generated: np.ndarray  # (N, K) int64 greedy tokens; only the first label_len of a row are scored
    token_hits: np.ndarray  # (N,) int, hole tokens generated right at their position
    exact: np.ndarray  # (N,) bool, the whole hole generated

    def subset(self, index: np.ndarray) -> "Outcome":
        return Outcome(**{k: v[index] for k, v in self.__dict__.items()})


@dataclass
class InterventionMetrics:
    """One setting on a group of scenarios, next to the baseline on the same scenarios."""

    n: int
    accuracy: float  # first-token accuracy with the heads zeroed
    baseline_accuracy: float
    delta_accuracy: float  # accuracy - baseline_accuracy = (i2c - c2i) / n
    i2c: int  # incorrect -> correct flips
    c2i: int  # correct -> incorrect flips
    label_loss: float  # mean cross-entropy of the hole's first token
    exact_match: float  # share of scenarios whose whole hole was generated
    token_accuracy: float  # hole tokens generated right / all hole tokens


def score(outcome: Outcome, baseline: Outcome, label_len: np.ndarray) -> InterventionMetrics:
    """Metrics of ``outcome`` against ``baseline`` over the same N scenarios (N may be 0)."""
    n = len(outcome.correct)
    acc, base = _mean(outcome.correct), _mean(baseline.correct)
    return InterventionMetrics(
        n=n, accuracy=acc, baseline_accuracy=base, delta_accuracy=acc - base if n else float("nan"),
        i2c=int((outcome.correct & ~baseline.correct).sum()), c2i=int((~outcome.correct & baseline.correct).sum()),
        label_loss=_mean(outcome.loss), exact_match=_mean(outcome.exact),
        token_accuracy=float(outcome.token_hits.sum() / label_len.sum()) if n else float("nan"))


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode inside the block; each submodule's own train/eval flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def greedy_generate(model: Any, input_ids: Any, n_tokens: int) -> tuple[Any, Any]:
    """Greedy decoding of ``n_tokens`` after prompts (B, S) that need no padding, with the KV cache.

    Returns the float32 logits (B, V) at the last prompt position and the
    generated tokens (B, n_tokens); the first token is the argmax of those logits.
    """
    keep = {"logits_to_keep": 1} if accepts_argument(model, "logits_to_keep") else {}
    out = model(input_ids=input_ids, use_cache=True, **keep)
    first = out.logits[:, -1].float()  # (B, V)
    tokens = [first.argmax(dim=-1)]
    past = out.past_key_values
    for _ in range(n_tokens - 1):
        out = model(input_ids=tokens[-1][:, None], past_key_values=past, use_cache=True)
        past = out.past_key_values
        tokens.append(out.logits[:, -1].argmax(dim=-1))
    return first, torch.stack(tokens, dim=1)  # (B, V), (B, n_tokens)


def evaluate(target: Target, scenarios: InterventionScenarios, heads: Mapping[int, Sequence[int]] | HeadSet,
             *, batch_size: int = 16) -> Outcome:
    """Run ``scenarios`` through ``target`` (an :class:`apmae.target.Target`) with ``heads`` zeroed.

    The target's hooks, train/eval flags, device and gradients are as before
    afterwards, also when the run raises.

    Raises:
        ValueError: a head out of range, no scenarios, ``batch_size`` < 1.
    """
    if batch_size < 1 or not len(scenarios):
        raise ValueError(f"need batch_size >= 1 (got {batch_size}) and at least one scenario (got {len(scenarios)})")
    mapping = heads.as_mapping() if isinstance(heads, HeadSet) else heads
    batches, restore = _length_batches(scenarios, batch_size)
    with zero_heads(target, mapping), eval_mode(target.model), torch.inference_mode():
        parts = [_evaluate_batch(target, batch) for batch in batches]
    return _concat(parts, width=scenarios.label_ids.shape[1]).subset(restore)


def _length_batches(scenarios: InterventionScenarios,
                    batch_size: int) -> tuple[list[InterventionScenarios], np.ndarray]:
    """The batches every sweep runs, and the index that puts their concatenated rows back in scenario order.

    Batches of similar hole lengths: each batch generates only as many tokens as its longest hole.
    """
    order = np.argsort(scenarios.label_len, kind="stable")
    batches = [scenarios.subset(order[lo:lo + batch_size]) for lo in range(0, len(scenarios), batch_size)]
    return batches, np.argsort(order)


def _evaluate_batch(target: Target, batch: InterventionScenarios) -> Outcome:
    input_ids = torch.as_tensor(batch.input_ids, dtype=torch.long, device=target.device)  # (B, S)
    logits, generated = greedy_generate(target.model, input_ids, int(batch.label_len.max()))  # (B, V), (B, n)
    return _outcome(target, batch, logits, generated)


def _outcome(target: Target, batch: InterventionScenarios, logits: torch.Tensor, generated: torch.Tensor) -> Outcome:
    """One batch's outcome from the first token's logits (B, V) and the generated tokens (B, n)."""
    device = target.device
    labels = torch.as_tensor(batch.label_ids, dtype=torch.long, device=device)  # (B, K)
    n_tokens = int(batch.label_len.max())
    first = first_token_outcome(logits.float(), labels[:, 0])
    scored = torch.arange(n_tokens, device=device)[None, :] < torch.as_tensor(batch.label_len, device=device)[:, None]
    hits = (generated == labels[:, :n_tokens]) & scored  # (B, n_tokens)
    return Outcome(prediction=first.prediction.cpu().numpy(), correct=first.correct.cpu().numpy(),
                   loss=first.loss.cpu().numpy().astype(np.float32), generated=generated.cpu().numpy(),
                   token_hits=hits.sum(dim=1).cpu().numpy(),
                   exact=(hits.sum(dim=1) == scored.sum(dim=1)).cpu().numpy())


def _concat(parts: list[Outcome], *, width: int) -> Outcome:
    """Join batch outcomes; generated tokens padded with -1 to the longest hole ``width``."""
    generated = [np.pad(p.generated, ((0, 0), (0, width - p.generated.shape[1])), constant_values=-1) for p in parts]
    columns = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("prediction", "correct", "loss",
                                                                             "token_hits", "exact")}
    return Outcome(**columns, generated=np.concatenate(generated))


@dataclass
class SettingResult:
    """One head set's outcome and its metrics over all scenarios of the sweep."""

    head_set: HeadSet
    outcome: Outcome
    metrics: InterventionMetrics


@dataclass
class SweepResult:
    """A whole sweep on one group of scenarios."""

    scenarios: InterventionScenarios
    baseline: Outcome
    settings: list[SettingResult]
    n_heads_total: int
    scope: str = "all"  # "all", or the task whose own ranking chose the heads

    def baseline_metrics(self) -> InterventionMetrics:
        return score(self.baseline, self.baseline, self.scenarios.label_len)

    def by_task(self, result: SettingResult) -> dict[str, InterventionMetrics]:
        """``result``'s metrics on each task's scenarios (tasks present only)."""
        out = {}
        for t in np.unique(self.scenarios.task):
            rows = np.flatnonzero(self.scenarios.task == t)
            out[self.scenarios.task_names[int(t)]] = score(result.outcome.subset(rows), self.baseline.subset(rows),
                                                           self.scenarios.label_len[rows])
        return out


def run_sweep(target: Target, scenarios: InterventionScenarios, head_sets: Sequence[HeadSet], *, batch_size: int = 16,
              scope: str = "all", progress: bool = False) -> SweepResult:
    """The baseline and every head set on ``scenarios``; identical head sets run once.

    ``progress`` shows a bar over the distinct head sets (each one re-runs the target on every scenario),
    or, scored on first tokens only, over the scenarios (every set runs on a batch before the next batch).

    Raises:
        ValueError: no scenarios.
    """
    if not len(scenarios):
        raise ValueError("no scenarios to intervene on; choose a split and tasks that have some")
    outcomes: dict[HeadKey, Outcome] = {}
    distinct: dict[HeadKey, HeadSet] = {}  # the first head set of each distinct heads, the baseline first
    for head_set in [BASELINE, *head_sets]:
        distinct.setdefault(head_set.heads, head_set)
    blocks = decoder_blocks(target.model) if int(scenarios.label_len.max()) == 1 else None
    if blocks is not None and len(distinct) > 1:
        for head_set in distinct.values():  # every set checked before any forward pass, as evaluate does
            validate_heads(target, head_set.as_mapping())
        outcomes = _shared_first_tokens(target, blocks, scenarios, list(distinct.values()), batch_size=batch_size,
                                        progress=progress, scope=scope)
    bar = tqdm(total=len(distinct) - len(outcomes), desc=f"interventions [{scope}], {len(scenarios)} scenarios",
               unit="set", disable=not progress or len(outcomes) == len(distinct), leave=False)
    for heads, head_set in distinct.items():
        if heads not in outcomes:
            outcomes[heads] = evaluate(target, scenarios, head_set, batch_size=batch_size)
            bar.update()
    bar.close()
    baseline = outcomes[()]
    settings = [SettingResult(h, outcomes[h.heads], score(outcomes[h.heads], baseline, scenarios.label_len))
                for h in head_sets]
    return SweepResult(scenarios=scenarios, baseline=baseline, settings=settings,
                       n_heads_total=target.n_layers * target.n_heads, scope=scope)


# ---------------------------------------------------------------- first tokens: the layers below a head set shared


def _shared_first_tokens(target: Target, blocks: list[torch.nn.Module], scenarios: InterventionScenarios,
                         sets: list[HeadSet], *, batch_size: int, progress: bool, scope: str) -> dict[HeadKey, Outcome]:
    """Every head set's first-token outcome, each batch's lower layers computed once (see the module docstring).

    ``sets`` are distinct, the baseline among them. Batches are :func:`evaluate`'s, so each outcome
    equals its one-set-at-a-time run. Returns an empty dict (the caller then runs each set on its own)
    when the first batch's replay does not reproduce its baseline exactly: a model whose blocks do not
    hand their output straight to the next block.
    """
    batches, restore = _length_batches(scenarios, batch_size)
    parts: dict[HeadKey, list[Outcome]] = {s.heads: [] for s in sets}
    model = target.model
    bar = tqdm(total=len(scenarios), desc=f"interventions [{scope}], {len(sets)} head sets sharing their lower "
                                          "layers", unit="scenario", disable=not progress, leave=False)
    with eval_mode(model), torch.inference_mode():
        for b, batch in enumerate(batches):
            input_ids = torch.as_tensor(batch.input_ids, dtype=torch.long, device=target.device)
            outputs, logits = _recorded_forward(model, blocks, input_ids)
            if b == 0 and not _replay_reproduces(model, blocks, input_ids, outputs, logits):
                bar.close()
                warnings.warn(f"{type(model).__name__}: replaying the baseline's lower layers does not reproduce "
                              "its logits exactly, so every head set runs the whole model", stacklevel=3)
                return {}
            for head_set in sets:
                if head_set.heads:
                    lowest = min(layer for layer, _ in head_set.heads)
                    with zero_heads(target, head_set.as_mapping()), _replayed(blocks, outputs, lowest):
                        first = _first_logits(model, input_ids)
                else:
                    first = logits
                parts[head_set.heads].append(_outcome(target, batch, first, first.argmax(dim=-1)[:, None]))
            bar.update(len(batch))
    bar.close()
    width = scenarios.label_ids.shape[1]
    return {heads: _concat(p, width=width).subset(restore) for heads, p in parts.items()}


def _first_logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """The float32 logits (B, V) at the last prompt position: :func:`greedy_generate`'s first step, no KV cache."""
    keep = {"logits_to_keep": 1} if accepts_argument(model, "logits_to_keep") else {}
    return model(input_ids=input_ids, use_cache=False, **keep).logits[:, -1].float()


def _recorded_forward(model: Any, blocks: list[torch.nn.Module], input_ids: torch.Tensor) -> tuple[list[Any], Any]:
    """The baseline's first-token logits, and what each block returned on the way."""
    outputs: list[Any] = [None] * len(blocks)

    def keeper(i: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            outputs[i] = output
        return hook

    handles = [block.register_forward_hook(keeper(i)) for i, block in enumerate(blocks)]
    try:
        logits = _first_logits(model, input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, logits


@contextlib.contextmanager
def _replayed(blocks: list[torch.nn.Module], outputs: list[Any], below: int) -> Iterator[None]:
    """Blocks ``0..below-1`` return their recorded ``outputs`` instead of computing (restored on exit)."""
    patched = []  # (block, the forward its instance held, if any: e.g. an offloading wrapper)
    try:
        for i in range(below):
            patched.append((blocks[i], blocks[i].__dict__.get("forward")))
            blocks[i].forward = (lambda out: lambda *args, **kwargs: out)(outputs[i])
        yield
    finally:
        for block, own in patched:
            if own is None:
                del block.forward  # the class's forward again
            else:
                block.forward = own


def _replay_reproduces(model: Any, blocks: list[torch.nn.Module], input_ids: torch.Tensor, outputs: list[Any],
                       logits: torch.Tensor) -> bool:
    """Whether replaying the lower half of the blocks, no head zeroed, gives the baseline's logits bit for bit."""
    with _replayed(blocks, outputs, max(1, len(blocks) // 2)):
        again = _first_logits(model, input_ids)
    return bool(torch.equal(again, logits))
