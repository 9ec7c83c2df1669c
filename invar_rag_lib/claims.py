"""The paper's claims, each tested from saved results with one verdict rule (no hand-written table).

Every claim is a paired comparison "A beats B" on the same questions of each dataset, on a
per-question score (hit@k, Jaccard@k, spread of hit@k, EM). For each dataset we report
mean(A) vs mean(B), the difference with a 95% bootstrap interval, and the paired bootstrap p-value.

The verdict rule, stated once (`verdict`):
* **reproduced**: the paper's direction holds with p < 0.05 on a majority of the datasets, and the
  opposite direction holds with p < 0.05 on none;
* **not reproduced**: the opposite direction holds with p < 0.05 on a majority of the datasets;
* **not detectable at this n**: anything else. The table then gives the smallest effect this n
  could detect: MDE = (z_0.975 + z_0.8) · sqrt((var A + var B) / n) per dataset (a two-sided 5%
  test with 80% power, ignoring the pairing, so conservative), shown as the largest over datasets.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .metrics import bootstrap_ci, paired_bootstrap_pvalue
from .retrieval.harness import hits_at_k
from .report.names import DATASET_NAMES, HEADLINE_K, ordered

ALPHA = 0.05
Z_POWER = 1.959964 + 0.841621  # two-sided 5% test, 80% power
VERDICTS = ("reproduced", "not reproduced", "not detectable at this n")


def fmt_p(p: float, n_resamples: int) -> str:
    """A bootstrap p-value at its resolution: 2 / resamples is the smallest non-zero value."""
    floor = 2.0 / n_resamples
    return f"< {floor:g}" if p < floor else f"{p:.3f}"


def paired_test(a: Sequence[float], b: Sequence[float], higher_is_better: bool, n_resamples: int,
                seed: int) -> dict:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = (a - b) if higher_is_better else (b - a)  # > 0: the paper's direction
    ci = bootstrap_ci(d, n_resamples, seed)
    p = 1.0 if not d.any() else paired_bootstrap_pvalue(a, b, n_resamples, seed)
    mde = Z_POWER * math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / len(a)) if len(a) > 1 else float("nan")
    return {"a": float(a.mean()), "b": float(b.mean()), "effect": ci["mean"], "low": ci["low"],
            "high": ci["high"], "p": p, "mde": mde, "n": int(len(a))}


def verdict(tests: dict[str, dict]) -> str:
    if not tests:
        return "not run"
    good = sum(t["effect"] > 0 and t["p"] < ALPHA for t in tests.values())
    bad = sum(t["effect"] < 0 and t["p"] < ALPHA for t in tests.values())
    majority = len(tests) // 2 + 1
    if good >= majority and bad == 0:
        return VERDICTS[0]
    if bad >= majority:
        return VERDICTS[1]
    return VERDICTS[2]


def _retrieval_scores(metric: str) -> Callable[[dict], list[float]]:
    kind, k = metric.split("@")
    if kind == "acc":
        return lambda res: hits_at_k(res, int(k))
    key = {"jaccard": "jaccard", "hit-std": "has_answer_std"}[kind]
    return lambda res: res["stability"]["per_question"][key]


def _claims(variants: dict, generation: dict, ablations: dict) -> list[dict]:
    """(claim, comparison, per-dataset results of A and B, score function, direction)."""
    ret, gen = variants["retrievers"], generation["rows"]
    rows = [
        ("the trained LLM retriever learns (beyond the paper: its floor)", "invar vs random, acc@5",
         ret, "invar", "random", _retrieval_scores("acc@5"), True),
        ("the LLM retriever beats sparse retrieval", "invar vs bm25, acc@5",
         ret, "invar", "bm25", _retrieval_scores("acc@5"), True),
        ("the LLM retriever beats dense retrieval", "invar vs minilm, acc@5",
         ret, "invar", "minilm", _retrieval_scores("acc@5"), True),
        ("the LLM retriever beats dense retrieval", "invar vs minilm, acc@20",
         ret, "invar", "minilm", _retrieval_scores("acc@20"), True),
        ("the invariance loss makes retrieval less variable across rewrites", "invar vs llm-ctr, Jaccard@5 ↑",
         ret, "invar", "llm-ctr", _retrieval_scores(f"jaccard@{HEADLINE_K}"), True),
        ("the invariance loss makes retrieval less variable across rewrites", "invar vs llm-ctr, std of hit@5 ↓",
         ret, "invar", "llm-ctr", _retrieval_scores("hit-std@5"), False),
        ("alignment (α) adds to retrieval", "invar vs invar−align, acc@5",
         ablations["retrievers"], "invar", "invar-align", _retrieval_scores("acc@5"), True),
        ("invariance (λ) adds to retrieval", "invar vs invar−inv, acc@5",
         ablations["retrievers"], "invar", "invar-inv", _retrieval_scores("acc@5"), True),
    ]
    r_points = sorted((p["value"], p["name"]) for p in ablations["points"] if p["axis"] == "rewrites")
    if len(r_points) >= 2:
        (r_lo, lo), (r_hi, hi) = r_points[0], r_points[-1]
        rows.append(("more query rewrites (R) help", f"R = {r_hi} vs R = {r_lo}, acc@5",
                     ablations["retrievers"], hi, lo, _retrieval_scores("acc@5"), True))
    else:
        rows.append(("more query rewrites (R) help", "R sweep", {}, "", "", None, True))
    em = lambda res: res["per_question"]["em"]  # noqa: E731
    rows += [
        ("Invar-RAG answers better than RAG with a standard retriever", "invar-rag vs minilm-rag, EM",
         gen, "invar-rag", "minilm-rag", em, True),
        ("the generation-stage fine-tuning helps", "invar-rag vs invar-retrieval, EM",
         gen, "invar-rag", "invar-retrieval", em, True),
        ("retrieval helps a small LM answer (RAG's premise)", "minilm-rag vs closed-book, EM",
         gen, "minilm-rag", "closed-book", em, True),
    ]
    return rows


def claims_table(variants: dict, generation: dict, ablations: dict) -> pd.DataFrame:
    cfg = variants["provenance"]["config"]
    n_res, seed = cfg["retrieval"]["bootstrap_resamples"], cfg["seed"]
    out = []
    for claim, test, source, a, b, score, higher in _claims(variants, generation, ablations):
        tests = {}
        if a in source and b in source:
            for ds in ordered(source[a]):
                tests[ds] = paired_test(score(source[a][ds]), score(source[b][ds]), higher, n_res, seed)
        row = {"claim (paper)": claim, "test": test}
        for ds in ("nq", "triviaqa", "popqa"):
            t = tests.get(ds)
            row[DATASET_NAMES[ds]] = "—" if t is None else (
                f"{100 * t['a']:.1f} vs {100 * t['b']:.1f}; Δ {100 * t['effect']:+.1f} "
                f"[{100 * t['low']:+.1f}, {100 * t['high']:+.1f}], p {fmt_p(t['p'], n_res)}")
        row["verdict"] = verdict(tests)
        row["smallest detectable Δ"] = (f"{100 * max(t['mde'] for t in tests.values()):.1f}" if tests else "—")
        out.append(row)
    return pd.DataFrame(out).set_index("claim (paper)")


def summary_table(benchmark: dict, variants: dict, generation: dict, ablations: dict) -> pd.DataFrame:
    """Five lines for the top of the README, written from the results: the corpus ceiling, whether
    the LLM retriever learns, how it compares with MiniLM, the invariance claim and the end-to-end
    claim, each with its verdict from `claims_table`."""
    ev = benchmark["counts"]["eval"]
    table = claims_table(variants, generation, ablations)
    ret, gen = variants["retrievers"], generation["rows"]

    def acc(name: str, k: int = HEADLINE_K) -> str:
        return " / ".join(f"{100 * ret[name][ds]['metrics'][f'acc@{k}']['mean']:.0f}" for ds in ordered(ret[name]))

    def em(row: str) -> str:
        return " / ".join(f"{100 * gen[row][ds]['metrics']['em']['mean']:.0f}" for ds in ordered(gen[row]))

    def verdicts(test_prefix: str) -> str:
        found = [v for t, v in zip(table["test"], table["verdict"]) if t.startswith(test_prefix)]
        return ", ".join(dict.fromkeys(found)) or "not run"

    names = " / ".join(DATASET_NAMES.get(ds, ds) for ds in ordered(ev))
    rows = {
        "what the corpus allows": (f"{' / '.join(str(ev[ds]['answer_in_corpus']) for ds in ordered(ev))} of "
                                   f"{' / '.join(str(ev[ds]['questions']) for ds in ordered(ev))} evaluation questions "
                                   f"({names}) have an answer in some passage; only NQ comes with gold passages"),
        "does the LLM retriever learn?": (f"invar acc@{HEADLINE_K} {acc('invar')} against random {acc('random')} "
                                          f"and untrained llm-zero {acc('llm-zero')}: "
                                          f"{verdicts('invar vs random')}"),
        "does it beat MiniLM and BM25?": (f"MiniLM {acc('minilm')}, BM25 {acc('bm25')}: "
                                          f"{verdicts('invar vs minilm, acc@5')} (vs MiniLM), "
                                          f"{verdicts('invar vs bm25')} (vs BM25)"),
        "is invar more stable across rewrites than llm-ctr?": verdicts("invar vs llm-ctr"),
        "does Invar-RAG answer better?": (f"EM invar-rag {em('invar-rag')} vs minilm-rag {em('minilm-rag')}: "
                                          f"{verdicts('invar-rag vs minilm-rag')}"),
    }
    return pd.DataFrame({"answer, from this profile's results": rows}).rename_axis("question")
