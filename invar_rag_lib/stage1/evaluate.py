"""Scoring retriever variants: acc@k with intervals, paired p-values, and stability (docs/method.md §3).

Stability, the paper's variance claim: for each question, (a) the mean Jaccard overlap between
the top-k set for the original question and for each rewrite, and (b) the standard deviation of
has_answer@k across the environments (original + rewrites). Lower (b) / higher (a) = more stable.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..metrics import bootstrap_ci, has_answer
from ..retrieval.harness import evaluate_run, paired_pvalue_at_k


def hit_at_k(ranked: Sequence[str], answers: Sequence[str], passage_text: Mapping[str, str], k: int) -> float:
    return float(any(has_answer(passage_text[p], answers) for p in ranked[:k]))


def stability(runs_by_env: Sequence[Mapping[str, Sequence[str]]], questions: Sequence[dict],
              passage_text: Mapping[str, str], k: int, n_resamples: int, seed: int) -> dict:
    """`runs_by_env[0]` is the original question's run, the others are rewrites' runs."""
    jaccard, spread = [], []
    for q in questions:
        sets = [set(run[q["id"]][:k]) for run in runs_by_env]
        jaccard.append(float(np.mean([len(sets[0] & s) / len(sets[0] | s) for s in sets[1:]])))
        hits = [hit_at_k(run[q["id"]], q["golden_answers"], passage_text, k) for run in runs_by_env]
        spread.append(float(np.std(hits)))
    return {f"jaccard@{k}": bootstrap_ci(jaccard, n_resamples, seed),
            f"has_answer_std@{k}": bootstrap_ci(spread, n_resamples, seed),
            "per_question": {"jaccard": jaccard, "has_answer_std": spread}}


def score_variant(runs_by_env: Sequence[Mapping[str, Sequence[str]]], questions: Sequence[dict],
                  passage_text: Mapping[str, str], ks: Sequence[int], stability_k: int,
                  n_resamples: int, seed: int) -> dict:
    result = evaluate_run(runs_by_env[0], questions, passage_text, ks, n_resamples, seed)
    if len(runs_by_env) > 1:
        result["stability"] = stability(runs_by_env, questions, passage_text, stability_k, n_resamples, seed)
    return result


def paired_pvalues(results: Mapping[str, Mapping[str, dict]], against: Sequence[str],
                   ks: Sequence[int], n_resamples: int, seed: int) -> dict:
    """{f"{name}_vs_{base}/{dataset}": {f"acc@{k}": p}} for every retriever against each base."""
    out = {}
    for base in against:
        for name, by_ds in results.items():
            if name == base or base not in results:
                continue
            for ds, res in by_ds.items():
                out[f"{name}_vs_{base}/{ds}"] = {
                    f"acc@{k}": paired_pvalue_at_k(res, results[base][ds], k, n_resamples, seed) for k in ks}
    return out
