"""Stage-1 recipe sweep: which settings make the LLM retriever learn (cpu profile by default).

Selects on the **validation split** (`stage1.val_questions` held-out training questions, disjoint
from the training questions and from every evaluation sample), never on the reported evaluation
questions. Each point trains the `retriever` adapter from the same initialisation on the profile's
training groups with some fields overridden, then reranks MiniLM's top `rerank_depth` for the
validation questions. Floors on the same questions: the exact random rerank, and `llm-zero` under
each pooling. Also recorded per point: wall time, final losses, and the mean pairwise cosine of
passage representations (a collapse check: it rises towards 1 when every passage maps to one point).

Writes reports/results/benchmarks/stage1_sweep.json and reports/tables/stage1_sweep.md.

Usage: .venv/bin/python benchmarks/stage1_sweep.py [--profile cpu] [--points base lr3e-4 ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time

import torch

from invar_rag_lib.config import load_profile
from invar_rag_lib.data import load_benchmark
from invar_rag_lib.io_utils import atomic_write_json
from invar_rag_lib.llm.backbone import RETRIEVER
from invar_rag_lib.llm.encoder import set_lora_dropout
from invar_rag_lib.llm.retriever import LLMRetriever
from invar_rag_lib.paths import data_dir, reports_dir
from invar_rag_lib.retrieval.harness import evaluate_run, random_ranking
from invar_rag_lib.stage1.evaluate import mean_pairwise_cosine, validation_set
from invar_rag_lib.stage1.prepare import env_subset, fit_projection, prepare, training_data
from invar_rag_lib.stage1.train import train_retriever
from invar_rag_lib.stage1.variants import Objective

# The sweep's centre, fixed here (not read from the profile, whose values the sweep chooses):
BASE_RETRIEVER = {"pooling": "mean", "tau_r": 0.05, "lora_layers": 2, "lora_dropout": 0.05,
                  "trunk_quantization": "none"}
BASE_STAGE1 = {"lr": 1e-3, "epochs": 1, "batch_size": 16, "group_size": 8, "projection": "none"}
# name -> (objective, retriever overrides, stage1 overrides) on top of the base.
POINTS = {
    "ridge-zero": (None, {}, {"projection": "ridge"}),  # no training: the frozen model + ridge map
    "ridge": (Objective(alpha=1.0), {}, {"projection": "ridge"}),
    "base": (Objective(alpha=1.0), {}, {}),
    "ctr-only": (Objective(), {}, {}),
    "align-only": (Objective(ctr=0.0, alpha=1.0), {}, {}),
    "lr3e-4": (Objective(alpha=1.0), {}, {"lr": 3e-4}),
    "lr3e-3": (Objective(alpha=1.0), {}, {"lr": 3e-3}),
    "tau0.02": (Objective(alpha=1.0), {"tau_r": 0.02}, {}),
    "tau0.1": (Objective(alpha=1.0), {"tau_r": 0.1}, {}),
    "group4": (Objective(alpha=1.0), {}, {"group_size": 4}),
    "epochs2": (Objective(alpha=1.0), {}, {"epochs": 2}),
    "eos-tau0.01": (Objective(alpha=1.0), {"pooling": "eos", "tau_r": 0.01}, {}),
    "invar": (Objective(alpha=1.0, lam=0.5), {}, {}),
    "ridge-lr3e-4": (Objective(alpha=1.0), {}, {"projection": "ridge", "lr": 3e-4}),
    "ridge-lr3e-3": (Objective(alpha=1.0), {}, {"projection": "ridge", "lr": 3e-3}),
    "ridge-lr3e-3-invar": (Objective(alpha=1.0, lam=0.5), {}, {"projection": "ridge", "lr": 3e-3}),
    "ridge-ctr-only": (Objective(), {}, {"projection": "ridge"}),
    "ridge-invar": (Objective(alpha=1.0, lam=0.5), {}, {"projection": "ridge"}),
    # No dropout on the adapter's inputs: one epoch sees each group once, and the random masks
    # cost about a quarter of a training step on CPU (benchmarks/stage1_speed.py).
    "lr3e-3-nodrop": (Objective(alpha=1.0), {"lora_dropout": 0.0}, {"lr": 3e-3}),
    "ridge-lr3e-3-nodrop": (Objective(alpha=1.0), {"lora_dropout": 0.0}, {"projection": "ridge", "lr": 3e-3}),
    "ridge-lr3e-3-invar-nodrop": (Objective(alpha=1.0, lam=0.5), {"lora_dropout": 0.0},
                                  {"projection": "ridge", "lr": 3e-3}),
}


FLOORS = ["random", "minilm", "llm-zero (eos)", "llm-zero (mean)"]


def row_order(name: str) -> tuple:
    """Table order: the base run's rows (floors, then points at the base depth, then other depths),
    then each run with other frozen passes (int8 trunk, then other windows), floors before points."""
    trunk, window, depth, point = re.fullmatch(r"(int8-)?(W\d+-)?(L\d+-)?(.*)", name).groups()
    run = 0 if trunk is None and window is None else 1 if window is None else 2
    width = int(window[1:-1]) if window else 0
    lora = int(depth[1:-1]) if depth else 0
    if point in FLOORS:
        within = FLOORS.index(point)
    else:
        within = len(FLOORS) + (list(POINTS).index(point) if point in POINTS else len(POINTS))
    return run, width, lora, within


def with_fields(profile, retriever: dict, stage1: dict):
    return dataclasses.replace(
        profile, retriever=dataclasses.replace(profile.retriever, **{**BASE_RETRIEVER, **retriever}),
        stage1=dataclasses.replace(profile.stage1, **{**BASE_STAGE1, **stage1}))


@torch.no_grad()
def passage_cosine(retriever: LLMRetriever, pids: list[str]) -> float:
    return mean_pairwise_cosine(retriever.passage_reps(pids))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--points", nargs="*", default=list(POINTS))
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of an earlier run with the same base settings; run only new points")
    ap.add_argument("--lora-layers", type=int, default=BASE_RETRIEVER["lora_layers"],
                    help="LoRA depth for this run's points (another depth needs its own trunk states; "
                         "its rows are named L<depth>-<point>)")
    ap.add_argument("--max-len", type=int, default=None,
                    help="the passage window in tokens for this run (another window needs its own trunk states, "
                         "LSR scores and floors); its rows, floors included, are named W<len>-<point>")
    ap.add_argument("--trunk", choices=["none", "int8"], default="none",
                    help="the frozen trunk's arithmetic for this run (int8: llm/quantize.py); its rows, floors "
                         "included, are named int8-<point>")
    args = ap.parse_args()
    depth = {} if args.lora_layers == BASE_RETRIEVER["lora_layers"] else {"lora_layers": args.lora_layers}
    prefix = f"L{args.lora_layers}-" if depth else ""
    if args.max_len is not None:
        depth["max_len"] = args.max_len
        prefix = f"W{args.max_len}-{prefix}"
    if args.trunk != "none":
        depth["trunk_quantization"] = args.trunk
        prefix = f"{args.trunk}-{prefix}"
    base_profile = with_fields(load_profile(args.profile), {}, {})
    profile = with_fields(load_profile(args.profile), depth, {})
    rc, s1 = profile.retriever, profile.stage1
    bench = load_benchmark(profile.name)
    t0 = time.perf_counter()
    prepared = prepare(profile, bench)
    backbone = prepared.backbone
    zero = prepared.retriever()
    timings = {"prepare_s": round(time.perf_counter() - t0, 1)}
    val, cands = validation_set(profile, bench, prepared.val_questions)
    ranked = [cands[q["id"]] for q in val]
    text = {pid: p["text"] for pid, p in prepared.passages.items()}
    ks = [5, 20]
    n_boot, seed = profile.retrieval.bootstrap_resamples, profile.seed
    sample = sorted({p for r in ranked for p in r[:10]})[:400]  # for the cosine diagnostic

    def score(run) -> dict:
        res = evaluate_run(run, val, text, ks, n_boot, seed)
        return {f"acc@{k}": round(100 * res["metrics"][f"acc@{k}"]["mean"], 1) for k in ks}

    rows = {"random": {**{k: round(100 * v["mean"], 1) for k, v in
                          random_ranking(cands, val, text, ks, n_boot, seed)["metrics"].items()}},
            "minilm": score(cands)}
    timings[f"{prefix}prepare_s"] = timings.pop("prepare_s")
    t0 = time.perf_counter()
    backbone.states([zero.passage_text(p) for p in dict.fromkeys(p for r in ranked for p in r)], rc.max_len)
    timings[f"{prefix}val_trunk_s"] = round(time.perf_counter() - t0, 1)
    # The zero-shot floors change with the frozen passes (trunk arithmetic, window), not with LoRA depth.
    floor_prefix = prefix if args.trunk != "none" or args.max_len is not None else ""
    for pooling in ("eos", "mean"):
        floor = LLMRetriever.from_profile(backbone, with_fields(profile, {**depth, "pooling": pooling}, {}),
                                          prepared.passages, weights=backbone.initial[RETRIEVER])
        rows[f"{floor_prefix}llm-zero ({pooling})"] = {**score(floor.rerank(val, cands, rc.rerank_depth)),
                                                       "mean cos(d, d')": round(passage_cosine(floor, sample), 3)}
    for name, row in rows.items():
        print(name, row, flush=True)
    def write() -> None:
        ordered_rows = {k: rows[k] for k in sorted(rows, key=row_order)}
        payload = {"profile": profile.name, "validation_questions": len(val),
                   "training_groups": len(prepared.main), "env_groups": len(prepared.data),
                   "mode": f"rerank of MiniLM's top {rc.rerank_depth}",
                   "base": {"pooling": rc.pooling, "tau_r": rc.tau_r, "lr": s1.lr, "epochs": s1.epochs,
                            "batch_size": s1.batch_size, "group_size": s1.group_size,
                            "lora_layers": base_profile.retriever.lora_layers, "projection": s1.projection,
                            "lora_dropout": rc.lora_dropout,
                            "objective": "L_ctr + α L_align, α = 1"},
                   "rows": ordered_rows, "timings_s": timings,
                   "note": "train s is wall time on the 2-core machine; some points ran beside other jobs"}
        atomic_write_json(reports_dir(profile.reports_dir) / "results" / "benchmarks" / "stage1_sweep.json", payload)
        cols = ["acc@5", "acc@20", "mean cos(d, d')", "steps", "train s", "final L_ctr", "changes"]
        lines = [f"Stage-1 sweep on {len(val)} validation questions (held-out training questions), "
                 f"{payload['mode']}, {profile.name} profile; base = {json.dumps(payload['base'])}", "",
                 "| point | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for name, row in ordered_rows.items():
            lines.append(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
        table = reports_dir(profile.reports_dir) / "tables" / "stage1_sweep.md"
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text("\n".join(lines) + "\n")

    out_json = reports_dir(profile.reports_dir) / "results" / "benchmarks" / "stage1_sweep.json"
    if args.append and out_json.exists():
        old = json.loads(out_json.read_text())
        if old.get("validation_questions") == len(val) and old.get("training_groups") == len(prepared.main):
            rows = {**old["rows"], **{k: v for k, v in rows.items() if k not in old["rows"]}}
            timings = {**old.get("timings_s", {}), **timings}
    ridge = {}
    for point in args.points:
        name = prefix + point
        if name in rows:
            continue
        objective, r_over, s_over = POINTS[point]
        r_over = {**depth, **r_over}
        p = with_fields(profile, r_over, s_over)
        main_data = prepared.main
        if "group_size" in s_over:
            main_data = training_data(backbone, p, prepared.envs, env_subset(prepared.all_groups, 0, s_over["group_size"]),
                                      prepared.passages, None, None)
        backbone.reset_adapter(RETRIEVER)
        set_lora_dropout(backbone.model, RETRIEVER, p.retriever.lora_dropout)
        projection = None
        if p.stage1.projection == "ridge":
            if p.stage1.ridge_lambda not in ridge:
                ridge[p.stage1.ridge_lambda] = fit_projection(LLMRetriever.from_profile(backbone, p, prepared.passages),
                                                              p, bench, prepared.all_groups)
            projection = ridge[p.stage1.ridge_lambda]
        t0 = time.perf_counter()
        hist = []
        if objective is not None:
            hist = train_retriever(backbone, main_data, objective, p, data_dir() / "checkpoints" / "sweep" / name,
                                   log=lambda *a: None, env_data=prepared.data, projection=projection)["history"]
        train_s = time.perf_counter() - t0
        point = LLMRetriever.from_profile(backbone, p, prepared.passages, weights=backbone.adapter_state(RETRIEVER),
                                          projection=projection, name=name)
        run = point.rerank(val, cands, rc.rerank_depth)
        rows[name] = {**score(run), "mean cos(d, d')": round(passage_cosine(point, sample), 3),
                      "steps": len(hist), "train s": round(train_s),
                      "final L_ctr": round(hist[-1]["ctr"], 3) if hist else "",
                      "changes": json.dumps({**r_over, **s_over, **({} if objective == Objective(alpha=1.0) else
                                             {"objective": "none (untrained)" if objective is None else
                                              dataclasses.asdict(objective)})})}
        print(name, rows[name], flush=True)
        write()
    set_lora_dropout(backbone.model, RETRIEVER, profile.retriever.lora_dropout)
    write()
    print((reports_dir(profile.reports_dir) / "tables" / "stage1_sweep.md").read_text())

if __name__ == "__main__":
    main()
