"""Training the `generator` adapter (docs/method.md §2) on cached trunk states.

The adapter has the retriever's LoRA shape, on the same top `L` layers, so the layers below are
frozen for it too: a training sequence (prompt + " " + first gold answer + EOS) goes through the
trunk once (`TrunkCache`, shared with stage 1) and each step runs only the top `L` layers, the final
norm and the LM head, the head only at the positions that predict a target token. Cross-entropy
is averaged over target tokens. The loop mirrors the retriever's (`accelerate`, `get_lr`,
checkpoints with resume and reuse).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Profile
from ..io_utils import jsonable, sha256_text
from ..paths import shown
from ..progress import step_bar
from ..llm.device import compute_device
from ..llm.encoder import Batch, decoder_of, lora_config, run_layers, trunk_states
from ..training import (checkpoint_path, clean_leftovers, epoch_order, finished_checkpoint, get_lr,
                        load_adapter, load_checkpoint, micro_batch, save_checkpoint)
from ..llm.decode import Prompt, prompt_ids
from ..llm.padding import pad_id, pad_states, pad_token_rows

GENERATOR_ADAPTER = "generator"
_SEP = "\x1f"  # joins prompt and answer into one trunk-cache key


def add_generator_adapter(model, profile: Profile) -> None:
    """A second named LoRA adapter with the retriever's shape; the retriever stays as it is."""
    rc = profile.retriever
    if GENERATOR_ADAPTER not in model.peft_config:
        model.add_adapter(GENERATOR_ADAPTER, lora_config(model, rc.lora_layers, rc.lora_r, rc.lora_alpha,
                                                         profile.generator.lora_dropout, rc.lora_targets))


@dataclass
class Example:
    prompt: Prompt
    answer: str


def sequence_ids(tokenizer, example: Example) -> tuple[list[int], int]:
    """Token ids of prompt + " answer" + EOS, and how many of them (at the end) are the target."""
    prefix, suffix = prompt_ids(tokenizer, example.prompt)
    target = tokenizer(" " + example.answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prefix + suffix + target, len(target)


class GeneratorTop(torch.nn.Module):
    """Layers [split, N) + norm + LM head at target positions; returns the mean token CE."""

    def __init__(self, model, split: int):
        super().__init__()
        self.model, self.split = model, split

    def forward(self, hidden, mask, labels):
        inner = self.model.get_base_model()
        decoder = decoder_of(self.model)
        weight = decoder.norm.weight
        hidden, mask, labels = hidden.to(weight.device, weight.dtype), mask.to(weight.device), labels.to(weight.device)
        out = run_layers(decoder, hidden, mask, self.split, decoder.config.num_hidden_layers, final_norm=True)
        rows, cols = (labels[:, 1:] >= 0).nonzero(as_tuple=True)  # position t predicts token t+1
        logits = inner.lm_head(out[rows, cols]).float()
        return F.cross_entropy(logits, labels[rows, cols + 1])


def _pad_right(states: Sequence[torch.Tensor], ids: Sequence[list[int]], n_target: Sequence[int]):
    """Right-padded states and mask, and labels that are the target tokens (-100 elsewhere)."""
    hidden, mask = pad_states(states, "right")
    labels = torch.full(mask.shape, -100, dtype=torch.long)
    for i, (row, t) in enumerate(zip(ids, n_target)):
        labels[i, len(row) - t:len(row)] = torch.tensor(row[len(row) - t:])
    return hidden, mask, labels


class GeneratorData:
    """Token ids and trunk states of every training sequence. `trunk_cache` is a `TrunkCache` with
    the retriever's trunk fingerprint (the same frozen layers) in its own directory, so the
    retriever's notebooks do not load these long sequences. The states are read (or computed) on
    first use only, so reusing a finished checkpoint never touches them."""

    def __init__(self, stage, examples: Sequence[Example], trunk_cache, trunk_batch_size: int = 8):
        self.stage, self.trunk_cache, self.trunk_batch_size = stage, trunk_cache, trunk_batch_size
        self.examples = list(examples)
        seqs = [sequence_ids(stage.tokenizer, e) for e in examples]
        self.ids = [s for s, _ in seqs]
        self.n_target = [t for _, t in seqs]
        self.keys = [e.prompt.text + _SEP + e.answer for e in examples]

    @cached_property
    def states(self) -> list[torch.Tensor]:
        by_key, pad = dict(zip(self.keys, self.ids)), pad_id(self.stage.tokenizer)

        def compute(keys):
            ids, mask = pad_token_rows([by_key[k] for k in keys], pad, "right")
            return trunk_states(self.stage.model, Batch(ids, mask), self.stage.split)

        # max_len 0 marks "whole generator sequence" in the cache key (no truncation).
        order = sorted(range(len(self.keys)), key=lambda i: (len(self.ids[i]), i))  # batches of similar length
        computed = self.trunk_cache.get_or_compute([self.keys[i] for i in order], 0, compute, batch_size=self.trunk_batch_size,
                                                   log=self.stage.log)
        states: list[torch.Tensor] = [None] * len(self.keys)  # type: ignore[list-item]
        for i, state in zip(order, computed):
            states[i] = state
        return states

    def __len__(self) -> int:
        return len(self.examples)

    def key(self) -> str:
        return sha256_text(*self.keys)[:16]

    def batch(self, idx: Sequence[int]):
        return _pad_right([self.states[i] for i in idx], [self.ids[i] for i in idx], [self.n_target[i] for i in idx])


def train_generator(model, split: int, data: GeneratorData, profile: Profile, out_dir: str | Path,
                    resume: bool = False, reuse: bool = False, data_key: str = "", log=print) -> dict:
    """Train the `generator` adapter (set active here) on `data`; returns the loss history."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    g = profile.generator
    out_dir = Path(out_dir)
    set_seed(profile.seed)
    model.set_adapter(GENERATOR_ADAPTER)
    accelerator = Accelerator(cpu=compute_device().type == "cpu")
    top = GeneratorTop(model, split)
    params = [p for n, p in model.named_parameters() if f".{GENERATOR_ADAPTER}." in n]
    for n, p in model.named_parameters():
        p.requires_grad_(f".{GENERATOR_ADAPTER}." in n)
    optimizer = torch.optim.AdamW(params, lr=g.lr, weight_decay=g.weight_decay)
    top, optimizer = accelerator.prepare(top, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = len(data) // (g.batch_size * world)  # whole global batches; each process reads its share
    total_steps = per_epoch * g.epochs
    if total_steps == 0:
        raise ValueError(f"{len(data)} generator examples are fewer than one global batch of "
                         f"{g.batch_size} x {world} processes")
    lora = {k: getattr(profile.retriever, k) for k in ("lora_layers", "lora_r", "lora_alpha", "lora_targets")}
    config = {"generator": asdict(g), "lora": lora, "seed": profile.seed, "total_steps": total_steps, "processes": world,
              "data_key": data_key or data.key()}
    config = jsonable(config)
    unwrapped = accelerator.unwrap_model(top).model
    if reuse and (done := finished_checkpoint(out_dir, config)):
        load_adapter(unwrapped, out_dir, GENERATOR_ADAPTER)
        log(f"reused the finished generator checkpoint in {shown(out_dir)}")
        return {"history": done["history"], "config": config, "reused": True}
    t0 = time.perf_counter()
    data.states  # trunk states: read from the cache or computed once, before the first step
    trunk_s = time.perf_counter() - t0
    step, history = 0, []
    latest = checkpoint_path(out_dir)
    clean_leftovers(out_dir, log)
    if resume and (latest / "state.json").exists():
        step, history = load_checkpoint(latest, unwrapped, optimizer, GENERATOR_ADAPTER, config)
        log(f"resumed from {latest.name} at step {step}")
    top.train()
    bar = step_bar(total_steps, step, "training generator")
    while step < total_steps:
        epoch, in_epoch = divmod(step, per_epoch)
        order = epoch_order(len(data), profile.seed, epoch)
        loss = top(*data.batch(micro_batch(order, in_epoch, g.batch_size, world, rank)))
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, g.max_grad_norm)
        lr = get_lr(step, g.lr, g.warmup_steps, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad()
        mean_loss = accelerator.reduce(loss.detach().reshape(1), reduction="mean")  # over processes
        history.append({"step": step + 1, "lr": lr, "loss": float(mean_loss.cpu())})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", refresh=False)
        bar.update()
        step += 1
        if (step % g.checkpoint_every == 0 or step == total_steps) and accelerator.is_main_process:
            save_checkpoint(latest, unwrapped, optimizer, step, config, history, GENERATOR_ADAPTER)
    bar.close()
    top.eval()
    log(f"generator: {total_steps} steps, loss {np.mean([h['loss'] for h in history[:5]]):.3f} (first 5) "
        f"-> {np.mean([h['loss'] for h in history[-5:]]):.3f} (last 5)")
    return {"history": history, "config": config, "reused": False, "trunk_s": trunk_s}

