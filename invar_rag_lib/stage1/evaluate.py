"""Evaluating retriever variants (docs/method.md §3): `Evaluation` holds what every variant is scored
on (questions, their rewrites, the coarse runs that are the rerank candidates) and scores an
`LLMRetriever` value: acc@k with intervals and stability.

Stability, the paper's variance claim: for each question, (a) the mean Jaccard overlap between
the top-k set for the original question and for each rewrite, and (b) the standard deviation of
has_answer@k across the environments (original + rewrites). Lower (b) / higher (a) = more stable.
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np
import torch

from ..config import Profile
from ..data import Benchmark
from ..llm.backbone import Backbone
from ..llm.retriever import LLMRetriever
from ..metrics import bootstrap_ci, has_answer
from ..retrieval.coarse import CoarseStage
from ..retrieval.harness import evaluate_run, random_ranking, random_ranking_from_counts
from .prepare import rewrites


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


COSINE_SAMPLE = 500  # passages in the collapse check (mean pairwise cosine of h(d))


def mean_pairwise_cosine(reps: torch.Tensor) -> float:
    """Mean cosine over distinct pairs of L2-normalised rows: near 1 when every row is one point."""
    sims = reps @ reps.T
    n = reps.shape[0]
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def validation_set(profile: Profile, bench: Benchmark, questions: list[dict], log=print) -> tuple[list[dict], dict]:
    """The validation questions (held-out training questions) as eval-style records, and MiniLM's
    top `rerank_depth` candidates for each: what notebook 02's pooling floor and the sweep rerank."""
    val = [{"id": f"val-{i}", "question": q["question"], "golden_answers": q["golden_answers"]}
           for i, q in enumerate(questions)]
    depth = min(profile.retriever.rerank_depth, len(bench.corpus))
    ranked = CoarseStage(profile, bench, log=log).search("minilm", [q["question"] for q in val], depth)
    return val, {q["id"]: r for q, r in zip(val, ranked)}


class Evaluation:
    """The evaluation side shared by every variant: questions, their rewrites (the stability
    environments), and BM25 / MiniLM runs for each environment (baselines and rerank candidates)."""

    def __init__(self, profile: Profile, bench: Benchmark, backbone: Backbone, log=print):
        rc, cfg = profile.retriever, profile.retrieval
        self.profile, self.log = profile, log
        self.passages = bench.passages()
        self.full = rc.mode == "full"  # every corpus passage scored by the LLM (exact inner product)
        self.depth = len(self.passages) if self.full else rc.rerank_depth
        self.ks = [k for k in cfg.ks if k <= self.depth]
        self.questions = {ds: bench.eval_records(ds) for ds in bench.eval}
        self.text = {pid: p["text"] for pid, p in self.passages.items()}
        coarse = CoarseStage(profile, bench, log=log)
        t0 = time.perf_counter()
        self.rewrites = rewrites(backbone, profile, [q for qs in self.questions.values() for q in qs], log=log)
        self.timings = {"eval_rewrites_s": time.perf_counter() - t0}
        self.n_env = 1 + profile.stage1.n_rewrites
        self.coarse_runs: dict = {}
        for name in ("bm25", "minilm"):
            self.coarse_runs[name] = {}
            for ds, qs in self.questions.items():
                per_env = []
                for e in range(self.n_env):
                    texts = [self.query(q, e) for q in qs]
                    ranked = coarse.search(name, texts, max(cfg.ks) if self.full else max(self.depth, max(cfg.ks)))
                    per_env.append({q["id"]: r for q, r in zip(qs, ranked)})
                self.coarse_runs[name][ds] = per_env
        self.last_reps: dict = {}

    def query(self, q: dict, env: int) -> str:
        return q["question"] if env == 0 else self.rewrites[q["question"]][env - 1]["text"]

    def score(self, per_env: list[dict], ds: str) -> dict:
        cfg = self.profile.retrieval
        return score_variant(per_env, self.questions[ds], self.text, self.ks, 5, cfg.bootstrap_resamples,
                             self.profile.seed)

    def score_random(self) -> dict:
        """The floor: the exact expected acc@k of a uniformly random order of the LLM's candidates
        (MiniLM's top `rerank_depth`, or the whole corpus in full mode)."""
        cfg, out = self.profile.retrieval, {}
        for ds, qs in self.questions.items():
            if self.full:
                counts = [(len(self.text), q["metadata"]["n_answer_passages"]) for q in qs]
                out[ds] = random_ranking_from_counts([q["id"] for q in qs], counts, self.ks,
                                                     cfg.bootstrap_resamples, self.profile.seed)
            else:
                cands = {qid: r[: self.depth] for qid, r in self.coarse_runs["minilm"][ds][0].items()}
                out[ds] = random_ranking(cands, qs, self.text, self.ks, cfg.bootstrap_resamples,
                                         self.profile.seed)
        return out

    def score_coarse(self, name: str) -> dict:
        return {ds: self.score(self.coarse_runs[name][ds], ds) for ds in self.questions}

    def llm_runs(self, retriever: LLMRetriever) -> dict[str, list[dict]]:
        """Ranked ids per dataset and environment under `retriever`. Passage reps persist
        (`LLMRetriever.passage_reps`): scoring the same value again reads them."""
        out, memo, top = {}, {}, max(self.profile.retrieval.ks)  # memo: reps shared by datasets and rewrites
        for ds, qs in self.questions.items():
            per_env = []
            for e in range(self.n_env):
                qtexts = None if e == 0 else {q["id"]: self.query(q, e) for q in qs}
                if self.full:
                    ranked = retriever.search(qs, top, query_texts=qtexts, memo=memo, persist=True)
                else:
                    ranked = retriever.rerank(qs, self.coarse_runs["minilm"][ds][e], self.depth, query_texts=qtexts,
                                              memo=memo, persist=True)
                per_env.append({qid: r[:top] for qid, r in ranked.items()})
            out[ds] = per_env
        self.last_reps = memo
        return out

    def passage_cosine(self, n: int = COSINE_SAMPLE) -> float:
        """Mean pairwise cosine of h(d) over a fixed sample of the last scored passages: near 1
        when every passage maps to one point (collapse)."""
        pids = sorted(self.last_reps)[:n]
        return mean_pairwise_cosine(torch.stack([self.last_reps[p] for p in pids]))

    def score_llm(self, retriever: LLMRetriever) -> dict:
        runs = self.llm_runs(retriever)
        return {ds: self.score(runs[ds], ds) for ds in self.questions}

    @property
    def mode(self) -> str:
        return "full corpus (exact inner product)" if self.full else f"rerank of MiniLM's top {self.depth}"
