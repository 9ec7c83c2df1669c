"""Notebook 01: BM25 and MiniLM (the coarse stage, `retrieval/coarse.py`) over the whole corpus,
scored with the shared harness.

Runs (top-`max(ks)` passage ids per question) are saved under `data/runs/<profile>/`: they are the
coarse candidates `K(q)` of later stages and the passages of the `bm25-rag` / `minilm-rag` rows.
"""
from __future__ import annotations

import time

from .config import Profile
from .data import Benchmark
from .integrity import IntegrityError, read_sealed_json, write_sealed_json
from .paths import runs_dir
from .retrieval.coarse import CoarseStage
from .retrieval.harness import evaluate_run, paired_pvalue_at_k


def run_baselines(profile: Profile, bench: Benchmark, log=print) -> dict:
    cfg = profile.retrieval
    depth = max(cfg.ks)
    coarse = CoarseStage(profile, bench, log=log)
    text = coarse.text
    questions = {ds: bench.eval_records(ds) for ds in bench.eval}
    timings, runs = dict(coarse.timings), {"bm25": {}, "minilm": {}}
    for name in runs:
        t0 = time.perf_counter()
        for ds, qs in questions.items():
            ranked = coarse.search(name, [q["question"] for q in qs], depth)
            runs[name][ds] = {q["id"]: r for q, r in zip(qs, ranked)}
        timings[f"{name}_search_s"] = time.perf_counter() - t0
    ids = coarse.ids

    results: dict = {"retrievers": {}, "paired_pvalues": {}}
    for name, by_ds in runs.items():
        write_sealed_json(runs_dir(profile.name) / f"{name}.json",
                          {"retriever": name, "depth": depth, "runs": by_ds,
                           "benchmark_build_key": bench.manifest["build_key"]})
        results["retrievers"][name] = {
            ds: evaluate_run(run, questions[ds], text, cfg.ks, cfg.bootstrap_resamples, profile.seed)
            for ds, run in by_ds.items()}
    for ds in questions:
        results["paired_pvalues"][f"minilm_vs_bm25/{ds}"] = {
            f"acc@{k}": paired_pvalue_at_k(results["retrievers"]["minilm"][ds],
                                           results["retrievers"]["bm25"][ds], k,
                                           cfg.bootstrap_resamples, profile.seed)
            for k in cfg.ks}
    results["answer_coverage"] = {ds: sum(q["metadata"]["answer_in_corpus"] for q in qs) / len(qs)
                                  for ds, qs in questions.items()}
    results["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    results["mode"] = "full corpus (exact search)"
    results["corpus_size"] = len(ids)
    return results


def load_run(profile_name: str, retriever: str, bench: Benchmark | None = None) -> dict:
    """A saved run; with `bench`, refuse one made on another build of the benchmark."""
    path = runs_dir(profile_name) / f"{retriever}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebook 01_baselines first")
    try:
        run = read_sealed_json(path)
    except IntegrityError as e:
        raise IntegrityError(path, f"{e.reason}: rerun notebook 01_baselines "
                             f"(invar-rag reproduce --profile {profile_name} --only 01)") from e
    if bench is not None and run.get("benchmark_build_key") != bench.manifest["build_key"]:
        raise ValueError(f"{path} was made on another build of the {profile_name} benchmark: "
                         f"rerun notebook 01_baselines (invar-rag reproduce --profile {profile_name} --only 01)")
    return run
