"""The retrieval evaluation harness shared by every retriever (baselines now, LLM variants later).

A *run* maps each question id to its ranked passage ids. From a run and the gold answers we get
the per-question `first_hit_rank` (DPR has_answer on passage text), then acc@k with bootstrap
intervals; per-question values are kept so later tables can compute paired p-values.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ..metrics import acc_at_k, bootstrap_ci, has_answer, paired_bootstrap_pvalue


def first_hit_ranks(run: Mapping[str, Sequence[str]], questions: Sequence[dict],
                    passage_text: Mapping[str, str]) -> list[int | None]:
    ranks = []
    for q in questions:
        rank = None
        for i, pid in enumerate(run[q["id"]], start=1):
            if has_answer(passage_text[pid], q["golden_answers"]):
                rank = i
                break
        ranks.append(rank)
    return ranks


def evaluate_run(run: Mapping[str, Sequence[str]], questions: Sequence[dict],
                 passage_text: Mapping[str, str], ks: Sequence[int], n_resamples: int = 1000,
                 seed: int = 0) -> dict:
    """acc@k (with 95% bootstrap CI) for every k, plus per-question first-hit ranks."""
    depth = min(len(v) for v in run.values()) if run else 0
    too_deep = [k for k in ks if k > depth]
    if too_deep:
        raise ValueError(f"run has only {depth} passages per question; cannot score acc@{too_deep}")
    ranks = first_hit_ranks(run, questions, passage_text)
    metrics = {}
    for k in ks:
        _, per_item = acc_at_k(ranks, k)
        metrics[f"acc@{k}"] = bootstrap_ci(per_item, n_resamples=n_resamples, seed=seed)
    return {"n": len(questions), "metrics": metrics,
            "per_question": {"ids": [q["id"] for q in questions], "first_hit_rank": ranks}}


def paired_pvalue_at_k(result_a: dict, result_b: dict, k: int, n_resamples: int = 1000,
                       seed: int = 0) -> float:
    """Paired bootstrap p-value of acc@k between two results on the same questions."""
    if result_a["per_question"]["ids"] != result_b["per_question"]["ids"]:
        raise ValueError("the two results are not on the same questions in the same order")
    _, a = acc_at_k(result_a["per_question"]["first_hit_rank"], k)
    _, b = acc_at_k(result_b["per_question"]["first_hit_rank"], k)
    return paired_bootstrap_pvalue(a, b, n_resamples=n_resamples, seed=seed)
