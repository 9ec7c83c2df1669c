"""Stage 1 as notebooks 04 and 07 run it: train a variant into a retriever value, score variants.

`stage1.prepare.prepare` builds everything that does not depend on the variant (groups, rewrites,
LSR, trunk states, the ridge map), each step cached on disk. `train_variant` trains one objective from
the common adapter initialisation and returns it as an `LLMRetriever`; `run_variants` does that for
notebook 04's variants and scores each beside BM25, MiniLM and the random floor.
"""
from __future__ import annotations

import json
import math
import time

import torch

from ..config import Profile
from ..data import Benchmark
from ..io_utils import sha256_text
from ..llm.backbone import RETRIEVER
from ..llm.retriever import LLMRetriever
from ..paths import data_dir
from ..retrieval.harness import paired_pvalues
from .evaluate import Evaluation
from .prepare import Prepared
from .train import train_retriever
from .variants import Objective, main_objectives


def data_key(bench: Benchmark, prepared: Prepared) -> str:
    """What a trained adapter depends on besides its config: benchmark build, trunk weights, groups."""
    groups = [[g.question, list(g.passage_ids)] for g in prepared.all_groups + prepared.groups]
    return sha256_text(bench.manifest["build_key"], prepared.backbone.model_fingerprint, json.dumps(groups))[:16]


def train_variant(profile: Profile, bench: Benchmark, prepared: Prepared, name: str,
                  objective: Objective | None, reuse: bool = False, log=print, resume: bool = False,
                  out_dir=None) -> tuple[LLMRetriever, dict | None]:
    """The one way to train a retriever variant (notebooks 04 and 07, stage 2's entry point and
    `invar-rag train-retriever` all call it): `objective` from the common adapter initialisation
    into `out_dir` (default data/checkpoints/<profile>/retriever/<name>; None objective = llm-zero,
    no training); returns the trained retriever value and the training record. The ridge map into
    MiniLM's space belongs to alignment: variants with α > 0 read h(x) through it."""
    if objective is None:
        return prepared.retriever(name=name), None
    backbone = prepared.backbone
    projection = prepared.projection if objective.alpha else None
    backbone.reset_adapter(RETRIEVER)
    out = out_dir or data_dir() / "checkpoints" / profile.name / "retriever" / name
    record = train_retriever(backbone, prepared.main, objective, profile, out, log=log,
                             data_key=data_key(bench, prepared), reuse=reuse, env_data=prepared.data,
                             projection=projection, resume=resume)
    return prepared.retriever(weights=backbone.adapter_state(RETRIEVER), projection=projection, name=name), record


class VariantRuns:
    """Notebook 04 step by step: the evaluation side once (questions, rewrites, BM25 / MiniLM runs,
    the random floor), then `run(name, objective)` per variant (train from the common
    initialisation, score, collapse check), then `summary()`, the results dict."""

    def __init__(self, profile: Profile, bench: Benchmark, prepared: Prepared, evaluation: Evaluation | None = None,
                 log=print):
        self.profile, self.bench, self.prepared, self.log = profile, bench, prepared, log
        self.ev = evaluation or Evaluation(profile, bench, prepared.backbone, log=log)
        self.timings = dict(self.ev.timings)
        self.results = {name: self.ev.score_coarse(name) for name in ("bm25", "minilm")}
        self.results["random"] = self.ev.score_random()
        self.objectives: dict[str, Objective | None] = {}
        self.training, self.cosine = {}, {}

    def run(self, name: str, objective: Objective | None) -> dict:
        """Train `name` (unless it is `llm-zero`) and score it; returns its results per dataset."""
        t0 = time.perf_counter()
        retriever, record = train_variant(self.profile, self.bench, self.prepared, name, objective, log=self.log)
        if record is not None:
            self.training[name] = record
            self.timings[f"train_{name}_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.results[name] = self.ev.score_llm(retriever)
        self.cosine[name] = self.ev.passage_cosine()
        self.timings[f"eval_{name}_s"] = time.perf_counter() - t1
        self.objectives[name] = objective
        self.log(f"{name}: " + ", ".join(f"{ds} acc@5 {r['metrics']['acc@5']['mean']:.2f}"
                                         for ds, r in self.results[name].items()))
        return self.results[name]

    def summary(self) -> dict:
        """What notebook 04 saves (`04_retriever/retrieval.json`)."""
        profile, prepared, cfg = self.profile, self.prepared, self.profile.retrieval
        return {
            "mode": self.ev.mode, "ks": self.ev.ks, "retrievers": self.results,
            "paired_pvalues": paired_pvalues(self.results, ["minilm", "llm-ctr", "random", "llm-zero"], self.ev.ks,
                                             cfg.bootstrap_resamples, profile.seed),
            "training": {k: v["history"] for k, v in self.training.items()},
            # L_ctr of a uniform ranking over a micro-batch's candidates: a loss that stalls here is collapse
            "ctr_uniform": math.log(profile.stage1.batch_size * profile.stage1.group_size),
            "passage_cosine": self.cosine,
            "training_counts": {"groups": len(prepared.main), "env_groups": len(prepared.data),
                                "group_size": profile.stage1.group_size,
                                "env_group_size": profile.stage1.env_group_size,
                                "validation_questions": len(prepared.val_questions or [])},
            "pooling": profile.retriever.pooling, "tau_r": profile.retriever.tau_r,
            "objectives": {k: (None if v is None else v.__dict__) for k, v in self.objectives.items()},
            "eval_rewrite_sources": _count_sources(self.ev.rewrites),
            "timings_s": {k: round(v, 1) for k, v in {**prepared.timings, **self.timings}.items()},
        }


def run_variants(profile: Profile, bench: Benchmark, prepared: Prepared,
                 variants: dict[str, Objective | None] | None = None, log=print,
                 evaluation: Evaluation | None = None) -> dict:
    """Train and score `variants` (default: llm-zero, llm-ctr, llm-lsr and invar; the component
    ablations invar−align and invar−inv are notebook 07's, `ablations.run_ablations`)."""
    runs = VariantRuns(profile, bench, prepared, evaluation, log=log)
    for name, objective in (variants or {"llm-zero": None, **main_objectives(profile)}).items():
        runs.run(name, objective)
    return runs.summary()


@torch.no_grad()
def first_batch_loss(profile: Profile, prepared: Prepared, objective: Objective) -> dict:
    """The loss terms of `objective` on the first training micro-batch (and the first environment
    batch), with the adapter at its initialisation: what the first training step sees."""
    from .train import batch_loss, env_batch

    s1 = profile.stage1
    projection = prepared.projection if objective.alpha else None
    start = prepared.retriever(weights=prepared.backbone.initial[RETRIEVER], projection=projection)
    idx = list(range(min(s1.batch_size, len(prepared.main))))
    env_idx = env_batch(len(prepared.data), s1.env_batch_size, profile.seed, 0) if objective.needs_lsr else None
    with start.active():
        _, logs = batch_loss(start.encoder().eval(), prepared.main, idx, objective, start.tau_r, s1.tau_c,
                             prepared.data if objective.needs_lsr else None, env_idx)
    return {**logs, "uniform L_ctr (collapse level)": math.log(len(idx) * s1.group_size)}


def _count_sources(rewrites: dict) -> dict:
    counts: dict[str, int] = {}
    for entries in rewrites.values():
        for e in entries:
            counts[e["source"]] = counts.get(e["source"], 0) + 1
    return counts
