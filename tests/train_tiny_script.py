"""Train the retriever adapter of the tiny model on synthetic groups and save the final LoRA
weights: run directly (1 process) or under `accelerate launch --num_processes 2 --cpu` by
tests/test_stage1_train.py, which compares the two.
Usage: SCRIPT OUT_DIR GRAD_ACCUM [STOP_AFTER] [--resume] [--dropout=P] [--lr=X]"""
import json
import sys

import torch

from invar_rag_lib.config import load_profile
from invar_rag_lib.llm.backbone import tiny_llama, tiny_tokenizer
from invar_rag_lib.llm.encoder import add_retriever_adapter, tokenize, trunk_states
from invar_rag_lib.losses import lsr_distribution
from invar_rag_lib.stage1.environments import environments
from invar_rag_lib.stage1.train import Objective, TrainingData, train_retriever
from invar_rag_lib.training import lora_state

N_GROUPS, G = 16, 3


def make_setup(grad_accum: int, dropout: float = 0.0, lr: float | None = None):
    profile = load_profile("smoke", overrides={
        "stage1.grad_accum": grad_accum, "stage1.batch_size": 2, "stage1.epochs": 2,
        "stage1.checkpoint_every": 2, "stage1.warmup_steps": 1, "retriever.lora_dropout": dropout,
        **({} if lr is None else {"stage1.lr": lr})})
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = add_retriever_adapter(tiny_llama(seed=0), 2, 4, 8, dropout, ["q_proj", "v_proj"])
    # LoRA's B starts at zero, so lora_A's first gradients are exactly zero and Adam would turn
    # float noise into full-size steps; a non-zero B makes every gradient a real signal.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    envs = environments(profile)
    gen = torch.Generator().manual_seed(1)
    words = ["paris", "river", "capital", "music", "war", "planet", "ocean", "king", "film", "gold"]

    def text(i):
        return " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 5))

    def states(texts, max_len):
        return trunk_states(model, tokenize(tok, texts, max_len, "left"), 2)

    query_states = {v: states([f"query {v} {text(i)}" for i in range(N_GROUPS)], 24)
                    for v in range(1 + profile.stage1.n_rewrites)}
    passage_states = {}
    for window in sorted({e.window for e in envs}):
        flat = states([f"passage {text(i * G + g)}" for i in range(N_GROUPS) for g in range(G)], window)
        passage_states[window] = [flat[i * G:(i + 1) * G] for i in range(N_GROUPS)]
    mask = torch.ones(N_GROUPS, G, dtype=torch.bool)
    positive = torch.zeros(N_GROUPS, G, dtype=torch.bool)
    positive[:, 0] = True
    data = TrainingData(query_states, passage_states, torch.rand(N_GROUPS, G, generator=gen),
                        lsr_distribution(torch.randn(len(envs), N_GROUPS, G, generator=gen), mask, 1.0),
                        positive, envs)
    return profile, model, data


if __name__ == "__main__":
    out, accum = sys.argv[1], int(sys.argv[2])
    stop = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
    flags = dict(a[2:].split("=", 1) for a in sys.argv if a.startswith("--") and "=" in a)
    profile, model, data = make_setup(accum, float(flags.get("dropout", 0.0)),
                                      float(flags["lr"]) if "lr" in flags else None)
    result = train_retriever(model, 2, data, Objective(alpha=1.0, lam=0.5, gamma=1.0), profile, out,
                             resume="--resume" in sys.argv, log=lambda *a: None, stop_after=stop)
    from accelerate import PartialState

    if PartialState().is_main_process:
        from safetensors.torch import save_file

        save_file(lora_state(model, "retriever"), f"{out}/final.safetensors")
        with open(f"{out}/history.json", "w") as f:
            json.dump(result["history"], f)
