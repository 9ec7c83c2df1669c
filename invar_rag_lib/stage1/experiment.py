"""Stage 1 as notebooks 03–04 run it: prepare the training data once, train and score variants.

`prepare` builds everything that does not depend on the variant (groups, rewrites, LSR, trunk
states), each step cached on disk. `run_variants` trains every variant from the same adapter
initialisation, reranks MiniLM's candidates for the evaluation questions (and for their rewrites,
for the stability metrics), and scores them beside BM25 and MiniLM.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..baselines import CoarseRetrievers
from ..config import Profile
from ..data import Benchmark
from ..paths import data_dir
from .evaluate import paired_pvalues, score_variant
from .groups import Group, build_groups, select_training_questions
from .pipeline import RetrieverStage
from .train import Objective, TrainingData, train_retriever, variant_objectives


@dataclass
class Prepared:
    stage: RetrieverStage
    groups: list[Group]
    rewrites: dict
    lsr: object  # torch.Tensor [E, n, G] of ℓ_e(d)
    data: TrainingData
    timings: dict


def prepare(profile: Profile, bench: Benchmark, stage: RetrieverStage | None = None, log=print) -> Prepared:
    timings = {}
    t0 = time.perf_counter()
    stage = stage or RetrieverStage(profile, bench, log=log)
    timings["load_backbone_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = build_groups(profile, bench, select_training_questions(
        bench, profile.stage1.train_questions, profile.seed), log=log)
    timings["groups_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewrites = stage.rewrites([{"question": g.question, "golden_answers": g.answers} for g in groups])
    timings["rewrites_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lsr = stage.lsr(groups, rewrites)
    timings["lsr_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = stage.training_data(groups, rewrites, lsr)
    timings["trunk_training_s"] = time.perf_counter() - t0
    return Prepared(stage, groups, rewrites, lsr, data, timings)


def run_variants(profile: Profile, bench: Benchmark, prepared: Prepared,
                 variants: dict[str, Objective | None] | None = None, log=print) -> dict:
    """Train and score `variants` (default: llm-zero + every objective of METHOD.md §1)."""
    stage, rc, cfg = prepared.stage, profile.retriever, profile.retrieval
    variants = variants or {"llm-zero": None, **variant_objectives(profile)}
    full = rc.mode == "full"  # every corpus passage scored by the LLM (exact inner product)
    depth = len(stage.passages) if full else rc.rerank_depth
    ks = [k for k in cfg.ks if k <= depth]
    questions = {ds: bench.eval_records(ds) for ds in bench.eval}
    text = {pid: p["text"] for pid, p in stage.passages.items()}
    coarse = CoarseRetrievers(profile, bench, log=log)
    eval_items = [q for qs in questions.values() for q in qs]
    t0 = time.perf_counter()
    eval_rewrites = stage.rewrites(eval_items)
    timings = {"eval_rewrites_s": time.perf_counter() - t0}
    n_env = 1 + profile.stage1.n_rewrites
    # Coarse runs for the original question and each rewrite: baselines and rerank candidates.
    coarse_runs = {}
    for name in ("bm25", "minilm"):
        coarse_runs[name] = {}
        for ds, qs in questions.items():
            per_env = []
            for e in range(n_env):
                texts = [q["question"] if e == 0 else eval_rewrites[q["question"]][e - 1]["text"] for q in qs]
                ranked = coarse.search(name, texts, max(cfg.ks) if full else max(depth, max(cfg.ks)))
                per_env.append({q["id"]: r for q, r in zip(qs, ranked)})
            coarse_runs[name][ds] = per_env
    results, training = {}, {}
    for name in ("bm25", "minilm"):
        results[name] = {ds: score_variant(coarse_runs[name][ds], questions[ds], text, ks, 5,
                                           cfg.bootstrap_resamples, profile.seed) for ds in questions}
    for name, objective in variants.items():
        t0 = time.perf_counter()
        stage.reset_adapter()
        if objective is not None:
            out = data_dir() / "checkpoints" / profile.name / "retriever" / name
            training[name] = train_retriever(stage.model, stage.split, prepared.data, objective, profile,
                                             out, log=log)
            timings[f"train_{name}_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        results[name] = {}
        memo: dict = {}  # passage reps under this variant's weights, shared by datasets and rewrites
        for ds, qs in questions.items():
            per_env = []
            for e in range(n_env):
                qtexts = None if e == 0 else {q["id"]: eval_rewrites[q["question"]][e - 1]["text"] for q in qs}
                cands = ({q["id"]: list(stage.passages) for q in qs} if full
                         else coarse_runs["minilm"][ds][e])
                ranked = stage.rerank(qs, cands, depth, query_texts=qtexts,
                                      adapter=objective is not None, memo=memo)
                per_env.append({qid: r[: max(cfg.ks)] for qid, r in ranked.items()})
            results[name][ds] = score_variant(per_env, qs, text, ks, 5, cfg.bootstrap_resamples, profile.seed)
        timings[f"eval_{name}_s"] = time.perf_counter() - t1
        log(f"{name}: " + ", ".join(f"{ds} acc@5 {r['metrics']['acc@5']['mean']:.2f}"
                                    for ds, r in results[name].items()))
    stage.reset_adapter()
    return {
        "mode": "full corpus (exact inner product)" if full else f"rerank of MiniLM's top {depth}",
        "ks": ks, "retrievers": results,
        "paired_pvalues": paired_pvalues(results, ["minilm", "llm-ctr"], ks, cfg.bootstrap_resamples, profile.seed),
        "training": {k: v["history"] for k, v in training.items()},
        "objectives": {k: (None if v is None else v.__dict__) for k, v in variants.items()},
        "eval_rewrite_sources": _count_sources(eval_rewrites),
        "timings_s": {k: round(v, 1) for k, v in {**prepared.timings, **timings}.items()},
    }


def _count_sources(rewrites: dict) -> dict:
    counts: dict[str, int] = {}
    for entries in rewrites.values():
        for e in entries:
            counts[e["source"]] = counts.get(e["source"], 0) + 1
    return counts
