"""Stage-2 speed figures (issue 4): greedy decoding with and without the shared-prefix cache, and
the wall time of the whole study.

Prints, from one run on this machine:
  1. for the same prompts (the profile's demonstrations + MiniLM's top-k passages + question, for the
     first `--questions` NQ evaluation questions), greedy decoding with the demonstrations' key/value
     cache computed once (`share_prefix=True`) and without it (every prompt runs its prefix):
     wall time, prompt tokens run, generated tokens, prompts/s, tokens run per second, generated
     tokens per second, prompt tokens served per second (every prompt's full length / wall time),
     the speed-up ratio, and whether both give the same answers;
  2. the wall time of every notebook and of notebooks 00–07 together, from
     reports/results/timings.json (written by `make reproduce`), against the 60-minute target.
Writes the same numbers to reports/results/benchmarks/generation_speed.json.

Usage: .venv/bin/python benchmarks/generation_speed.py [--profile cpu] [--questions 48]
"""
from __future__ import annotations

import argparse
import json

import torch

from invar_rag_lib.baselines import load_run
from invar_rag_lib.config import load_profile
from invar_rag_lib.data import load_benchmark
from invar_rag_lib.io_utils import atomic_write_json
from invar_rag_lib.llm.weights import load_model
from invar_rag_lib.paths import reports_dir
from invar_rag_lib.llm.decode import DecodeStats, greedy_decode
from invar_rag_lib.stage2.prompts import PassageWindows, build_prompt, prefix_text, select_demonstrations


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--questions", type=int, default=48)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    g = profile.generator
    bench = load_benchmark(profile.name)
    model, tokenizer = load_model(profile.retriever.backbone, seed=profile.seed)
    passages = {row["id"]: row for row in bench.corpus}
    windows = PassageWindows(tokenizer, passages, g)
    prefix = prefix_text(g, select_demonstrations(bench, g, profile.seed))
    run = load_run(profile.name, "minilm", bench)["runs"]["nq"]
    questions = bench.eval_records("nq")[: args.questions]
    prompts = [build_prompt(g, prefix, q["question"], run[q["id"]], windows) for q in questions]

    greedy_decode(model, tokenizer, prompts[: g.generate_batch_size], g.max_new_tokens, g.generate_batch_size,
                  attn_implementation=g.decode_attention)  # warm-up
    stats, answers = {}, {}
    for shared in (True, False):
        stats[shared] = DecodeStats()
        answers[shared] = greedy_decode(model, tokenizer, prompts, g.max_new_tokens, g.generate_batch_size,
                                        share_prefix=shared, stats=stats[shared],
                                        attn_implementation=g.decode_attention)
    on, off = stats[True].as_dict(), stats[False].as_dict()
    n_prefix = len(tokenizer(prefix)["input_ids"])
    served = off["prompt_tokens"]  # every prompt's full length: what both runs serve
    for d in (on, off):
        d["generated_tokens_per_s"] = round(d["generated_tokens"] / d["seconds"], 1)
        d["served_prompt_tokens_per_s"] = round(served / d["seconds"], 1)

    nb_times = {}
    tpath = reports_dir(profile.reports_dir) / "results" / "timings.json"
    if tpath.exists():
        nb_times = {k: v["wall_s"] for k, v in json.loads(tpath.read_text()).items()}
    total = sum(nb_times.values())
    out = {
        "profile": profile.name, "backbone": profile.retriever.backbone, "threads": torch.get_num_threads(),
        "prompts": len(prompts), "prefix_tokens": n_prefix, "batch_size": g.generate_batch_size,
        "with_prefix_cache": on, "without_prefix_cache": off,
        "prefix_cache_speedup": round(off["seconds"] / on["seconds"], 2),
        "same_answers": answers[True] == answers[False],
        "notebook_wall_s": nb_times, "notebooks_total_min": round(total / 60, 1),
        "notebooks_run": sorted(nb_times), "target_min": 60,
    }
    for k, v in out.items():
        print(f"{k:24s} {v}")
    atomic_write_json(reports_dir(profile.reports_dir) / "results" / "benchmarks" / "generation_speed.json", out)


if __name__ == "__main__":
    main()
