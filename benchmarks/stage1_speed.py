"""Stage-1 speed figures (issue: trunk encoding vs matmul peak, trunk-cache speed-up, notebook times).

Prints, from one run on this machine:
  1. fp32 matmul peak (GFLOP/s, best of several 2048^3 GEMMs) and trunk-encoding throughput
     (tokens/s and GFLOP/s from the trunk's parameter count), with its share of the peak;
  2. training-step time with the trunk cache (top L layers on cached states) and without it
     (every layer from the tokens, LoRA on the top L), and their ratio;
  3. the cached step with LoRA dropout 0.05 (docs/method.md's) and without dropout (the cpu
     profile's `retriever.lora_dropout = 0`), and their ratio (CPU dropout masks are costly);
  4. the trunk pass in float32 and with the int8 trunk (`retriever.trunk_quantization`), their
     throughput ratio, and how close the pooled h(x) of the two are (cosine, untrained adapter);
  5. the wall time of notebooks 02-04 from reports/results/timings.json (written by `make reproduce`).
Writes the same numbers to reports/results/benchmarks/stage1_speed.json.

Usage: .venv/bin/python benchmarks/stage1_speed.py [--profile cpu] [--steps 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from invar_rag_lib.config import load_profile
from invar_rag_lib.data import load_benchmark
from invar_rag_lib.io_utils import atomic_write_json
from invar_rag_lib.llm.backbone import RETRIEVER, Backbone
from invar_rag_lib.llm.encoder import encode_full, set_lora_dropout, tokenize, trunk_states
from invar_rag_lib.llm.retriever import LLMRetriever, TopEncoder
from invar_rag_lib.machine import matmul_gflops
from invar_rag_lib.paths import reports_dir


def trunk_flops_per_token(backbone: Backbone) -> float:
    """2 × weights of the trunk's layers (the matmuls; embeddings are a lookup), per token."""
    decoder = backbone.model.get_base_model().model
    params = sum(p.numel() for layer in decoder.layers[: backbone.split(RETRIEVER)] for n, p in layer.named_parameters()
                 if "lora_" not in n and p.dim() == 2)
    return 2.0 * params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--texts", type=int, default=128)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    rc = profile.retriever
    bench = load_benchmark(profile.name)
    backbone = Backbone.from_profile(profile, log=lambda *a: None)
    split = backbone.split(RETRIEVER)
    zero = LLMRetriever.from_profile(backbone, profile, bench.passages())
    texts = [zero.passage_text(row["id"]) for row in bench.corpus.select(range(args.texts))]

    peak = matmul_gflops()
    batches = [tokenize(backbone.tokenizer, texts[i:i + rc.encode_batch_size], rc.max_len, rc.padding_side)
               for i in range(0, len(texts), rc.encode_batch_size)]
    def trunk_pass(model) -> tuple[float, list]:
        trunk_states(model, batches[0], split)  # warm-up
        t0 = time.perf_counter()
        tokens, states = 0, []
        for batch in batches:
            states += trunk_states(model, batch, split)
            tokens += int(batch.input_ids.numel())  # padded tokens are computed too
        return tokens / (time.perf_counter() - t0), states

    tok_s, states = trunk_pass(backbone.model)
    gflops = tok_s * trunk_flops_per_token(backbone) / 1e9
    # The other trunk arithmetic, on a second copy of the model (same weights, same texts).
    other_mode = "int8" if rc.trunk_quantization == "none" else "none"
    other = Backbone.from_profile(dataclasses.replace(profile, retriever=dataclasses.replace(rc, trunk_quantization=other_mode)),
                                  log=lambda *a: None)
    other_tok_s, other_states = trunk_pass(other.model)
    with torch.no_grad():
        mine = TopEncoder(backbone.model, split, rc.padding_side, rc.pooling).encode(states)
        theirs = TopEncoder(other.model, split, rc.padding_side, rc.pooling).encode(other_states)
    cos = torch.nn.functional.cosine_similarity(mine, theirs)
    by_mode = {rc.trunk_quantization: tok_s, other_mode: other_tok_s}
    del other

    # One training micro-batch: batch_size queries × group_size passages, original environment.
    s1 = profile.stage1
    n_p = s1.batch_size * s1.group_size
    q_texts = [zero.query_text(q["question"]) for q in bench.eval_records("nq")[: s1.batch_size]]
    p_texts = texts[:n_p]
    q_states, p_states = backbone.states(q_texts, rc.query_max_len), backbone.states(p_texts, rc.max_len)
    q_tok = tokenize(backbone.tokenizer, q_texts, rc.query_max_len, rc.padding_side)
    p_tok = tokenize(backbone.tokenizer, p_texts, rc.max_len, rc.padding_side)
    backbone.model.train()
    top = TopEncoder(backbone.model, split, rc.padding_side, rc.pooling)
    params = [p for p in backbone.model.parameters() if p.requires_grad]

    def step(cached: bool) -> float:
        t = time.perf_counter()
        if cached:
            q, p = top.encode(q_states), top.encode(p_states)
        else:
            q, p = encode_full(backbone.model, q_tok, rc.pooling), encode_full(backbone.model, p_tok, rc.pooling)
        loss = -(q @ p.T / rc.tau_r).log_softmax(-1).diagonal().mean()
        loss.backward()
        for prm in params:
            prm.grad = None
        return time.perf_counter() - t

    timings = {}
    for cached in (True, False):
        step(cached)
        timings[cached] = min(step(cached) for _ in range(args.steps))
    by_dropout = {}
    for p in (0.05, 0.0):
        set_lora_dropout(backbone.model, RETRIEVER, p)
        step(True)
        by_dropout[p] = min(step(True) for _ in range(args.steps))
    set_lora_dropout(backbone.model, RETRIEVER, rc.lora_dropout)
    backbone.model.eval()

    nb_times = {}
    tpath = reports_dir(profile.reports_dir) / "results" / "timings.json"
    if tpath.exists():
        recorded = json.loads(tpath.read_text())
        nb_times = {k: v["wall_s"] for k, v in recorded.items() if k[:2] in ("02", "03", "04")}
    out = {
        "profile": profile.name, "backbone": rc.backbone, "threads": torch.get_num_threads(),
        "matmul_peak_gflops": round(peak, 1),
        "trunk_tokens_per_s": round(tok_s, 1), "trunk_gflops": round(gflops, 1),
        "trunk_share_of_peak": round(gflops / peak, 3),
        "trunk_quantization_of_profile": rc.trunk_quantization,
        "trunk_tokens_per_s_float32": round(by_mode["none"], 1),
        "trunk_tokens_per_s_int8": round(by_mode["int8"], 1),
        "trunk_int8_speedup": round(by_mode["int8"] / by_mode["none"], 2),
        "pooled_cosine_int8_vs_float32_mean": round(float(cos.mean()), 4),
        "pooled_cosine_int8_vs_float32_min": round(float(cos.min()), 4),
        "train_step_s_with_trunk_cache": round(timings[True], 4),
        "train_step_s_without_trunk_cache": round(timings[False], 4),
        "trunk_cache_speedup": round(timings[False] / timings[True], 2),
        "lora_dropout_of_profile": rc.lora_dropout,
        "train_step_s_cached_dropout_0.05": round(by_dropout[0.05], 4),
        "train_step_s_cached_dropout_0": round(by_dropout[0.0], 4),
        "dropout_step_ratio": round(by_dropout[0.05] / by_dropout[0.0], 2),
        "notebook_wall_s": nb_times, "notebooks_02_04_total_s": round(sum(nb_times.values()), 1),
    }
    for k, v in out.items():
        print(f"{k:36s} {v}")
    atomic_write_json(reports_dir(profile.reports_dir) / "results" / "benchmarks" / "stage1_speed.json", out)


if __name__ == "__main__":
    main()
