"""Training the `generator` adapter (docs/method.md §2) on cached trunk states, with the shared prompt
prefix computed once per step.

The adapter sits on its own top `generator.lora_layers` layers; the layers below are its frozen trunk.
Every training prompt starts with the same prefix (instruction and demonstrations), so:

* **trunk**: the prefix goes through the frozen layers once; each example's own tokens (passages,
  question, answer, EOS) go through them once, attending to the prefix's keys and values, and are
  kept in the backbone's `trunk-generator` store (`GeneratorData`);
* **each step**: the prefix goes through the top layers once, with the adapter and with gradients;
  the batch's own tokens go through them attending to it (`llm/prefix.py`), and the LM head runs only
  where a target token is predicted (`answer_loss`: cross-entropy averaged over target tokens).

This equals training on prefix + example for every example (tested); the loop is the one both
adapters use (`training.train_adapter`).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Profile
from ..io_utils import sha256_text
from ..llm.backbone import GENERATOR, Backbone
from ..llm.decode import prompt_ids
from ..llm.encoder import decoder_of
from ..llm.padding import pad_id, pad_states, pad_token_rows
from ..llm.prefix import SharedPrefix, run_layers_after_prefix, run_layers_on_prefix
from ..training import Schedule, train_adapter
from .examples import Example

GENERATOR_ADAPTER = GENERATOR
_SEP = "\x1f"  # joins prefix, prompt suffix and answer into one trunk-cache key


def sequence_ids(tokenizer, example: Example) -> tuple[list[int], list[int], int]:
    """(prefix ids, the example's own ids = prompt suffix + " answer" + EOS, how many of those at
    the end are the target)."""
    prefix, suffix = prompt_ids(tokenizer, example.prompt)
    target = tokenizer(" " + example.answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prefix, suffix + target, len(target)


def answer_loss(model, split: int, prefix_state: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """L_gen = −mean over target tokens of log P(a_t | x, a_<t): the prefix's trunk state
    (`prefix_state`, [1, P, D]) runs through layers [split, N) once, the rows' trunk states `hidden`
    ([B, T, D], right-padded) attend to it; the LM head only where `labels` >= 0 is predicted."""
    inner = model.get_base_model()
    decoder = decoder_of(model)
    weight = decoder.norm.weight
    n = decoder.config.num_hidden_layers
    prefix_state = prefix_state.to(weight.device, weight.dtype)
    hidden, mask, labels = hidden.to(weight.device, weight.dtype), mask.to(weight.device), labels.to(weight.device)
    _, prefix = run_layers_on_prefix(decoder, prefix_state, split, n)
    out = run_layers_after_prefix(decoder, hidden, mask, prefix, split, n, final_norm=True)
    rows, cols = (labels[:, 1:] >= 0).nonzero(as_tuple=True)  # position t predicts token t+1
    logits = inner.lm_head(out[rows, cols]).float()
    return F.cross_entropy(logits, labels[rows, cols + 1])


class GeneratorTop(torch.nn.Module):
    """The trainable forward of the generator (what `accelerate` wraps): `answer_loss`."""

    def __init__(self, model, split: int):
        super().__init__()
        self.model, self.split = model, split

    def forward(self, prefix_state, hidden, mask, labels):
        return answer_loss(self.model, self.split, prefix_state, hidden, mask, labels)


def _labels(mask: torch.Tensor, ids: Sequence[list[int]], n_target: Sequence[int]) -> torch.Tensor:
    """Right-padded labels: the target tokens, -100 elsewhere."""
    labels = torch.full(mask.shape, -100, dtype=torch.long)
    for i, (row, t) in enumerate(zip(ids, n_target)):
        labels[i, len(row) - t:len(row)] = torch.tensor(row[len(row) - t:])
    return labels


class GeneratorData:
    """The shared prefix and every example's own token ids, with their trunk states (the input of
    layer `split`) in the backbone's `trunk-generator` store, so stage 1's notebooks never load these
    sequences. The states are read (or computed) on first use only, so reusing a finished checkpoint
    never touches them."""

    def __init__(self, backbone: Backbone, examples: Sequence[Example], split: int, trunk_batch_size: int = 8):
        if not examples:
            raise ValueError("no generator training examples (generator.train_questions, context_mix?)")
        self.backbone, self.split, self.trunk_batch_size = backbone, split, trunk_batch_size
        self.trunk_cache = backbone.trunk(split, "trunk-generator")
        self.examples = list(examples)
        prefixes = {e.prompt.prefix for e in self.examples}
        if len(prefixes) != 1:
            raise ValueError("every generator training prompt must start with the same prefix")
        self.prefix_text = prefixes.pop()
        seqs = [sequence_ids(backbone.tokenizer, e) for e in self.examples]
        self.prefix_ids = seqs[0][0]
        if not self.prefix_ids:
            raise ValueError("the generator's prompt prefix is empty: set generator.instruction")
        self.ids = [s for _, s, _ in seqs]
        self.n_target = [t for _, _, t in seqs]
        self.keys = [self.prefix_text + _SEP + e.prompt.suffix + _SEP + e.answer for e in self.examples]

    @cached_property
    def states(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the prefix's trunk state [P, D], each example's own trunk states [T_i, D])."""
        backbone, split = self.backbone, self.split
        decoder = decoder_of(backbone.model)
        device = decoder.embed_tokens.weight.device
        trunk_prefix: dict = {}

        @torch.no_grad()
        def prefix_pass() -> tuple[torch.Tensor, SharedPrefix]:
            if "pass" not in trunk_prefix:
                with backbone.adapter(None):  # the trunk is base weights
                    hidden = decoder.embed_tokens(torch.tensor([self.prefix_ids], device=device))
                    trunk_prefix["pass"] = run_layers_on_prefix(decoder, hidden, 0, split)
            return trunk_prefix["pass"]

        def compute_prefix(_texts):
            return [prefix_pass()[0][0].float().cpu()]

        by_key, pad = dict(zip(self.keys, self.ids)), pad_id(backbone.tokenizer)

        @torch.no_grad()
        def compute(keys):
            ids, mask = pad_token_rows([by_key[k] for k in keys], pad, "right")
            _, prefix = prefix_pass()
            with backbone.adapter(None):
                hidden = decoder.embed_tokens(ids.to(device))
                out = run_layers_after_prefix(decoder, hidden, mask.to(device), prefix, 0, split, final_norm=False)
            out = out.float().cpu()
            return [h[m.bool()].clone() for h, m in zip(out, mask)]

        prefix_state = self.trunk_cache.get_or_compute(["prefix" + _SEP + self.prefix_text], 0, compute_prefix,
                                                       batch_size=None)[0]
        # max_len 0 marks "whole sequence" in the cache key (no truncation); batches of similar length
        order = sorted(range(len(self.keys)), key=lambda i: (len(self.ids[i]), i))
        computed = self.trunk_cache.get_or_compute([self.keys[i] for i in order], 0, compute,
                                                   batch_size=self.trunk_batch_size, log=backbone.log)
        states: list[torch.Tensor] = [None] * len(self.keys)  # type: ignore[list-item]
        for i, state in zip(order, computed):
            states[i] = state
        return prefix_state, states

    def __len__(self) -> int:
        return len(self.examples)

    def key(self) -> str:
        return sha256_text(*self.keys)[:16]

    def batch(self, idx: Sequence[int]):
        """(prefix state [1, P, D], right-padded rows [B, T, D], their mask, their labels)."""
        prefix_state, states = self.states
        hidden, mask = pad_states([states[i] for i in idx], "right")
        return prefix_state.unsqueeze(0), hidden, mask, _labels(mask, [self.ids[i] for i in idx],
                                                                 [self.n_target[i] for i in idx])


@torch.no_grad()
def mean_answer_loss(backbone: Backbone, data: GeneratorData, adapter: str | None, idx: Sequence[int],
                     batch_size: int = 8) -> float:
    """The mean of `answer_loss` over the examples `idx` (batches of `batch_size`), with `adapter`
    (None: the base model): the training loss's floor on the same examples."""
    top = GeneratorTop(backbone.model, data.split).eval()
    losses = []
    with backbone.adapter(adapter):
        for i in range(0, len(idx), batch_size):
            losses.append(float(top(*data.batch(list(idx[i:i + batch_size])))))
    return float(np.mean(losses)) if losses else float("nan")


def train_generator(backbone: Backbone, data: GeneratorData, profile: Profile, out_dir: str | Path,
                    resume: bool = False, reuse: bool = False, data_key: str = "", log=print) -> dict:
    """Train the `generator` adapter from its initialisation on `data` through the one training
    loop; returns the history (and `trunk_s`, the time spent reading or computing the trunk states)."""
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
                        g.checkpoint_every, profile.retriever.gradient_checkpointing)
    backbone.reset_adapter(GENERATOR)
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
