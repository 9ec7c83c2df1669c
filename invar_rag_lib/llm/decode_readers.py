"""Greedy decoding of the same prompts by several readers (the base model, an adapter), sharing the work
that is the same for all of them.

A generation row and its generator row read the same prompts (`minilm-rag` and `minilm-rag+generator`,
`invar-retrieval` and `invar-rag`; the base model and the generator on the validation questions).
The generator's LoRA sits on the top layers only, so below its first LoRA layer (`split`) the two
readers compute the same thing. For each batch of prompts this decoder therefore:

1. runs the prompt's own tokens through layers [0, split) once, with every adapter off, attending to
   the shared prefix's keys and values (computed once per call, `prefix_cache`);
2. for each reader, runs layers [split, N) on that output (its own prefix cache above the split),
   then decodes greedily from the resulting cache, dropping rows from the batch as they finish.

With one reader and `split = 0` this is plain shared-prefix greedy decoding. The answers equal
`decode.greedy_decode`'s, prompt by prompt (tested); that older decoder stays as it is because query
rewrites are cached under its name (`stage1/rewrites.py`), so stage 1 never re-decodes them.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager, Sequence

import torch

from ..progress import progress
from .decode import DecodeStats, Prompt, attention, prefix_cache, prompt_ids, stop_token_ids
from .encoder import decoder_of
from .padding import pad_id, pad_token_rows
from .prefix import additive_mask


def _prefill(decoder, hidden: torch.Tensor, full_mask: torch.Tensor, positions: torch.Tensor, cache,
             start: int, end: int) -> torch.Tensor:
    """Layers [start, end) on the rows' tokens `hidden` ([B, T, D], left-padded after a prefix of
    length P = full_mask.shape[1] - T), appending their keys and values to `cache`."""
    b, t = hidden.shape[:2]
    p = full_mask.shape[1] - t
    keys = torch.arange(p + t, device=hidden.device)
    causal = keys[None, :] <= (p + torch.arange(t, device=hidden.device))[:, None]  # [T, P+T]
    allowed = (causal[None] & full_mask.bool()[:, None, :])[:, None]  # [B, 1, T, P+T]
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # a padding row attends to everything (ignored)
    mask = additive_mask(allowed, hidden.dtype)
    emb = decoder.rotary_emb(hidden, position_ids=positions)
    for layer in decoder.layers[start:end]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=emb, position_ids=positions, cache=cache,
                       use_cache=True)
    return hidden


def _cache(config, lower, upper, split: int, rows: int):
    """A DynamicCache for `rows` rows: layers below `split` from `lower` (already per row, or None:
    left empty), layers from `split` on from the batch-1 prefix cache `upper` (repeated per row, or
    None: left empty). Tensors are shared, never written in place (a cache grows by concatenation)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for i, layer in enumerate(cache.layers):
        src = lower if i < split else upper
        if src is None:
            continue
        k, v = src.layers[i].keys, src.layers[i].values
        if i >= split:
            k, v = k.repeat_interleave(rows, dim=0), v.repeat_interleave(rows, dim=0)
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


@torch.no_grad()
def decode_readers(model, tokenizer, prompts: Sequence[Prompt], readers: Sequence[Callable[[], ContextManager]],
                   split: int, trunk: Callable[[], ContextManager] = contextlib.nullcontext, max_new_tokens: int = 16,
                   batch_size: int = 16, stats: Sequence[DecodeStats] | None = None,
                   attn_implementation: str | None = None) -> list[list[str]]:
    """Answers of every reader (a context manager factory that makes the model that reader) for
    `prompts` (one common prefix), in order: one list per reader. `trunk` makes the model whose
    layers below `split` every reader shares (all adapters off)."""
    if not prompts:
        return [[] for _ in readers]
    with attention(model, attn_implementation):
        return _decode(model, tokenizer, prompts, readers, split, trunk, max_new_tokens, batch_size, stats)


def _decode(model, tokenizer, prompts, readers, split, trunk, max_new_tokens, batch_size, stats):
    stats = list(stats) if stats is not None else [DecodeStats() for _ in readers]
    t_start = time.perf_counter()
    decoder = decoder_of(model)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config, n_layers = decoder.config, decoder.config.num_hidden_layers
    device = decoder.embed_tokens.weight.device
    stops, pad = stop_token_ids(tokenizer), pad_id(tokenizer)
    pairs = [prompt_ids(tokenizer, p) for p in prompts]
    if len({p.prefix for p in prompts}) != 1:
        raise ValueError("decode_readers needs one common prefix for every prompt")
    head = pairs[0][0]
    if not head:
        raise ValueError("decode_readers needs a non-empty shared prefix")
    prefixes = []
    for reader in readers:
        with reader():
            prefixes.append(prefix_cache(model, head))
    for s in stats:
        s.prompt_tokens += len(head)
    bodies = [s for _, s in pairs]
    order = sorted(range(len(bodies)), key=lambda i: (len(bodies[i]), i))
    out = [[""] * len(prompts) for _ in readers]
    for lo in progress(range(0, len(order), batch_size), "decoding", unit="batch"):
        idx = order[lo:lo + batch_size]
        ids, mask = pad_token_rows([bodies[i] for i in idx], pad, "left")
        full = torch.cat([torch.ones(len(idx), len(head), dtype=torch.long), mask], dim=1).to(device)
        positions = ((full.cumsum(-1) - 1).clamp(min=0))[:, len(head):]
        lower = _cache(config, None, prefixes[0], 0, len(idx)) if split else None  # the prefix below the split
        with trunk():
            hidden = _prefill(decoder, decoder.embed_tokens(ids.to(device)), full, positions, lower, 0, split)
        for r, reader in enumerate(readers):
            stats[r].prompt_tokens += int(mask.sum())
            cache = _cache(config, lower, prefixes[r], split, len(idx))
            with reader():
                top = _prefill(decoder, hidden, full, positions, cache, split, n_layers)
                first = inner.lm_head(decoder.norm(top[:, -1])).argmax(-1)
                answers = _greedy_steps(model, cache, first, full, positions[:, -1], max_new_tokens, stops, stats[r])
            for row, i in enumerate(idx):
                out[r][i] = tokenizer.decode(answers[row], skip_special_tokens=True).split("\n")[0].strip()
    elapsed = time.perf_counter() - t_start
    for s in stats:
        s.prompts += len(prompts)
        s.seconds += elapsed / len(readers)
    return out


def _greedy_steps(model, cache, first: torch.Tensor, mask: torch.Tensor, last_position: torch.Tensor,
                  max_new_tokens: int, stops, stats: DecodeStats) -> list[list[int]]:
    """Greedy continuation from the prefilled `cache`, `first` being each row's first new token;
    a row leaves the batch (and the cache) once it has produced a stop token."""
    device = mask.device
    generated: list[list[int]] = [[] for _ in range(first.shape[0])]
    alive = list(range(first.shape[0]))  # rows still decoding, in batch order
    nxt, step_pos = first, last_position[:, None]
    for step in range(max_new_tokens):
        keep = []
        for j, (row, tok) in enumerate(zip(alive, nxt.tolist())):
            generated[row].append(tok)
            stats.generated_tokens += 1
            if tok not in stops:
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            mask, step_pos, nxt = mask[sel], step_pos[sel], nxt[sel]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=mask.dtype, device=device)], dim=1)
        step_pos = step_pos + 1
        res = model(input_ids=nxt[:, None].to(device), attention_mask=mask, position_ids=step_pos, cache=cache,
                    use_cache=True, logits_to_keep=1)
        nxt = res.logits[:, -1].argmax(-1)
    return generated
