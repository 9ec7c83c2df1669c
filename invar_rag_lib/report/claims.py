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
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..metrics import bootstrap_ci, paired_bootstrap_pvalue
from ..results import generation, retrievers
from .names import DATASET_NAMES, HEADLINE_K, ordered

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


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as a paired test: `a` against `b` on `score` ("acc@k", "jaccard@k",
    "hit-std@k" for retrievers; "em" for generation rows), read from the results of `source`
    ("variants": notebook 04, "ablations": 07, "generation": 06); Δ > 0 is the paper's direction."""
    claim: str
    test: str
    source: str
    a: str
    b: str
    score: str
    higher_is_better: bool = True

    def scores(self, result) -> list[float]:
        """Per-question scores of one typed result (`results.RetrievalResult` / `GenerationResult`)."""
        kind, _, k = self.score.partition("@")
        if kind == "acc":
            return result.hits(int(k))
        if kind in ("jaccard", "hit-std"):
            return result.stability_per_question({"jaccard": "jaccard", "hit-std": "has_answer_std"}[kind])
        return result.per_question(self.score)

    def tests(self, sources: dict, n_resamples: int, seed: int) -> dict[str, dict]:
        """dataset -> `paired_test`; empty when either side was not run."""
        by_name = sources.get(self.source, {})
        if self.a not in by_name or self.b not in by_name:
            return {}
        return {ds: paired_test(self.scores(by_name[self.a][ds]), self.scores(by_name[self.b][ds]),
                                self.higher_is_better, n_resamples, seed) for ds in ordered(by_name[self.a])}


def paper_claims(ablations: dict) -> list[Claim]:
    """Every claim the study tests, in table order (the R claim needs two R points)."""
    claims = [
        Claim("the trained LLM retriever learns (beyond the paper: its floor)", "invar vs random, acc@5",
              "variants", "invar", "random", "acc@5"),
        Claim("the LLM retriever beats sparse retrieval", "invar vs bm25, acc@5", "variants", "invar", "bm25", "acc@5"),
        Claim("the LLM retriever beats dense retrieval", "invar vs minilm, acc@5", "variants", "invar", "minilm",
              "acc@5"),
        Claim("the LLM retriever beats dense retrieval", "invar vs minilm, acc@20", "variants", "invar", "minilm",
              "acc@20"),
        Claim("the invariance loss makes retrieval less variable across rewrites", "invar vs llm-ctr, Jaccard@5 ↑",
              "variants", "invar", "llm-ctr", f"jaccard@{HEADLINE_K}"),
        Claim("the invariance loss makes retrieval less variable across rewrites", "invar vs llm-ctr, std of hit@5 ↓",
              "variants", "invar", "llm-ctr", "hit-std@5", higher_is_better=False),
        Claim("alignment (α) adds to retrieval", "invar vs invar−align, acc@5", "ablations", "invar", "invar-align",
              "acc@5"),
        Claim("invariance (λ) adds to retrieval", "invar vs invar−inv, acc@5", "ablations", "invar", "invar-inv",
              "acc@5"),
    ]
    r_points = sorted((p["value"], p["name"]) for p in ablations["points"] if p["axis"] == "rewrites")
    if len(r_points) >= 2:
        (r_lo, lo), (r_hi, hi) = r_points[0], r_points[-1]
        claims.append(Claim("more query rewrites (R) help", f"R = {r_hi} vs R = {r_lo}, acc@5", "ablations", hi, lo,
                            "acc@5"))
    else:
        claims.append(Claim("more query rewrites (R) help", "R sweep", "ablations", "", "", "acc@5"))
    better = "Invar-RAG answers better than RAG with a standard retriever"
    tuned = "the generation-stage fine-tuning helps"
    claims += [
        Claim(better, "invar-rag vs minilm-rag, EM", "generation", "invar-rag", "minilm-rag", "em"),
        Claim(better, "invar-rag vs minilm-rag + generator, EM", "generation", "invar-rag", "minilm-rag+generator", "em"),
        Claim(tuned, "invar-rag vs invar-retrieval, EM", "generation", "invar-rag", "invar-retrieval", "em"),
        Claim(tuned, "minilm-rag + generator vs minilm-rag, EM", "generation", "minilm-rag+generator", "minilm-rag",
              "em"),
        Claim("retrieval helps a small LM answer (RAG's premise)", "minilm-rag vs closed-book, EM", "generation",
              "minilm-rag", "closed-book", "em"),
    ]
    return claims


def claims_table(variants: dict, generation_results: dict, ablations: dict) -> pd.DataFrame:
    cfg = variants["provenance"]["config"]
    n_res, seed = cfg["retrieval"]["bootstrap_resamples"], cfg["seed"]
    sources = {"variants": retrievers(variants), "ablations": retrievers(ablations),
               "generation": generation(generation_results)}
    out = []
    for c in paper_claims(ablations):
        tests = c.tests(sources, n_res, seed)
        row = {"claim (paper)": c.claim, "test": c.test}
        for ds in ("nq", "triviaqa", "popqa"):
            t = tests.get(ds)
            row[DATASET_NAMES[ds]] = "—" if t is None else (
                f"{100 * t['a']:.1f} vs {100 * t['b']:.1f}; Δ {100 * t['effect']:+.1f} "
                f"[{100 * t['low']:+.1f}, {100 * t['high']:+.1f}], p {fmt_p(t['p'], n_res)}")
        row["verdict"] = verdict(tests)
        row["smallest detectable Δ"] = (f"{100 * max(t['mde'] for t in tests.values()):.1f}" if tests else "—")
        out.append(row)
    return pd.DataFrame(out).set_index("claim (paper)")


def summary_table(benchmark: dict, variants: dict, generation_results: dict, ablations: dict) -> pd.DataFrame:
    """The study in a few lines, for the top of the README, written from the results: the corpus
    ceiling, whether the LLM retriever learns, how it compares with MiniLM, the invariance claim, the
    generation stage's effect and the end-to-end claim, each with its verdict from `claims_table`."""
    ev = benchmark["counts"]["eval"]
    table = claims_table(variants, generation_results, ablations)
    ret, gen = retrievers(variants), generation(generation_results)

    def acc(name: str, k: int = HEADLINE_K) -> str:
        return " / ".join(f"{100 * ret[name][ds].acc(k).mean:.0f}" for ds in ordered(ret[name]))

    def em(row: str) -> str:
        return " / ".join(f"{100 * gen[row][ds].metric('em').mean:.0f}" for ds in ordered(gen[row]))

    def verdicts(test_prefix: str) -> str:
        found = [v for t, v in zip(table["test"], table["verdict"]) if t.startswith(test_prefix)]
        return ", ".join(dict.fromkeys(found)) or "not run"

    def verdict_of(test: str) -> str:
        found = [v for t, v in zip(table["test"], table["verdict"]) if t == test]
        return found[0] if found else "not run"

    names = " / ".join(DATASET_NAMES.get(ds, ds) for ds in ordered(ev))
    rows = {
        "what the corpus allows": (f"{' / '.join(str(ev[ds]['answer_in_corpus']) for ds in ordered(ev))} of "
                                   f"{' / '.join(str(ev[ds]['questions']) for ds in ordered(ev))} evaluation questions "
                                   f"({names}) have an answer in some passage; only NQ comes with gold passages"),
        "does the LLM retriever learn?": (f"invar acc@{HEADLINE_K} {acc('invar')} against random {acc('random')} "
                                          f"and untrained llm-zero {acc('llm-zero')}: "
                                          f"{verdicts('invar vs random')}"),
        "does it beat MiniLM and BM25?": (f"acc@{HEADLINE_K} MiniLM {acc('minilm')}, BM25 {acc('bm25')}: vs MiniLM "
                                          f"{verdict_of('invar vs minilm, acc@5')} (acc@20: "
                                          f"{verdict_of('invar vs minilm, acc@20')}), vs BM25 "
                                          f"{verdict_of('invar vs bm25, acc@5')}"),
        "is invar more stable across rewrites than llm-ctr?": (
            f"Jaccard@{HEADLINE_K} of the top {HEADLINE_K} across rewrites: {verdict_of('invar vs llm-ctr, Jaccard@5 ↑')}; "
            f"spread of hit@{HEADLINE_K} across rewrites: {verdict_of('invar vs llm-ctr, std of hit@5 ↓')}"),
    }
    if "invar-retrieval" in gen:
        rows["does the generation stage help?"] = (
            f"EM invar-rag {em('invar-rag')} vs invar-retrieval {em('invar-retrieval')}: "
            f"{verdict_of('invar-rag vs invar-retrieval, EM')}"
            + (f"; on MiniLM's passages {em('minilm-rag+generator')} vs {em('minilm-rag')}: "
               f"{verdict_of('minilm-rag + generator vs minilm-rag, EM')}" if "minilm-rag+generator" in gen else ""))
    rows["does Invar-RAG answer better?"] = (
        f"EM invar-rag {em('invar-rag')}; vs minilm-rag {em('minilm-rag')} (MiniLM's passages, base reader): "
        f"{verdict_of('invar-rag vs minilm-rag, EM')}"
        + (f"; vs minilm-rag + generator {em('minilm-rag+generator')} (MiniLM's passages, trained reader): "
           f"{verdict_of('invar-rag vs minilm-rag + generator, EM')}" if "minilm-rag+generator" in gen else ""))
    return pd.DataFrame({"answer, from this profile's results": rows}).rename_axis("question")
