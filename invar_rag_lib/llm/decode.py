"""The one greedy decoder: batched, with an optional shared-prefix key/value cache (docs/method.md §2).

Used for the generator's answers (stage 2) and for the query rewrites (stage 1). Every evaluation
prompt starts with the same instruction and demonstrations (every rewrite prompt with the same
instruction). Their keys and values
are computed once (`prefix_cache`), copied for each batch, and only the per-question suffix
(passages + question) is run through the model. Rows are left-padded *between* the prefix and the
suffix; pads are masked out and position ids come from the attention mask, so each row computes
exactly what it would alone, with or without the shared cache (`share_prefix=False`, the baseline
the benchmark compares against, runs prefix + suffix for every prompt).

Decoding stops at a newline or EOS, or after `max_new_tokens`; the text before the first newline is
the answer. The LM head runs only on the last position (`logits_to_keep=1`).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..progress import progress
from .padding import pad_id, pad_token_rows

_STOP_IDS: dict[int, frozenset[int]] = {}


@dataclass(frozen=True)
class Prompt:
    """A prompt in two parts: a `prefix` shared by a whole batch of prompts, and its own `suffix`."""
    prefix: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.suffix



def stop_token_ids(tokenizer) -> frozenset[int]:
    """Ids whose text contains a newline, plus EOS (memoised per tokenizer)."""
    key = id(tokenizer)
    if key not in _STOP_IDS:
        vocab = range(len(tokenizer))
        ids = {i for i, t in zip(vocab, tokenizer.batch_decode([[i] for i in vocab])) if "\n" in t}
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        _STOP_IDS[key] = frozenset(ids)
    return _STOP_IDS[key]


@dataclass
class DecodeStats:
    prompts: int = 0
    prompt_tokens: int = 0  # tokens actually run through the model before decoding (prefix once if shared)
    generated_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        total = self.prompt_tokens + self.generated_tokens
        return {"prompts": self.prompts, "prompt_tokens": self.prompt_tokens,
                "generated_tokens": self.generated_tokens, "seconds": round(self.seconds, 2),
                "tokens_per_s": round(total / self.seconds, 1) if self.seconds else None,
                "prompts_per_s": round(self.prompts / self.seconds, 2) if self.seconds else None}


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def prompt_ids(tokenizer, prompt: Prompt) -> tuple[list[int], list[int]]:
    """(prefix ids with the tokenizer's special start tokens, suffix ids)."""
    return _ids(tokenizer, prompt.prefix, True), _ids(tokenizer, prompt.suffix, False)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def prefix_cache(model, prefix_ids: Sequence[int]):
    ids = torch.tensor([list(prefix_ids)], device=_model_device(model))
    return model(input_ids=ids, use_cache=True, logits_to_keep=1).cache


@contextlib.contextmanager
def attention(model, implementation: str | None):
    """Run with another attention kernel (the backbone loads with "eager"; "sdpa" decodes faster
    on CPU), restoring the previous one afterwards."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = inner.config._attn_implementation
    if implementation and implementation != before:
        inner.set_attn_implementation(implementation)
    try:
        yield
    finally:
        if inner.config._attn_implementation != before:
            inner.set_attn_implementation(before)


def greedy_decode(model, tokenizer, prompts: Sequence[Prompt], max_new_tokens: int = 16,
                  batch_size: int = 16, share_prefix: bool = True,
                  stats: DecodeStats | None = None, attn_implementation: str | None = None) -> list[str]:
    """Answers for `prompts` (in order). With `share_prefix`, every prompt must have the same prefix."""
    with attention(model, attn_implementation):
        return _greedy_decode(model, tokenizer, prompts, max_new_tokens, batch_size, share_prefix, stats)


@torch.no_grad()
def _greedy_decode(model, tokenizer, prompts, max_new_tokens, batch_size, share_prefix, stats) -> list[str]:
    if not prompts:
        return []
    t_start = time.perf_counter()
    stats = stats if stats is not None else DecodeStats()
    device = _model_device(model)
    stops = stop_token_ids(tokenizer)
    pad = pad_id(tokenizer)
    pairs = [prompt_ids(tokenizer, p) for p in prompts]
    cached = None
    if share_prefix:
        if len({p.prefix for p in prompts}) != 1:
            raise ValueError("share_prefix=True needs one common prefix for every prompt")
        head = pairs[0][0]
        cached = prefix_cache(model, head) if head else None
        stats.prompt_tokens += len(head)
        bodies = [s for _, s in pairs]
    else:
        head = []
        bodies = [p + s for p, s in pairs]
    order = sorted(range(len(bodies)), key=lambda i: (len(bodies[i]), i))
    out: list[str] = [""] * len(prompts)
    for lo in progress(range(0, len(order), batch_size), "decoding", unit="batch"):
        idx = order[lo:lo + batch_size]
        ids, mask = pad_token_rows([bodies[i] for i in idx], pad, "left")
        stats.prompt_tokens += int(mask.sum())
        cache = None
        if cached is not None:
            cache = copy.deepcopy(cached)
            cache.batch_repeat_interleave(len(idx))
            mask = torch.cat([torch.ones(len(idx), len(head), dtype=torch.long), mask], dim=1)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        step_ids, step_pos = ids, positions[:, -ids.shape[1]:]
        generated = [[] for _ in idx]
        done = torch.zeros(len(idx), dtype=torch.bool)
        for _ in range(max_new_tokens):
            res = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                        cache=cache, use_cache=True, logits_to_keep=1)
            cache = res.cache
            nxt = res.logits[:, -1].argmax(-1).cpu()
            for row, tok in enumerate(nxt.tolist()):
                if not done[row]:
                    generated[row].append(tok)
                    stats.generated_tokens += 1
                    if tok in stops:
                        done[row] = True
            if bool(done.all()):
                break
            step_ids = nxt.unsqueeze(1).to(device)
            mask = torch.cat([mask, torch.ones(len(idx), 1, dtype=mask.dtype, device=device)], dim=1)
            step_pos = step_pos[:, -1:] + 1
        for row, i in enumerate(idx):
            text = tokenizer.decode(generated[row], skip_special_tokens=True)
            out[i] = text.split("\n")[0].strip()
    stats.prompts += len(prompts)
    stats.seconds += time.perf_counter() - t_start
    return out
