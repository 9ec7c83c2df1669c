"""Generator recipe sweep: which settings make the `generator` adapter learn to read (cpu profile).

Selects on the **validation split** (stage 1's held-out training questions: disjoint from the
training questions, the demonstrations and every evaluation sample), never on the reported
evaluation questions. Every point trains the `generator` adapter from the same seed on the frozen
`invar` retriever's top k passages for the profile's generator-training questions, with some
`generator.*` fields overridden, then answers the validation questions. The floor is the base model
(adapter off, its few-shot prompt) on the same questions and passages. Recorded per point: validation
EM, F1 and extraction rate (EM where the shown windows hold an answer), the loss of the first and last
steps, the base model's and the adapter's loss on the same training examples, steps and wall time
(trunk states and training apart; trunk states are cached per depth and prompt, so the first point
of a depth pays for them).

Writes reports/results/benchmarks/generator_sweep.json and reports/tables/generator_sweep.md.

Usage: .venv/bin/python benchmarks/generator_sweep.py [--profile cpu] [--points d8 d2 ...] [--append]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from invar_rag_lib.config import load_profile
from invar_rag_lib.data import load_benchmark
from invar_rag_lib.io_utils import atomic_write_json, atomic_write_text, sha256_text
from invar_rag_lib.llm.backbone import GENERATOR, Backbone
from invar_rag_lib.machine import matmul_gflops
from invar_rag_lib.metrics import exact_match, f1
from invar_rag_lib.paths import data_dir, reports_dir
from invar_rag_lib.stage2.examples import shown_answer
from invar_rag_lib.stage2.experiment import GenerationStage
from invar_rag_lib.stage2.train import GeneratorData, mean_answer_loss, train_generator

# The sweep's centre, fixed here (not read from the profile, whose values the sweep chooses).
BASE = {"lora_layers": 8, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "train_questions": 1400,
        "epochs": 1, "lr": 5e-4, "batch_size": 8, "warmup_steps": 5, "adapter_prompt": "same",
        "context_mix": "retrieved", "target_answer": "in_context"}
# name -> generator overrides on top of BASE
POINTS = {
    # round 1: the learning rate at the centre's depth (5e-4, the centre's, was best: round 2 keeps it)
    "d8-lr5e-4": {"lr": 5e-4},
    "d8-lr1.5e-3": {"lr": 1.5e-3},
    "d8-lr3e-3": {"lr": 3e-3},
    # round 2: everything else, around the centre
    "d2": {"lora_layers": 2},
    "d16": {"lora_layers": 16},
    "d30": {"lora_layers": 0},
    "d8-n350": {"train_questions": 350},
    "d8-n700": {"train_questions": 700},
    "d8-ep2": {"epochs": 2},
    "d8-zero-shot": {"adapter_prompt": "zero_shot"},
    "d8-answer-only": {"context_mix": "answer_only"},
    "d8-oracle": {"context_mix": "oracle"},
    "d8-first": {"target_answer": "first"},
    # round 3: reading is learnt on examples that show an answer (round 2): their depth, lr, epochs
    "d16-answer-only": {"lora_layers": 16, "context_mix": "answer_only"},
    "d30-answer-only": {"lora_layers": 0, "context_mix": "answer_only"},
    "d8-answer-only-lr1.5e-3": {"context_mix": "answer_only", "lr": 1.5e-3},
    "d8-answer-only-ep3": {"context_mix": "answer_only", "epochs": 3},
    "d30-zero-shot": {"lora_layers": 0, "adapter_prompt": "zero_shot"},
    "d30-zero-shot-answer-only": {"lora_layers": 0, "adapter_prompt": "zero_shot", "context_mix": "answer_only"},
    # round 4: around the best so far (every layer, zero-shot prompt, answer-bearing contexts)
    "d16-zero-shot-answer-only": {"lora_layers": 16, "adapter_prompt": "zero_shot", "context_mix": "answer_only"},
    "d30-zero-shot-answer-only-lr1e-3": {"lora_layers": 0, "adapter_prompt": "zero_shot", "context_mix": "answer_only",
                                         "lr": 1e-3},
    "d30-zero-shot-answer-only-ep2": {"lora_layers": 0, "adapter_prompt": "zero_shot", "context_mix": "answer_only",
                                      "epochs": 2},
    "d30-zero-shot-oracle": {"lora_layers": 0, "adapter_prompt": "zero_shot", "context_mix": "oracle"},
    # round 5: around round 4's best (16 layers, zero-shot prompt, answer-bearing contexts)
    "d16-zero-shot-answer-only-lr1e-3": {"lora_layers": 16, "adapter_prompt": "zero_shot",
                                         "context_mix": "answer_only", "lr": 1e-3},
    "d16-zero-shot-answer-only-ep2": {"lora_layers": 16, "adapter_prompt": "zero_shot",
                                      "context_mix": "answer_only", "epochs": 2},
}
COLUMNS = ["val EM", "val F1", "val extraction", "examples", "steps", "loss first→last", "loss base→adapter",
           "trunk s", "train s", "changes"]


def with_generator(profile, fields: dict):
    return dataclasses.replace(profile, generator=dataclasses.replace(profile.generator, **fields))


def val_scores(gs: GenerationStage, run: dict, adapter: str | None) -> dict:
    g, qs, ranked = gs.profile.generator, gs.val_questions, run["runs"]["val"]
    prompts = [gs.prompt(q["question"], ranked[q["id"]], adapter is not None) for q in qs]
    preds = gs.answer(prompts, adapter)
    em = [exact_match(p, q["golden_answers"]) for p, q in zip(preds, qs)]
    shown = [shown_answer(gs.windows, ranked[q["id"]], q["golden_answers"], g.k) for q in qs]
    return {"val EM": round(100 * float(np.mean(em)), 1),
            "val F1": round(100 * float(np.mean([f1(p, q["golden_answers"]) for p, q in zip(preds, qs)])), 1),
            "val extraction": round(100 * float(np.mean([e for e, s in zip(em, shown) if s])), 1),
            "val answer in windows": round(100 * float(np.mean(shown)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--points", nargs="*", default=list(POINTS))
    ap.add_argument("--append", action="store_true", help="keep the rows of an earlier run; run only new points")
    args = ap.parse_args()
    unknown = [p for p in args.points if p not in POINTS]
    if unknown:
        raise SystemExit(f"unknown points {unknown}; known: {list(POINTS)}")
    profile = with_generator(load_profile(args.profile), {**BASE, "diagnostic_questions": 0})
    bench = load_benchmark(profile.name)
    gflops_start = matmul_gflops()
    backbone = Backbone.from_profile(profile)
    # One run of the frozen retriever covering the largest training set any point uses.
    largest = max(POINTS[p].get("train_questions", BASE["train_questions"]) for p in args.points)
    gs = GenerationStage(with_generator(profile, {"train_questions": largest}), bench, backbone=backbone)
    run = gs.retriever_run()
    out_json = reports_dir(profile.reports_dir) / "results" / "benchmarks" / "generator_sweep.json"
    rows, timings = {}, {}
    if args.append and out_json.exists():
        old = json.loads(out_json.read_text())
        rows, timings = old["rows"], old.get("timings_s", {})
    t0 = time.perf_counter()
    rows["base model (floor)"] = {**val_scores(gs, run, None), "changes": "no adapter; the base rows' few-shot prompt"}
    timings["floor_s"] = round(time.perf_counter() - t0, 1)

    def write() -> None:
        payload = {"profile": profile.name, "validation_questions": len(gs.val_questions), "base": BASE,
                   "retriever": run["retriever"], "mode": run["mode"], "rows": rows, "timings_s": timings,
                   "machine_gflops_start": round(gflops_start, 1),
                   "note": "wall seconds on a 2-core machine whose fp32 matmul speed is given; one seed per point"}
        atomic_write_json(out_json, payload)
        lines = [f"Generator sweep on {len(gs.val_questions)} validation questions (stage 1's held-out training "
                 f"questions), frozen `{run['retriever']}` retriever ({run['mode']}), {profile.name} profile, "
                 f"matmul {gflops_start:.0f} GFLOP/s; base = {json.dumps(BASE)}", "",
                 "| point | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")
        atomic_write_text(reports_dir(profile.reports_dir) / "tables" / "generator_sweep.md", "\n".join(lines) + "\n")

    write()
    for name in args.points:
        if name in rows:
            continue
        fields = POINTS[name]
        p = with_generator(profile, fields)
        point = GenerationStage(p, bench, backbone=backbone, log=lambda *a: None)
        examples, counts = point.training_examples(run)
        data = GeneratorData(backbone, examples, backbone.split(GENERATOR), p.generator.trunk_batch_size)
        t0 = time.perf_counter()
        result = train_generator(backbone, data, p, data_dir() / "checkpoints" / f"{profile.name}-sweep" / "generator" / name,
                                 reuse=True, data_key=sha256_text(data.key(), data.trunk_cache.dir.name)[:16])
        train_s = time.perf_counter() - t0 - result.get("trunk_s", 0.0)
        sample = list(range(min(64, len(data))))
        h = result["history"]
        rows[name] = {**val_scores(point, run, GENERATOR), "examples": counts["examples"], "steps": len(h),
                      "loss first→last": f"{np.mean([x['loss'] for x in h[:5]]):.2f}→{np.mean([x['loss'] for x in h[-5:]]):.2f}",
                      "loss base→adapter": f"{mean_answer_loss(backbone, data, None, sample):.2f}→"
                                           f"{mean_answer_loss(backbone, data, GENERATOR, sample):.2f}",
                      "trunk s": round(result.get("trunk_s", 0.0)), "train s": round(train_s),
                      "reused": result["reused"], "changes": json.dumps(fields) if fields else "(base)"}
        print(name, rows[name], flush=True)
        write()
    timings["machine_gflops_end"] = round(matmul_gflops(), 1)
    write()
    print((reports_dir(profile.reports_dir) / "tables" / "generator_sweep.md").read_text())


if __name__ == "__main__":
    main()
