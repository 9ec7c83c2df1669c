"""Train an adapter of the tiny model on synthetic data and save its final LoRA weights: run
directly (1 process) or under `accelerate launch --num_processes 2 --cpu` by
tests/test_stage1_train.py, which compares the two. The one training loop (`training.train_adapter`)
serves both adapters, so both are checked: `--adapter=retriever` (default; synthetic groups) and
`--adapter=generator` (synthetic question-answer sequences on cached trunk states).
Usage: SCRIPT OUT_DIR GRAD_ACCUM [STOP_AFTER] [--resume] [--dropout=P] [--lr=X] [--adapter=NAME]"""
import json
import sys

import torch

from invar_rag_lib.config import load_profile
from invar_rag_lib.llm.backbone import GENERATOR, Backbone, LoraShape
from invar_rag_lib.llm.encoder import tokenize, trunk_states
from invar_rag_lib.losses import lsr_distribution
from invar_rag_lib.stage1.environments import environments
from invar_rag_lib.stage1.train import TrainingData, train_retriever
from invar_rag_lib.stage1.variants import Objective
from invar_rag_lib.training import lora_state

N_GROUPS, G = 16, 3
N_EXAMPLES = 16


def _nonzero_b(model, adapter: str) -> None:
    # LoRA's B starts at zero, so lora_A's first gradients are exactly zero and Adam would turn
    # float noise into full-size steps; a non-zero B makes every gradient a real signal.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and f".{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)


def make_setup(grad_accum: int, dropout: float = 0.0, lr: float | None = None):
    """(profile, backbone, data) for the retriever."""
    profile = load_profile("smoke", overrides={
        "stage1.grad_accum": grad_accum, "stage1.batch_size": 2, "stage1.epochs": 2,
        "stage1.checkpoint_every": 2, "stage1.warmup_steps": 1, "retriever.lora_dropout": dropout,
        **({} if lr is None else {"stage1.lr": lr})})
    backbone = Backbone("tiny-random", LoraShape(2, 4, 8, dropout, ("q_proj", "v_proj")), seed=0, log=lambda *a: None)
    model, tok = backbone.model, backbone.tokenizer
    _nonzero_b(model, "retriever")
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
    return profile, backbone, data


def make_generator_setup(grad_accum: int, dropout: float = 0.0, lr: float | None = None):
    """(profile, backbone, data) for the generator: synthetic prompts whose answer is in the passage."""
    from invar_rag_lib.llm.backbone import generator_shape
    from invar_rag_lib.llm.decode import Prompt
    from invar_rag_lib.stage2.examples import Example
    from invar_rag_lib.stage2.train import GeneratorData

    profile = load_profile("smoke", overrides={
        "generator.grad_accum": grad_accum, "generator.batch_size": 2, "generator.epochs": 2,
        "generator.checkpoint_every": 2, "generator.warmup_steps": 1, "generator.lora_dropout": dropout,
        **({} if lr is None else {"generator.lr": lr})})
    backbone = Backbone.from_profile(profile, log=lambda *a: None)
    backbone.add_adapter(GENERATOR, generator_shape(profile))
    _nonzero_b(backbone.model, GENERATOR)
    colours = ["red", "blue", "green", "black", "white", "gold", "grey", "pink"]
    examples = [Example(Prompt("Answer.\n\n", f"Passage: item {i} is {'very ' * (i % 3)}{colours[i % 8]}\n"
                                              f"Question: what colour is item {i}?\nAnswer:"), colours[i % 8])
                for i in range(N_EXAMPLES)]
    return profile, backbone, GeneratorData(backbone, examples, backbone.split(GENERATOR))


if __name__ == "__main__":
    out, accum = sys.argv[1], int(sys.argv[2])
    stop = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
    flags = dict(a[2:].split("=", 1) for a in sys.argv if a.startswith("--") and "=" in a)
    dropout, lr = float(flags.get("dropout", 0.0)), float(flags["lr"]) if "lr" in flags else None
    adapter = flags.get("adapter", "retriever")
    if adapter == GENERATOR:
        from invar_rag_lib.stage2.train import train_generator

        profile, backbone, data = make_generator_setup(accum, dropout, lr)
        if stop is not None:
            raise SystemExit("STOP_AFTER is for the retriever only")
        result = train_generator(backbone, data, profile, out, resume="--resume" in sys.argv, log=lambda *a: None)
    else:
        profile, backbone, data = make_setup(accum, dropout, lr)
        result = train_retriever(backbone, data, Objective(alpha=1.0, lam=0.5, gamma=1.0), profile, out,
                                 resume="--resume" in sys.argv, log=lambda *a: None, stop_after=stop)
    from accelerate import PartialState

    if PartialState().is_main_process:
        from safetensors.torch import save_file

        save_file(lora_state(backbone.model, adapter), f"{out}/final.safetensors")
        with open(f"{out}/history.json", "w") as f:
            json.dump(result["history"], f)
