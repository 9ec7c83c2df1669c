"""The retrieval evaluation harness shared by every retriever (baselines now, LLM variants later).

A *run* maps each question id to its ranked passage ids. From a run and the gold answers we get
the per-question `first_hit_rank` (DPR has_answer on passage text), then acc@k with bootstrap
intervals; per-question values are kept so later tables can compute paired p-values.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ..metrics import acc_at_k, bootstrap_ci, has_answer, paired_bootstrap_pvalue

# How many passage ids of each ranking the results keep, so that anyone can recheck acc@k (k ≤ 20)
# and the top-k overlaps from the results and the corpus alone, without running a model.
SAVED_RANKING_DEPTH = 20


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
    """acc@k (with 95% bootstrap CI) for every k, plus per question its first-hit rank and the top
    `SAVED_RANKING_DEPTH` passage ids of its ranking."""
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
            "per_question": {"ids": [q["id"] for q in questions], "first_hit_rank": ranks,
                             "top_ids": [list(run[q["id"]][:SAVED_RANKING_DEPTH]) for q in questions]}}


def recheck(result: dict, questions: Sequence[dict], passage_text: Mapping[str, str]) -> list[str]:
    """Recompute has_answer over a result's saved `top_ids`; the questions whose saved first-hit
    rank (within the saved depth) disagrees. An empty list means the result checks out."""
    per_q = result["per_question"]
    by_id = {q["id"]: q for q in questions}
    bad = []
    for qid, rank, top in zip(per_q["ids"], per_q["first_hit_rank"], per_q["top_ids"]):
        again = first_hit_ranks({qid: top}, [by_id[qid]], passage_text)[0]
        saved = rank if rank is not None and rank <= len(top) else None
        if again != saved:
            bad.append(qid)
    return bad


def hits_at_k(result: dict, k: int) -> list[float]:
    """Per-question hit@k of a result: 0/1 from its first-hit ranks, or, for the random floor,
    the exact probability stored in `per_question["expected_hit"]`."""
    per_q = result["per_question"]
    if "expected_hit" in per_q:
        return list(per_q["expected_hit"][str(k)])
    return list(acc_at_k(per_q["first_hit_rank"], k)[1])


def paired_pvalue_at_k(result_a: dict, result_b: dict, k: int, n_resamples: int = 1000,
                       seed: int = 0) -> float:
    """Paired bootstrap p-value of acc@k between two results on the same questions."""
    if result_a["per_question"]["ids"] != result_b["per_question"]["ids"]:
        raise ValueError("the two results are not on the same questions in the same order")
    return paired_bootstrap_pvalue(hits_at_k(result_a, k), hits_at_k(result_b, k),
                                   n_resamples=n_resamples, seed=seed)


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


def random_ranking(candidates: Mapping[str, Sequence[str]], questions: Sequence[dict],
                   passage_text: Mapping[str, str], ks: Sequence[int], n_resamples: int = 1000,
                   seed: int = 0) -> dict:
    """The floor: the exact expectation of acc@k when each question's candidates are put in a
    uniformly random order. With N candidates of which n hold an answer,
    P(hit@k) = 1 − C(N−n, k) / C(N, k). Intervals are bootstrapped over these probabilities."""
    counts = [(len(candidates[q["id"]]),
               sum(has_answer(passage_text[p], q["golden_answers"]) for p in candidates[q["id"]]))
              for q in questions]
    return random_ranking_from_counts([q["id"] for q in questions], counts, ks, n_resamples, seed)


def random_ranking_from_counts(ids: Sequence[str], counts: Sequence[tuple[int, int]], ks: Sequence[int],
                               n_resamples: int = 1000, seed: int = 0) -> dict:
    """`random_ranking` from (N candidates, n answer-bearing) per question."""
    from math import comb

    probs: dict[str, list[float]] = {str(k): [] for k in ks}
    for n_total, n_hit in counts:
        for k in ks:
            kk = min(k, n_total)
            probs[str(k)].append(1.0 - comb(n_total - n_hit, kk) / comb(n_total, kk) if n_total else 0.0)
    metrics = {f"acc@{k}": bootstrap_ci(probs[str(k)], n_resamples=n_resamples, seed=seed) for k in ks}
    return {"n": len(ids), "metrics": metrics, "per_question": {"ids": list(ids), "expected_hit": probs}}
