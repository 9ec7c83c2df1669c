"""Stage-2 speed figures: what each piece of shared work saves, measured in one run on this machine.

Prints, for the same prompts (the profile's base prompt: demonstrations + MiniLM's top-k passages +
question, for the first `--questions` NQ evaluation questions) and the same batch sizes:

  1. decoding: every prompt running its own prefix (`greedy_decode(share_prefix=False)`), the
     demonstrations' key/value cache computed once (`greedy_decode`), the stage-2 decoder that also
     drops finished rows (`decode_readers`, one reader), and two readers on the same prompts (the base
     model and the `generator` adapter at the profile's depth) decoded separately and together, sharing
     the prefill below the adapter's first layer; wall times, ratios, and whether answers agree;
  2. generator training, per optimizer step on one batch: each example running prefix + its own
     tokens through the top layers, against the prefix once per step (`stage2/train.answer_loss`),
     forward + backward; and the trunk states of that batch computed both ways;
  3. the machine's fp32 matmul speed at the start and end, and the notebooks' wall and normalised
     minutes from reports/results/timings.json (written by `make reproduce`).
Writes the same numbers to reports/results/benchmarks/generation_speed.json. It measures; it asserts nothing.

Usage: .venv/bin/python benchmarks/generation_speed.py [--profile cpu] [--questions 64]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from invar_rag_lib.baselines import load_run
from invar_rag_lib.config import load_profile
from invar_rag_lib.data import load_benchmark
from invar_rag_lib.io_utils import atomic_write_json
from invar_rag_lib.llm.backbone import GENERATOR, Backbone, generator_shape
from invar_rag_lib.llm.decode import DecodeStats, greedy_decode, prompt_ids
from invar_rag_lib.llm.decode_readers import decode_readers
from invar_rag_lib.llm.encoder import decoder_of, run_layers
from invar_rag_lib.llm.padding import pad_id, pad_token_rows
from invar_rag_lib.machine import REFERENCE_GFLOPS, matmul_gflops
from invar_rag_lib.paths import reports_dir
from invar_rag_lib.stage2.examples import Example
from invar_rag_lib.stage2.prompts import PassageWindows, build_prompt, prefix_text, select_demonstrations
from invar_rag_lib.stage2.train import GeneratorData, answer_loss, sequence_ids


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def decoding(backbone: Backbone, prompts, g) -> dict:
    model, tok, split = backbone.model, backbone.tokenizer, backbone.split(GENERATOR)
    base, gen = (lambda: backbone.adapter(None)), (lambda: backbone.adapter(GENERATOR))
    kw = dict(max_new_tokens=g.max_new_tokens, attn_implementation=g.decode_attention)
    with backbone.adapter(None):
        greedy_decode(model, tok, prompts[: g.generate_batch_size], batch_size=g.generate_batch_size, **kw)  # warm-up
        plain_s, plain = timed(lambda: greedy_decode(model, tok, prompts, batch_size=g.generate_batch_size,
                                                     share_prefix=False, **kw))
        shared_s, shared = timed(lambda: greedy_decode(model, tok, prompts, batch_size=g.generate_batch_size, **kw))
    one_s, one = timed(lambda: decode_readers(model, tok, prompts, [base], split, base,
                                              batch_size=g.generate_batch_size, **kw))
    gen_s, gen_alone = timed(lambda: decode_readers(model, tok, prompts, [gen], split, base,
                                                    batch_size=g.generate_batch_size, **kw))
    both_s, both = timed(lambda: decode_readers(model, tok, prompts, [base, gen], split, base,
                                                batch_size=g.generate_batch_size, **kw))
    return {"prompts": len(prompts), "every_prompt_runs_its_prefix_s": round(plain_s, 1),
            "prefix_cache_once_s": round(shared_s, 1), "prefix_cache_speedup": round(plain_s / shared_s, 2),
            "dropping_finished_rows_s": round(one_s, 1), "dropping_rows_speedup": round(shared_s / one_s, 2),
            "base_and_generator_separately_s": round(one_s + gen_s, 1), "base_and_generator_together_s": round(both_s, 1),
            "shared_trunk_prefill_speedup": round((one_s + gen_s) / both_s, 2), "generator_split": split,
            "same_answers": plain == shared == one[0] and both == [one[0], gen_alone[0]]}


def training_step(backbone: Backbone, prompts, answers, g) -> dict:
    """One optimizer step's forward + backward on one batch, prefix once vs prefix per example."""
    split = backbone.split(GENERATOR)
    examples = [Example(p, a) for p, a in zip(prompts[: g.batch_size], answers[: g.batch_size])]
    data = GeneratorData(backbone, examples, split)
    decoder, inner = decoder_of(backbone.model), backbone.model.get_base_model()
    t_once, (prefix_state, hidden, mask, labels) = timed(lambda: (data.states, data.batch(list(range(len(examples)))))[1])
    # the same batch as whole sequences (prefix + own tokens), trunk included
    seqs = [sequence_ids(backbone.tokenizer, e) for e in examples]
    ids, full_mask = pad_token_rows([p + o for p, o, _ in seqs], pad_id(backbone.tokenizer), "right")

    def full_trunk():
        with torch.no_grad(), backbone.adapter(None):
            return run_layers(decoder, decoder.embed_tokens(ids), full_mask, 0, split, final_norm=False)

    t_full_trunk, full_hidden = timed(full_trunk)
    full_labels = torch.full(full_mask.shape, -100, dtype=torch.long)
    for i, (p, o, t) in enumerate(seqs):
        row = p + o
        full_labels[i, len(row) - t:len(row)] = torch.tensor(row[len(row) - t:])
    params = [p for n, p in backbone.model.named_parameters() if f".{GENERATOR}." in n]

    def step(prefix_once: bool) -> float:
        t0 = time.perf_counter()
        with backbone.adapter(GENERATOR):
            if prefix_once:
                loss = answer_loss(backbone.model, split, prefix_state, hidden, mask, labels)
            else:
                out = run_layers(decoder, full_hidden, full_mask, split, decoder.config.num_hidden_layers, True)
                rows, cols = (full_labels[:, 1:] >= 0).nonzero(as_tuple=True)
                loss = torch.nn.functional.cross_entropy(inner.lm_head(out[rows, cols]).float(),
                                                         full_labels[rows, cols + 1])
            loss.backward()
        for p in params:
            p.grad = None
        return time.perf_counter() - t0

    for p in params:
        p.requires_grad_(True)
    backbone.model.train()
    step(True), step(False)  # warm-up
    once, per_example = min(step(True) for _ in range(3)), min(step(False) for _ in range(3))
    backbone.model.eval()
    return {"batch": len(examples), "prefix_tokens": len(data.prefix_ids),
            "own_tokens_mean": round(sum(len(i) for i in data.ids) / len(data.ids), 1), "generator_split": split,
            "step_s_prefix_per_example": round(per_example, 3), "step_s_prefix_once": round(once, 3),
            "step_speedup": round(per_example / once, 2),
            "trunk_s_prefix_per_example": round(t_full_trunk, 3), "trunk_s_prefix_once": round(t_once, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--questions", type=int, default=64)
    args = ap.parse_args()
    gflops_start = matmul_gflops()
    profile = load_profile(args.profile)
    g = profile.generator
    bench = load_benchmark(profile.name)
    backbone = Backbone.from_profile(profile, log=lambda *a: None)
    backbone.add_adapter(GENERATOR, generator_shape(profile))
    with torch.no_grad():  # a non-zero adapter, as after training (its values do not change the cost)
        gen = torch.Generator().manual_seed(0)
        for n, p in backbone.model.named_parameters():
            if f"lora_B.{GENERATOR}" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    windows = PassageWindows(backbone.tokenizer, bench.passages(), g)
    prefix = prefix_text(g, select_demonstrations(bench, g, profile.seed))
    run = load_run(profile.name, "minilm", bench)["runs"]["nq"]
    questions = bench.eval_records("nq")[: args.questions]
    prompts = [build_prompt(g, prefix, q["question"], run[q["id"]], windows) for q in questions]
    out = {"profile": profile.name, "backbone": profile.retriever.backbone, "threads": torch.get_num_threads(),
           "prefix_tokens": len(prompt_ids(backbone.tokenizer, prompts[0])[0]), "batch_size": g.generate_batch_size,
           "decoding": decoding(backbone, prompts, g),
           "training": training_step(backbone, prompts, [q["golden_answers"][0] for q in questions], g)}
    gflops_end = matmul_gflops()
    timings = {}
    tpath = reports_dir(profile.reports_dir) / "results" / "timings.json"
    if tpath.exists():
        timings = json.loads(tpath.read_text())
    out.update({
        "machine_gflops_start": round(gflops_start, 1), "machine_gflops_end": round(gflops_end, 1),
        "reference_gflops": REFERENCE_GFLOPS,
        "notebook_wall_min": {k: round(v["wall_s"] / 60, 1) for k, v in timings.items()},
        "notebook_normalised_min": {k: v.get("normalised_min") for k, v in timings.items()},
        "notebooks_total_wall_min": round(sum(v["wall_s"] for v in timings.values()) / 60, 1),
        "notebooks_total_normalised_min": round(sum(v.get("normalised_min") or 0 for v in timings.values()), 1),
    })
    for k, v in out.items():
        print(f"{k:32s} {v}")
    atomic_write_json(reports_dir(profile.reports_dir) / "results" / "benchmarks" / "generation_speed.json", out)


if __name__ == "__main__":
    main()
