"""The cost of the `paper` profile on DPR's wiki-18 (21,015,324 passages of 100 words), step by step, on
1 and on 8 GPUs, from FLOP counts and a throughput: printed, and written to
`reports/tables/paper_cost.md`, which `invar-rag report` copies into docs/paper-scale.md.

What is measured and what is assumed (the table says it again):
  * FLOPs: counted from the model's shape (parameters from its config on the meta device, as
    `invar-rag memory` does) and the profile's token counts: a forward costs 2·N FLOPs per token,
    a LoRA training step 6·N (forward, backward through the activations, and the recomputed forward of
    gradient checkpointing; the frozen weights get no gradient), attention's s² term added per layer.
  * Throughput on this machine: measured here (the SmolLM2 trunk's forward, tokens/s, against the fp32
    matmul peak measured in the same run: the share of peak a transformer forward reaches).
  * Throughput on a GPU: NOT measured (no device was lent to this session): the H100's dense bf16 peak
    (989 TFLOP/s) at an assumed 40% of peak for the encoder and scorer forwards and 30% for training
    and decoding-free generation steps, figures typical of large-batch bf16 inference and LoRA
    training; replace them with `--gpu-tflops` and `--mfu-*` from a measured run.
  * Memory: `llm/memory.py`'s estimate at this profile (index = ivfpq).

Usage: .venv/bin/python benchmarks/cost_model.py [--config DIR_WITH_LLAMA2_CONFIG] [--train-questions N]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

WIKI18_PASSAGES = 21_015_324
PASSAGE_TOKENS = 150  # 100 words + title, Llama tokenizer (DPR's passages: ~1.3-1.5 tokens per word)
QUESTION_TOKENS = 20
EVAL_QUESTIONS = 3 * 1000  # NQ, TriviaQA, PopQA at the paper profile's 1,000 each


def measure_cpu() -> dict:
    """SmolLM2's trunk forward on this machine: tokens/s and the share of the fp32 matmul peak."""
    import torch

    from invar_rag_lib.llm.backbone import Backbone, LoraShape
    from invar_rag_lib.llm.encoder import tokenize, trunk_states
    from invar_rag_lib.machine import matmul_gflops

    g0 = matmul_gflops()
    bb = Backbone("smollm2-135m", LoraShape(2, 8, 16, 0.0, ("q_proj",)), log=lambda *a: None)
    n_params = sum(p.numel() for n, p in bb.model.named_parameters() if "lora_" not in n and "embed" not in n)
    texts = [f"passage {i}: " + " ".join(["the river runs through the old capital city"] * 8) for i in range(64)]
    batch = tokenize(bb.tokenizer, texts, 64, "left")
    with torch.no_grad():
        trunk_states(bb.model, tokenize(bb.tokenizer, texts[:8], 64, "left"), bb.n_layers)  # warm-up
        t0 = time.perf_counter()
        trunk_states(bb.model, batch, bb.n_layers)
        wall = time.perf_counter() - t0
    g1 = matmul_gflops()
    tokens = int(batch.attention_mask.sum())
    achieved = 2 * n_params * tokens / wall / 1e9
    return {"tokens_per_s": tokens / wall, "gflops_peak": (g0 + g1) / 2, "share_of_peak": achieved / ((g0 + g1) / 2)}


def step_flops(profile, params: float, layers: int, hidden: int, train_questions: int) -> dict[str, float]:
    """FLOPs of each step of the paper profile on wiki-18."""
    rc, s1, g = profile.retriever, profile.stage1, profile.generator

    def fwd(tokens, seq):  # 2N per token + attention (QK^T and AV: 4·s·h per token per layer)
        return tokens * (2 * params + 4 * seq * hidden * layers)

    p_len = min(PASSAGE_TOKENS, rc.max_len)
    envs = (1 + s1.n_rewrites) * len(s1.windows)
    group_tokens = s1.group_size * p_len + QUESTION_TOKENS
    prompt = g.k * min(g.passage_tokens, PASSAGE_TOKENS) + g.n_shot * 60 + QUESTION_TOKENS
    return {
        "corpus encode (every wiki-18 passage, the trained retriever)": fwd(WIKI18_PASSAGES * p_len, p_len),
        "LSR scores (generator likelihood of each group member, every environment)":
            fwd(train_questions * envs * s1.group_size * (p_len + QUESTION_TOKENS + 10), p_len + 30),
        "stage 1 training (one epoch, LoRA on every layer, checkpointing)":
            3 * fwd(train_questions * envs * group_tokens, p_len),
        "stage 2 training (one epoch)": 3 * fwd(train_questions * (prompt + 10), prompt),
        "evaluation: queries encoded, index searched": fwd(EVAL_QUESTIONS * (1 + s1.n_rewrites) * QUESTION_TOKENS,
                                                           QUESTION_TOKENS),
        "evaluation: generation (6 rows x 3 datasets, 8 new tokens)": fwd(6 * EVAL_QUESTIONS * (prompt + 8), prompt),
    }


def main() -> None:
    from invar_rag_lib.config import load_profile
    from invar_rag_lib.io_utils import atomic_write_text
    from invar_rag_lib.llm.memory import LLAMA2_7B_CONFIG, GiB, estimate, model_config, model_shape
    from invar_rag_lib.paths import repo_root

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", help="a model directory with config.json (default: Llama-2-7B's shape)")
    ap.add_argument("--train-questions", type=int, default=100_000,
                    help="stage-1 and stage-2 training questions (the paper profile takes all that exist)")
    ap.add_argument("--gpu-tflops", type=float, default=989.0, help="one GPU's dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--mfu-forward", type=float, default=0.40)
    ap.add_argument("--mfu-train", type=float, default=0.30)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config_dir = args.config
        if not config_dir:
            (Path(tmp) / "config.json").write_text(json.dumps(LLAMA2_7B_CONFIG))
            config_dir = tmp
        profile = load_profile("paper", overrides={"retriever.backbone": config_dir, "retriever.index": "ivfpq"})
        import torch

        shape = model_shape(model_config(config_dir), profile.retriever.lora_targets)
        mem = estimate(profile, device=torch.device("cuda"), n_passages=WIKI18_PASSAGES, available=80 * GiB)
    flops = step_flops(profile, shape.params, shape.layers, shape.hidden, args.train_questions)
    cpu = measure_cpu()
    cpu_flops = cpu["gflops_peak"] * 1e9 * cpu["share_of_peak"]
    lines = [f"Cost of the `paper` profile on wiki-18 ({WIKI18_PASSAGES:,} passages, ~{PASSAGE_TOKENS} tokens each), "
             f"{shape.params / 1e9:.2f}B parameters, {args.train_questions:,} training questions. GPU hours: "
             f"**assumed** {args.gpu_tflops:.0f} TFLOP/s bf16 peak at {args.mfu_forward:.0%} (forward) / "
             f"{args.mfu_train:.0%} (training) of peak, not measured (no device lent); this machine: **measured** "
             f"SmolLM2 trunk forward {cpu['tokens_per_s']:.0f} tokens/s = {cpu['share_of_peak']:.0%} of its "
             f"{cpu['gflops_peak']:.0f} GFLOP/s fp32 peak, scaled by FLOPs.", "",
             "| step | PFLOP | 1 GPU (h) | 8 GPUs (h) | this CPU machine (days) |", "|---|---|---|---|---|"]
    total = [0.0, 0.0, 0.0]
    for step, f in flops.items():
        mfu = args.mfu_train if "training" in step else args.mfu_forward
        h1 = f / (args.gpu_tflops * 1e12 * mfu) / 3600
        cpu_days = f / cpu_flops / 86400
        total = [total[0] + f, total[1] + h1, total[2] + cpu_days]
        lines.append(f"| {step} | {f / 1e15:,.0f} | {h1:,.1f} | {h1 / 8:,.1f} | {cpu_days:,.0f} |")
    lines.append(f"| **all** | {total[0] / 1e15:,.0f} | {total[1]:,.1f} | {total[1] / 8:,.1f} | {total[2]:,.0f} |")
    disk = WIKI18_PASSAGES * shape.hidden * 2 / GiB
    lines += ["", f"Memory per GPU (`invar-rag memory --profile paper --passages {WIKI18_PASSAGES}` with index = "
              f"ivfpq): {mem.describe().split(': ', 1)[1]}. Disk: the corpus ~14 GiB (psgs_w100.tsv ~13 GiB "
              f"uncompressed, its Arrow build about as much), the float16 encoding {disk:,.0f} GiB "
              f"({WIKI18_PASSAGES:,} x {shape.hidden} x 2 bytes, shards and merged file: twice that while merging), "
              f"the 7B weights 13 GiB (bf16), checkpoints < 1 GiB."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(repo_root() / "reports" / "tables" / "paper_cost.md", text)
    print(text)


if __name__ == "__main__":
    main()
