"""The claims report: the paper's five claims beside what the study measured, each with a verdict by rule.

Every verdict comes from the numbers by one written rule (:data:`RULES`), never by hand:

- **supported**: every test the claim names rejects its null at the family-wise level, in the claimed
  direction (intervals wholly on the claimed side);
- **contradicted**: the measured effect lies wholly on the other side (its interval excludes the null
  in the opposite direction);
- **inconclusive at this power**: anything else. The page then gives the smallest effect this N could
  have detected (80 % power, two-sided 5 %: about 2.8 standard errors, the standard error read off the
  95 % interval as its width / 3.92), so a reader sees what a larger study would need to resolve.

Claim (i) and (ii) read AP-MAE's validation ratios (masked-patch error over the trivial mean pattern
and over the visible-neighbour baseline, with their bootstrap intervals over validation scenarios);
(iii) the recurring-pattern families per head beyond the noise control; (iv) the probe protocol's
AP-MAE readout (within-task permutation test, and its gain on top of confidence + task); (v) the
interventions on held-out scenarios against random heads of the same k.
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from apmae.cache.extract import target_short_name
from apmae.common.atomic import atomic_write_text
from apmae.common.stats import holm, wilson_interval
from apmae.study.plan import band_of

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive at this power"
VERDICT_CODES = {SUPPORTED: 1.0, INCONCLUSIVE: 0.0, CONTRADICTED: -1.0}
ALPHA = 0.05
Z_POWER = stats.norm.ppf(0.975) + stats.norm.ppf(0.80)  # 2.80: the detectable effect in standard errors

RULES = {
    "i": "supported when the 95 % intervals of AP-MAE's error ratio over the trivial mean pattern and over the "
         "visible-neighbour baseline both lie below 1 on the studied model's validation scenarios; contradicted "
         "when either lies above 1",
    "ii": "the same rule on the second model, which AP-MAE never trained on",
    "iii": "supported when the Wilson 95 % interval of the share of heads with more than one pattern family "
           "(not counting a family of noise-control scenarios only) lies above one half and the families are "
           "stable (mean adjusted Rand index against a clustering with the next seed at least 0.5); contradicted "
           "when that interval lies below one half",
    "iv": "supported when the AP-MAE readout's within-task permutation test rejects (Holm over the protocol's "
          "claims) and its gain on top of confidence + task has a 95 % interval above 0 (paired file bootstrap, "
          "Holm); contradicted when that gain's interval lies below 0",
    "v": "supported when some set the ranking points at (its most negative or most positive heads, at some k) "
         "raises first-token accuracy by an exact McNemar test and lies above the random head sets of its k by "
         "a t prediction interval (each Holm over those sets); contradicted when every such set lowers accuracy "
         "by its McNemar test (Holm)",
}

PAPER = {
    "i": "AP-MAE reconstructs masked attention patterns (better than simple baselines)",
    "ii": "AP-MAE generalises to the attention patterns of a model it was not trained on",
    "iii": "Attention patterns form recurring families that AP-MAE's encodings separate",
    "iv": "A probe on AP-MAE encodings predicts whether the model's completion is correct",
    "v": "Zeroing a few heads the probe points at raises accuracy (the paper: +13.6 %); random heads do not",
}


@dataclass
class Claim:
    key: str
    paper: str
    measured: list[str]
    verdict: str
    detectable: str
    rule: str
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- rules

def interval_verdict(low: float, high: float, null: float, *, claimed: str) -> str:
    """``claimed`` is ``below`` or ``above``: the side of ``null`` the claim puts the effect on."""
    if any(math.isnan(v) for v in (low, high)):
        return INCONCLUSIVE
    below, above = high < null, low > null
    if (claimed == "below" and below) or (claimed == "above" and above):
        return SUPPORTED
    if (claimed == "below" and above) or (claimed == "above" and below):
        return CONTRADICTED
    return INCONCLUSIVE


def detectable(low: float, high: float) -> float:
    """The smallest effect (in the interval's units) a two-sided 5 % test detects with 80 % power here."""
    return Z_POWER * (high - low) / (2 * stats.norm.ppf(0.975))


# ---------------------------------------------------------------- the numbers each claim reads

def probe_numbers(report: Any) -> dict[str, Any]:
    """The protocol's table as JSON-able numbers (rows, comparisons, per-task AUROC, unscored tasks)."""
    def row(r: Any) -> dict[str, Any]:
        perm = r.permutation
        return {"name": r.name, "model": r.model, "kind": r.kind, "auroc": r.auroc,
                "ci": [r.interval.low, r.interval.high], "p_holm": r.p_holm,
                "p_permutation": None if perm is None else perm.p_value,
                "permutations": None if perm is None else int(len(perm.null)),
                "within_task": None if perm is None else perm.within_task, "delta": r.delta,
                "delta_ci": None if r.delta_interval is None else [r.delta_interval.low, r.delta_interval.high],
                "delta_p": r.delta_p, "n_needed": r.n_needed, "chosen": dict(r.chosen)}

    return {"rows": [row(r) for r in report.rows], "n": int(len(report.data)),
            "n_correct": int(report.data.correct.sum()),
            "comparisons": [{"first": c.first, "second": c.second, "delta": c.delta,
                             "ci": [c.interval.low, c.interval.high], "p": c.p_value, "p_holm": c.p_holm}
                            for c in report.comparisons],
            "per_task": report.per_task, "unscored": report.unscored, "noise": report.noise}


def _reconstruction(metrics: dict[str, float], target: str, key: str, role: str) -> Claim:
    measured, verdicts, widths = [], [], []
    for over, name in (("baseline", "trivial mean pattern"), ("neighbour", "visible-neighbour baseline")):
        ratio = metrics.get(f"val/{target}/mse_over_{over}")
        low = metrics.get(f"val/{target}/mse_over_{over}/ci_low", float("nan"))
        high = metrics.get(f"val/{target}/mse_over_{over}/ci_high", float("nan"))
        if ratio is None:
            measured.append(f"error ratio over the {name}: not measured")
            verdicts.append(INCONCLUSIVE)
            continue
        measured.append(f"AP-MAE's masked-patch error over the {name} on {target} ({role}): {ratio:.3f} "
                        f"[{low:.3f}, {high:.3f}] (bootstrap 95 % over validation scenarios)")
        verdicts.append(interval_verdict(low, high, 1.0, claimed="below"))
        widths.append(detectable(low, high))
    verdict = (CONTRADICTED if CONTRADICTED in verdicts else SUPPORTED if all(v == SUPPORTED for v in verdicts)
               else INCONCLUSIVE)
    return Claim(key=key, paper=PAPER[key], measured=measured, verdict=verdict, rule=RULES[key],
                 detectable=(f"a ratio {max(widths):.3f} away from 1" if widths else "not computed"))


def reconstruction_claims(results: dict[str, Any]) -> list[Claim]:
    summary = results["apmae"]["summary"]
    metrics, train = summary["metrics"], summary["train_target"]
    others = sorted({k.split("/")[1] for k in metrics if k.startswith("val/") and k.endswith("/mse")} - {train})
    claims = [_reconstruction(metrics, train, "i", "the studied model")]
    if others:
        claims.append(_reconstruction(metrics, others[0], "ii", "never trained on"))
    else:
        claims.append(Claim(key="ii", paper=PAPER["ii"], measured=["no second model was validated"],
                            verdict=INCONCLUSIVE, detectable="not measured", rule=RULES["ii"]))
    return claims


def patterns_claim(results: dict[str, Any]) -> Claim:
    p = results["patterns"]
    k, n = int(p["multi_beyond_control"]), int(p["heads"])
    share = wilson_interval(k, n)
    low, high = share.low, share.high
    stability = p.get("stability_mean")
    verdict = interval_verdict(low, high, 0.5, claimed="above")
    if verdict == SUPPORTED and (stability is None or stability < 0.5):
        verdict = INCONCLUSIVE
    return Claim(key="iii", paper=PAPER["iii"], verdict=verdict, rule=RULES["iii"],
                 measured=[f"{k} of {n} heads ({100 * k / n:.0f} % [{100 * low:.0f}, {100 * high:.0f}], Wilson) show "
                           f"more than one family beyond the noise control, over {p['scenarios']} scenarios",
                           "family stability: mean adjusted Rand index "
                           + (f"{stability:.2f}" if stability is not None else "not computed")],
                 detectable=f"a share {detectable(low, high):.3f} away from one half",
                 notes=[line.strip() for line in p["lines"]])


def probe_claim(results: dict[str, Any]) -> Claim:
    numbers = results["protocol"]["numbers"]
    rows = {r["name"]: r for r in numbers["rows"]}
    readout, on_top = rows.get("apmae*"), rows.get("confidence+task+apmae*")
    if readout is None or on_top is None:
        return Claim(key="iv", paper=PAPER["iv"], measured=["the protocol scored no AP-MAE readout"],
                     verdict=INCONCLUSIVE, detectable="not measured", rule=RULES["iv"])
    low, high = on_top["delta_ci"]
    permutation = readout["p_holm"]
    gain = interval_verdict(low, high, 0.0, claimed="above")
    if gain == SUPPORTED and not permutation < ALPHA:
        gain = INCONCLUSIVE
    measured = [
        f"AP-MAE readout (apmae*) alone: out-of-fold AUROC {readout['auroc']:.3f} [{readout['ci'][0]:.3f}, "
        f"{readout['ci'][1]:.3f}], within-task permutation p {readout['p_permutation']:.4f} "
        f"({readout['permutations']} permutations; Holm {permutation:.4f})",
        f"on top of confidence + task: {on_top['auroc']:.3f}, gain {on_top['delta']:+.3f} [{low:+.3f}, {high:+.3f}], "
        f"paired p {on_top['delta_p']:.4f} (Holm {on_top['p_holm']:.4f})",
    ]
    for name in ("majority", "task", "confidence", "confidence+task", "stats", "row", "confidence+task+row"):
        if name in rows:
            r = rows[name]
            extra = (f", gain {r['delta']:+.3f} [{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}]"
                     if r["delta_ci"] else "")
            perm = f", within-task permutation p {r['p_permutation']:.4f}" if r["p_permutation"] is not None else ""
            measured.append(f"beside it: {name} {r['auroc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]{extra}{perm}")
    needed = on_top.get("n_needed")
    detect = f"an AUROC gain of {detectable(low, high):.3f} on top of confidence + task"
    if needed is not None and not math.isnan(needed):
        detect += f" (the measured gain would need about {needed:,.0f} scenarios for 80 % power)"
    return Claim(key="iv", paper=PAPER["iv"], measured=measured, verdict=gain, detectable=detect, rule=RULES["iv"],
                 notes=[f"{numbers['n']} scenarios (noise control apart), {numbers['n_correct']} completed correctly"])


def interventions_claim(results: dict[str, Any]) -> Claim:
    iv = results["interventions"]
    ranked = [s for s in iv["settings"] if s["strategy"] in ("negative", "positive")]
    p_mcnemar = holm([s["p_mcnemar"] for s in ranked])
    p_random = holm([s["p_vs_random"] for s in ranked])
    raises = [s["delta"] > 0 and a < ALPHA and b < ALPHA and s["random_mean"] is not None
              and s["accuracy"] > s["random_mean"] for s, a, b in zip(ranked, p_mcnemar, p_random)]
    lowers = [s["delta"] < 0 and a < ALPHA for s, a in zip(ranked, p_mcnemar)]
    verdict = SUPPORTED if any(raises) else CONTRADICTED if ranked and all(lowers) else INCONCLUSIVE
    tokens = iv.get("tokens")
    scored = ("the whole hole generated" if tokens is None
              else f"{tokens} token{'s' * (tokens > 1)} of each hole generated")
    measured = [f"{iv['n']} held-out test scenarios ({scored}), no intervention: first-token accuracy "
                f"{iv['baseline_accuracy']:.3f}; {iv['random_sets']} random head sets per k"]
    for s, a, b in zip(ranked, p_mcnemar, p_random):
        rand = (f"random sets {s['random_mean']:.3f} +- {s['random_sd']:.3f}" if s["random_sd"] is not None
                else "no random sets")
        measured.append(f"{s['strategy']} k={s['k']}: accuracy {s['accuracy']:.3f} ({s['delta']:+.3f}; {s['i2c']} "
                        f"incorrect->correct, {s['c2i']} correct->incorrect), McNemar p {s['p_mcnemar']:.4f} "
                        f"(Holm {a:.4f}); {rand}, prediction p {s['p_vs_random']:.4f} (Holm {b:.4f}), "
                        f"rank p {s['p_rank']:.2f}")
    for s in iv["settings"]:
        if s["strategy"] not in ("negative", "positive"):
            measured.append(f"{s['strategy']} k={s['k']} (control): accuracy {s['accuracy']:.3f} ({s['delta']:+.3f}), "
                            f"McNemar p {s['p_mcnemar']:.4f}, vs random prediction p {s['p_vs_random']:.4f}")
    sds = [s["random_sd"] for s in ranked if s["random_sd"] is not None]
    m, n, base = iv["random_sets"], iv["n"], iv["baseline_accuracy"]
    detect = "not computed"
    if sds and m > 1:
        spread = max(sds) * math.sqrt(1 + 1 / m) * (stats.t.ppf(0.975, m - 1) + stats.t.ppf(0.80, m - 1))
        detect = (f"an accuracy change of {spread:.3f} beyond the random sets' mean (with {m} random sets per k); "
                  f"the paper's +13.6 % of the {base:.3f} here is {0.136 * base:+.3f}")
    notes = [f"per task ({', '.join(iv['tasks_tested']) or 'none'} have at least 40 scenarios): see "
             "interventions/results.csv, scope on:<task>", f"{n} scenarios"]
    if iv["tasks_too_small"]:
        notes.append(f"too few scenarios for their own tests: {', '.join(iv['tasks_too_small'])}")
    return Claim(key="v", paper=PAPER["v"], measured=measured, verdict=verdict, detectable=detect, rule=RULES["v"],
                 notes=notes)


def claims_of(results: dict[str, Any]) -> list[Claim]:
    return [*reconstruction_claims(results), patterns_claim(results), probe_claim(results),
            interventions_claim(results)]


def headline(study: Any, verdicts: dict[str, str]) -> dict[str, float]:
    """The numbers the study's MLflow run leads with: each claim's verdict (1 / 0 / -1, from ``verdicts``:
    claim -> verdict, as :func:`write_claims` returns them) and main figures."""
    out = {f"claim_{key}_verdict": VERDICT_CODES[verdict] for key, verdict in verdicts.items()}
    rows = {r["name"]: r for r in study.results["protocol"]["numbers"]["rows"]}
    for name in ("apmae*", "row", "confidence+task", "task"):
        if name in rows:
            out[f"probe_auroc_{name.replace('*', '_selected').replace('+', '_')}"] = rows[name]["auroc"]
    metrics = study.results["apmae"]["summary"]["metrics"]
    train = study.results["apmae"]["summary"]["train_target"]
    for over in ("baseline", "neighbour"):
        if f"val/{train}/mse_over_{over}" in metrics:
            out[f"apmae_over_{over}"] = metrics[f"val/{train}/mse_over_{over}"]
    return out


# ---------------------------------------------------------------- the page

def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _task_row(task: str, alloc: dict[str, Any], mined: dict[str, int], rates: dict[str, dict[str, int]]) -> list[Any]:
    """One task's line of the per-task table: its pilot rate and band, the count mined, its rate in the study."""
    pilot = alloc["pilot_rate"].get(task)
    study = rates.get(task)
    return [task, "-" if pilot is None else f"{pilot:.2f} of {alloc['pilot_n'][task]}",
            "control" if pilot is None else band_of(pilot), mined.get(task, 0),
            "-" if study is None else f"{study['correct']} ({study['correct'] / max(study['n'], 1):.1%})"]


def markdown(study: Any, claims: list[Claim]) -> str:
    r, s = study.results, study.settings
    alloc = r["pilot"]["allocation"]
    rates = r["protocol"]["per_task_correct"]
    lines = [f"# Claims report: {target_short_name(s.target)} on {Path(study.corpus.path).name}", "",
             f"{study.corpus.line()}. {r['mining']['scenarios']} scenarios from {r['mining']['files']} source files: "
             + ", ".join(f"{n} {split}" for split, n in r["mining"]["per_split"].items())
             + " (split by source file). Mining: "
             + (r["mining"]["meta"].get("mining_report", "").split("\n")[0] or "no summary recorded")
             + (" (the whole corpus read: a uniform sample of its files)." if s.exhaustive else
                " (the corpus read in its own order until every quota was filled: exhaustive=true samples it "
                "uniformly)."), "",
             "## Verdicts", "",
             *_table(["claim", "the paper", "verdict", "smallest effect this N detects"],
                     [[f"({c.key})", c.paper, f"**{c.verdict}**", c.detectable] for c in claims]), "",
             "Every verdict follows from the numbers below by the rule under its claim: supported when every test "
             "the claim names rejects at the family-wise 5 % level in the claimed direction, contradicted when "
             "the effect lies wholly on the other side, inconclusive at this power otherwise. The smallest "
             "detectable effect is 2.8 standard errors (80 % power, two-sided 5 %), the standard error read off "
             "the 95 % interval.", ""]
    for c in claims:
        lines += [f"## ({c.key}) {c.paper}", "", f"Verdict: **{c.verdict}**", "", f"Rule: {c.rule}.", "",
                  *[f"- {m}" for m in c.measured], *[f"- {n}" for n in c.notes], ""]
    lines += ["## Scenarios per task", "", r["pilot"]["rule"] + ".", "",
              *_table(["task", "pilot correct", "pilot band", "mined", "correct (study)"],
                      [_task_row(t, alloc, r["mining"]["per_task"], rates) for t in alloc["counts"]]), ""]
    lines += ["## The probe protocol", "", "```", *r["protocol"]["lines"], "```", "",
              "## Interventions", "", "```", *r["interventions"]["lines"], "```", "",
              "## Recurring patterns", "", "```", *r["patterns"]["lines"], "```", ""]
    times = " | ".join(f"{k} {v / 60:.1f} min" for k, v in study.book.seconds.items())
    lines += ["## How it ran", "", f"- stage times (this CPU): {times}",
              f"- disk: the study's folder takes {study.disk_bytes() / 1e9:.2f} GB at the report (the training "
              f"cache of {r['apmae']['training_cache_bytes'] / 1e9:.2f} GB "
              f"{'kept' if r['apmae']['training_cache_kept'] else 'removed once AP-MAE was exported'})",
              f"- settings: `{asdict(s)}`",
              f"- protocol: `{r['protocol']['settings']}`",
              f"- corpus identity: `{study.corpus.identity()}`",
              "- the head atlas: ../atlas/index.html", ""]
    return "\n".join(lines)


def write_claims(study: Any) -> tuple[dict[str, Path], dict[str, str]]:
    """``report/claims.md`` and ``report/claims.html`` under the study folder; returns the files and the verdicts."""
    claims = claims_of(study.results)
    text = markdown(study, claims)
    folder = Path(study.folder) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    md, page = folder / "claims.md", folder / "claims.html"
    atomic_write_text(md, text + "\n")
    atomic_write_text(page, to_html(text))
    return {"md": md, "html": page}, {c.key: c.verdict for c in claims}


def to_html(text: str) -> str:
    """The Markdown page as a self-contained HTML page (headings, tables, lists, code blocks)."""
    out, in_code, in_table, in_list = [], False, False, False
    for line in text.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if in_table and not line.startswith("|"):
            out.append("</table>")
            in_table = False
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    out += ["</table>"] if in_table else []
    out += ["</ul>"] if in_list else []
    style = ("body{font-family:sans-serif;max-width:75em;margin:2em auto;line-height:1.4}"
             "td{border:1px solid #ccc;padding:.3em .6em}table{border-collapse:collapse}pre{background:#f6f6f6;"
             "padding:1em;overflow-x:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>apmae claims report</title><style>{style}"
            f"</style></head><body>\n" + "\n".join(out) + "\n<p><a href='../atlas/index.html'>head atlas</a></p>"
            "</body></html>\n")


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("**")
    escaped = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
