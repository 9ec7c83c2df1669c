"""Stage 1's one entry point for stage 2: the frozen retriever's saved run.

Stage 2 reads `data/runs/<profile>/<variant>.json` (beside the BM25 and MiniLM runs): each split's
questions -> the variant's ranking. The run is made here, once, only when it is missing or was made
under another build, backbone, stage-1 / retriever / retrieval config or question set: preparing
stage 1, reusing (or training) the variant's checkpoint, then ranking MiniLM's candidates (rerank
mode) or the whole corpus (full mode).
"""
from __future__ import annotations

import json
import time
from typing import Mapping, Sequence

from ..config import Profile
from ..data import Benchmark
from ..integrity import load_or_none, read_sealed_json, write_sealed_json
from ..io_utils import sha256_text
from ..llm.backbone import Backbone
from ..paths import runs_dir

# The saved run keeps k passages per question plus this margin (for inspection and for a later k
# up to k + RUN_MARGIN without rerunning the retriever).
RUN_MARGIN = 20


def run_key(profile: Profile, bench: Benchmark, backbone: Backbone, splits: Mapping[str, Sequence[dict]]) -> str:
    """Everything the run depends on: the build, the base weights, the stage-1, retriever and
    retrieval configs (they fix the groups, the training and the candidates), the variant, the
    number of passages kept and the questions."""
    cfg = profile.to_dict()
    qids = {split: [q["id"] for q in qs] for split, qs in splits.items()}
    return sha256_text(bench.manifest["build_key"], backbone.model_fingerprint, json.dumps(cfg["stage1"]),
                       json.dumps(cfg["retriever"]), json.dumps(cfg["retrieval"]), profile.generator.retriever_variant,
                       str(profile.generator.k + RUN_MARGIN), json.dumps(qids, sort_keys=True))[:16]


def retriever_run(profile: Profile, bench: Benchmark, backbone: Backbone, splits: Mapping[str, Sequence[dict]],
                  log=print) -> dict:
    """The saved run of `generator.retriever_variant` for every question of `splits` (split name ->
    questions), made first if it is missing or stale. Returns the saved dict: `runs` (split -> qid
    -> ranked ids), `mode`, `depth`, `training_reused`, `timings_s`, and `made_now` (not saved)."""
    name = profile.generator.retriever_variant
    path = runs_dir(profile.name) / f"{name}.json"
    key = run_key(profile, bench, backbone, splits)
    saved = load_or_none(path, read_sealed_json, f"{name} run", log)
    if saved is not None and saved.get("key") == key:
        log(f"{name} run: reusing {path.name}")
        return {**saved, "made_now": False}
    return {**_make_run(profile, bench, backbone, splits, key, log), "made_now": True}


def _make_run(profile: Profile, bench: Benchmark, backbone: Backbone, splits: Mapping[str, Sequence[dict]],
              key: str, log=print) -> dict:
    from ..baselines import load_run
    from ..retrieval.coarse import CoarseStage
    from .experiment import train_variant
    from .prepare import prepare
    from .variants import objective_of

    name = profile.generator.retriever_variant
    objective = objective_of(profile, name)
    t0 = time.perf_counter()
    prepared = prepare(profile, bench, backbone=backbone, log=log)
    retriever, record = train_variant(profile, bench, prepared, name, objective, reuse=True, log=log)
    timings = {"retriever_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    keep = profile.generator.k + RUN_MARGIN
    full = profile.retriever.mode == "full"
    depth = len(prepared.passages) if full else profile.retriever.rerank_depth
    runs, memo = {}, {}
    if full:  # every corpus passage scored, as notebook 04 evaluates in this mode
        for split, qs in splits.items():
            runs[split] = retriever.search(qs, keep, memo=memo, persist=True)
    else:
        minilm = load_run(profile.name, "minilm", bench)["runs"]
        coarse = CoarseStage(profile, bench, log=log)
        for split, qs in splits.items():
            if split in minilm:
                cands = minilm[split]
            else:
                ranked = coarse.search("minilm", [q["question"] for q in qs], depth)
                cands = {q["id"]: c for q, c in zip(qs, ranked)}
            ranked = retriever.rerank(qs, cands, depth, memo=memo, persist=True)
            runs[split] = {qid: r[:keep] for qid, r in ranked.items()}
    timings["retriever_run_s"] = time.perf_counter() - t0
    saved = {"retriever": name, "depth": depth, "runs": runs, "key": key,
             "training_reused": bool(record and record.get("reused")),
             "mode": "full corpus (exact inner product)" if full else f"rerank of MiniLM's top {depth}",
             "benchmark_build_key": bench.manifest["build_key"],
             "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    write_sealed_json(runs_dir(profile.name) / f"{name}.json", saved)
    return saved
