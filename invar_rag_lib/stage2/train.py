"""Training the `generator` adapter (docs/method.md §2) on cached trunk states.

The adapter sits on its own top `generator.lora_layers` layers, so the layers below are frozen for
it: a training sequence (prompt + " " + answer + EOS) goes through that trunk once (`TrunkCache`
in its own store) and each step runs only the top layers, the final norm and the LM head, the
head only at the positions that predict a target token (`answer_loss`: cross-entropy averaged over
target tokens). The loop is the one both adapters use (`training.train_adapter`).
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
from ..io_utils import sha256_text
from ..llm.backbone import GENERATOR, Backbone
from ..llm.decode import Prompt, prompt_ids
from ..llm.encoder import Batch, decoder_of, run_layers, trunk_states
from ..llm.padding import pad_id, pad_states, pad_token_rows
from ..training import Schedule, train_adapter

GENERATOR_ADAPTER = GENERATOR
_SEP = "\x1f"  # joins prompt and answer into one trunk-cache key


@dataclass
class Example:
    prompt: Prompt
    answer: str


def sequence_ids(tokenizer, example: Example) -> tuple[list[int], int]:
    """Token ids of prompt + " answer" + EOS, and how many of them (at the end) are the target."""
    prefix, suffix = prompt_ids(tokenizer, example.prompt)
    target = tokenizer(" " + example.answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prefix + suffix + target, len(target)


def answer_loss(model, split: int, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_gen = -mean over target tokens of log P(a_t | x, a_<t): layers [split, N) + norm on the
    trunk states `hidden`, the LM head only where a target token is predicted (`labels` >= 0)."""
    inner = model.get_base_model()
    decoder = decoder_of(model)
    weight = decoder.norm.weight
    hidden, mask, labels = hidden.to(weight.device, weight.dtype), mask.to(weight.device), labels.to(weight.device)
    out = run_layers(decoder, hidden, mask, split, decoder.config.num_hidden_layers, final_norm=True)
    rows, cols = (labels[:, 1:] >= 0).nonzero(as_tuple=True)  # position t predicts token t+1
    logits = inner.lm_head(out[rows, cols]).float()
    return F.cross_entropy(logits, labels[rows, cols + 1])


class GeneratorTop(torch.nn.Module):
    """The trainable forward of the generator (what `accelerate` wraps): `answer_loss`."""

    def __init__(self, model, split: int):
        super().__init__()
        self.model, self.split = model, split

    def forward(self, hidden, mask, labels):
        return answer_loss(self.model, self.split, hidden, mask, labels)


def _pad_right(states: Sequence[torch.Tensor], ids: Sequence[list[int]], n_target: Sequence[int]):
    """Right-padded states and mask, and labels that are the target tokens (-100 elsewhere)."""
    hidden, mask = pad_states(states, "right")
    labels = torch.full(mask.shape, -100, dtype=torch.long)
    for i, (row, t) in enumerate(zip(ids, n_target)):
        labels[i, len(row) - t:len(row)] = torch.tensor(row[len(row) - t:])
    return hidden, mask, labels


class GeneratorData:
    """Token ids and trunk states (the input of layer `split`) of every training sequence, in the
    backbone's `trunk-generator` store, so the retriever's notebooks never load these long
    sequences. The states are read (or computed) on first use only, so reusing a finished
    checkpoint never touches them."""

    def __init__(self, backbone: Backbone, examples: Sequence[Example], split: int, trunk_batch_size: int = 8):
        self.backbone, self.split, self.trunk_batch_size = backbone, split, trunk_batch_size
        self.trunk_cache = backbone.trunk(split, "trunk-generator")
        self.examples = list(examples)
        seqs = [sequence_ids(backbone.tokenizer, e) for e in examples]
        self.ids = [s for s, _ in seqs]
        self.n_target = [t for _, t in seqs]
        self.keys = [e.prompt.text + _SEP + e.answer for e in examples]

    @cached_property
    def states(self) -> list[torch.Tensor]:
        by_key, pad = dict(zip(self.keys, self.ids)), pad_id(self.backbone.tokenizer)

        def compute(keys):
            ids, mask = pad_token_rows([by_key[k] for k in keys], pad, "right")
            with self.backbone.adapter(None):  # the trunk is base weights
                return trunk_states(self.backbone.model, Batch(ids, mask), self.split)

        # max_len 0 marks "whole generator sequence" in the cache key (no truncation).
        order = sorted(range(len(self.keys)), key=lambda i: (len(self.ids[i]), i))  # batches of similar length
        computed = self.trunk_cache.get_or_compute([self.keys[i] for i in order], 0, compute, batch_size=self.trunk_batch_size,
                                                   log=self.backbone.log)
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


def train_generator(backbone: Backbone, data: GeneratorData, profile: Profile, out_dir: str | Path,
                    resume: bool = False, reuse: bool = False, data_key: str = "", log=print) -> dict:
    """Train the `generator` adapter on `data` through the one training loop; returns the history
    (and `trunk_s`, the time spent reading or computing the trunk states)."""
    g = profile.generator
    top = GeneratorTop(backbone.model, data.split)
    config = {"generator": asdict(g), "seed": profile.seed, "data_key": data_key or data.key()}
    timing = {}

    def read_states():  # from the cache or computed once, before the first step (never when reused)
        t0 = time.perf_counter()
        data.states
        timing["trunk_s"] = time.perf_counter() - t0

    def loss_fn(module, idx, micro):
        loss = module(*data.batch(idx))
        return loss, {"loss": float(loss.detach())}

    schedule = Schedule(g.lr, g.weight_decay, g.warmup_steps, g.max_grad_norm, g.batch_size, g.grad_accum, g.epochs,
                        g.checkpoint_every)
    backbone.mark_changed(GENERATOR)
    with backbone.adapter(GENERATOR):
        result = train_adapter(top, backbone.model, GENERATOR, len(data), loss_fn, schedule, profile.seed, out_dir,
                               config, what="generator examples", resume=resume, reuse=reuse,
                               on_start=read_states, desc="training generator", log=log)
    if not result["reused"]:
        history = result["history"]
        log(f"generator: {len(history)} steps, loss {np.mean([h['loss'] for h in history[:5]]):.3f} (first 5) "
            f"-> {np.mean([h['loss'] for h in history[-5:]]):.3f} (last 5)")
    return {**result, "trunk_s": timing.get("trunk_s", 0.0)}
