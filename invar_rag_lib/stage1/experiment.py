"""Stage 1 as notebooks 03–04 run it: prepare the training data once, train and score variants.

`prepare` builds everything that does not depend on the variant (groups, rewrites, LSR, trunk
states), each step cached on disk. `run_variants` trains notebook 04's variants from the same adapter
initialisation, reranks MiniLM's candidates for the evaluation questions (and for their rewrites,
for the stability metrics), and scores them beside BM25 and MiniLM.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace

import torch

from ..baselines import CoarseRetrievers
from ..config import Profile
from ..data import Benchmark
from ..io_utils import sha256_text
from ..paths import data_dir
from ..retrieval.harness import random_ranking, random_ranking_from_counts
from .evaluate import paired_pvalues, score_variant
from .groups import Group, build_groups, training_split
from .pipeline import RetrieverStage
from .train import Objective, TrainingData, main_objectives, train_retriever


@dataclass
class Prepared:
    """Stage-1 training data. `all_groups`/`main` (every training question: L_ctr, L_align) and
    the environment subset `groups`/`data` (its first `stage1.env_questions` groups, cut to
    `env_group_size` members, with rewrites, windows and LSR scores: L_inv and the LSR term)."""
    stage: RetrieverStage
    groups: list[Group]  # the environment subset
    rewrites: dict
    lsr: object  # torch.Tensor [E, n_env, G_env] of ℓ_e(d)
    data: TrainingData  # the environment subset, with LSR targets
    timings: dict
    all_groups: list[Group] = None  # every training group
    main: TrainingData = None  # every training group, original question and window only
    val_questions: list = None  # held-out training questions (validation split), not trained on
    projection: object = None  # torch.Tensor W (ridge map into MiniLM's space) or None


def env_subset(groups: list[Group], n: int, size: int) -> list[Group]:
    """The first `n` groups (0 = all), each cut to its first `size` members (positives first,
    then MiniLM's hardest negatives)."""
    chosen = groups[:n] if n else groups
    return [replace(g, passage_ids=g.passage_ids[:size], positive=g.positive[:size],
                    coarse_scores=g.coarse_scores[:size]) for g in chosen]


def prepare(profile: Profile, bench: Benchmark, stage: RetrieverStage | None = None, log=print) -> Prepared:
    s1 = profile.stage1
    timings = {}
    t0 = time.perf_counter()
    stage = stage or RetrieverStage(profile, bench, log=log)
    timings["load_backbone_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_q, val_q = training_split(profile, bench)
    all_groups = build_groups(profile, bench, train_q, log=log)
    groups = env_subset(all_groups, s1.env_questions, s1.env_group_size)
    timings["groups_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewrites = stage.rewrites([{"question": g.question, "golden_answers": g.answers} for g in groups])
    timings["rewrites_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lsr = stage.lsr(groups, rewrites)
    timings["lsr_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    main = stage.training_data(all_groups, None, None)
    data = stage.training_data(groups, rewrites, lsr)
    timings["trunk_training_s"] = time.perf_counter() - t0
    projection = None
    if s1.projection == "ridge":
        t0 = time.perf_counter()
        projection = stage.fit_projection(all_groups, log=log)
        timings["projection_s"] = time.perf_counter() - t0
    log(f"training: {len(all_groups)} groups of {s1.group_size} (L_ctr, L_align); {len(groups)} with "
        f"environments and LSR over {s1.env_group_size} members (L_inv, LSR); {len(val_q)} validation questions")
    return Prepared(stage, groups, rewrites, lsr, data, timings, all_groups, main, val_q, projection)


def validation_set(profile: Profile, bench: Benchmark, questions: list[dict], log=print) -> tuple[list[dict], dict]:
    """The validation questions (held-out training questions) as eval-style records, and MiniLM's
    top `rerank_depth` candidates for each: what notebook 02's pooling floor and the sweep rerank."""
    val = [{"id": f"val-{i}", "question": q["question"], "golden_answers": q["golden_answers"]}
           for i, q in enumerate(questions)]
    depth = min(profile.retriever.rerank_depth, len(bench.corpus))
    ranked = CoarseRetrievers(profile, bench, log=log).search("minilm", [q["question"] for q in val], depth)
    return val, {q["id"]: r for q, r in zip(val, ranked)}


COSINE_SAMPLE = 500  # passages in the collapse check (mean pairwise cosine of h(d))


def mean_pairwise_cosine(reps: torch.Tensor) -> float:
    """Mean cosine over distinct pairs of L2-normalised rows: near 1 when every row is one point."""
    sims = reps @ reps.T
    n = reps.shape[0]
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


class Evaluation:
    """The evaluation side shared by every variant: questions, their rewrites (the stability
    environments), and BM25 / MiniLM runs for each environment (baselines and rerank candidates)."""

    def __init__(self, profile: Profile, bench: Benchmark, stage: RetrieverStage, log=print):
        rc, cfg = profile.retriever, profile.retrieval
        self.profile, self.stage, self.log = profile, stage, log
        self.full = rc.mode == "full"  # every corpus passage scored by the LLM (exact inner product)
        self.depth = len(stage.passages) if self.full else rc.rerank_depth
        self.ks = [k for k in cfg.ks if k <= self.depth]
        self.questions = {ds: bench.eval_records(ds) for ds in bench.eval}
        self.text = {pid: p["text"] for pid, p in stage.passages.items()}
        coarse = CoarseRetrievers(profile, bench, log=log)
        t0 = time.perf_counter()
        self.rewrites = stage.rewrites([q for qs in self.questions.values() for q in qs])
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

    def llm_runs(self, adapter: bool) -> dict[str, list[dict]]:
        """Ranked ids per dataset and environment under the retriever adapter as it is now. Passage
        reps persist (`RetrieverStage.passage_reps`): scoring the same weights again reads them."""
        stage, out = self.stage, {}
        memo: dict = {}  # passage reps under these weights, shared by datasets and rewrites
        for ds, qs in self.questions.items():
            per_env = []
            for e in range(self.n_env):
                qtexts = None if e == 0 else {q["id"]: self.query(q, e) for q in qs}
                if self.full:
                    ranked = stage.search(qs, max(self.profile.retrieval.ks), query_texts=qtexts,
                                          adapter=adapter, memo=memo, persist=True)
                else:
                    ranked = stage.rerank(qs, self.coarse_runs["minilm"][ds][e], self.depth, query_texts=qtexts,
                                          adapter=adapter, memo=memo, persist=True)
                per_env.append({qid: r[: max(self.profile.retrieval.ks)] for qid, r in ranked.items()})
            out[ds] = per_env
        self.last_reps = memo
        return out

    def passage_cosine(self, n: int = COSINE_SAMPLE) -> float:
        """Mean pairwise cosine of h(d) over a fixed sample of the last scored passages: near 1
        when every passage maps to one point (collapse)."""
        pids = sorted(self.last_reps)[:n]
        return mean_pairwise_cosine(torch.stack([self.last_reps[p] for p in pids]))

    def score_llm(self, adapter: bool) -> dict:
        runs = self.llm_runs(adapter)
        return {ds: self.score(runs[ds], ds) for ds in self.questions}

    @property
    def mode(self) -> str:
        return "full corpus (exact inner product)" if self.full else f"rerank of MiniLM's top {self.depth}"


def data_key(bench: Benchmark, prepared: Prepared) -> str:
    """What a trained adapter depends on besides its config: benchmark build, trunk weights, groups."""
    groups = [[g.question, list(g.passage_ids)] for g in prepared.all_groups + prepared.groups]
    return sha256_text(bench.manifest["build_key"], prepared.stage.model_fingerprint, json.dumps(groups))[:16]


def train_variant(profile: Profile, bench: Benchmark, prepared: Prepared, name: str,
                  objective: Objective | None, reuse: bool = False, log=print) -> dict | None:
    """Reset the adapter, train `objective` into data/checkpoints/<profile>/retriever/<name>
    (None = llm-zero, no training); returns the training record."""
    prepared.stage.reset_adapter()
    # The ridge map into MiniLM's space belongs to alignment: variants with α > 0 use it.
    projection = prepared.projection if objective is not None and objective.alpha else None
    prepared.stage.projection = projection
    if objective is None:
        return None
    out = data_dir() / "checkpoints" / profile.name / "retriever" / name
    return train_retriever(prepared.stage.model, prepared.stage.split, prepared.main, objective, profile,
                           out, log=log, data_key=data_key(bench, prepared), reuse=reuse, env_data=prepared.data,
                           projection=projection)


def run_variants(profile: Profile, bench: Benchmark, prepared: Prepared,
                 variants: dict[str, Objective | None] | None = None, log=print,
                 evaluation: Evaluation | None = None) -> dict:
    """Train and score `variants` (default: llm-zero, llm-ctr, llm-lsr and invar; the component
    ablations invar−align and invar−inv are notebook 07's, `ablations.run_ablations`)."""
    stage, cfg = prepared.stage, profile.retrieval
    variants = variants or {"llm-zero": None, **main_objectives(profile)}
    ev = evaluation or Evaluation(profile, bench, stage, log=log)
    timings = dict(ev.timings)
    results = {name: ev.score_coarse(name) for name in ("bm25", "minilm")}
    results["random"] = ev.score_random()
    training, cosine = {}, {}
    for name, objective in variants.items():
        t0 = time.perf_counter()
        record = train_variant(profile, bench, prepared, name, objective, log=log)
        if record is not None:
            training[name] = record
            timings[f"train_{name}_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        results[name] = ev.score_llm(adapter=objective is not None)
        cosine[name] = ev.passage_cosine()
        timings[f"eval_{name}_s"] = time.perf_counter() - t1
        log(f"{name}: " + ", ".join(f"{ds} acc@5 {r['metrics']['acc@5']['mean']:.2f}"
                                    for ds, r in results[name].items()))
    stage.reset_adapter()
    return {
        "mode": ev.mode, "ks": ev.ks, "retrievers": results,
        "paired_pvalues": paired_pvalues(results, ["minilm", "llm-ctr", "random", "llm-zero"], ev.ks,
                                         cfg.bootstrap_resamples, profile.seed),
        "training": {k: v["history"] for k, v in training.items()},
        # L_ctr of a uniform ranking over a micro-batch's candidates: a loss that stalls here is collapse
        "ctr_uniform": math.log(profile.stage1.batch_size * profile.stage1.group_size),
        "passage_cosine": cosine,
        "training_counts": {"groups": len(prepared.main), "env_groups": len(prepared.data),
                            "group_size": profile.stage1.group_size,
                            "env_group_size": profile.stage1.env_group_size,
                            "validation_questions": len(prepared.val_questions or [])},
        "pooling": profile.retriever.pooling, "tau_r": profile.retriever.tau_r,
        "objectives": {k: (None if v is None else v.__dict__) for k, v in variants.items()},
        "eval_rewrite_sources": _count_sources(ev.rewrites),
        "timings_s": {k: round(v, 1) for k, v in {**prepared.timings, **timings}.items()},
    }


def _count_sources(rewrites: dict) -> dict:
    counts: dict[str, int] = {}
    for entries in rewrites.values():
        for e in entries:
            counts[e["source"]] = counts.get(e["source"], 0) + 1
    return counts
