"""A shared prompt prefix computed once, not once per example (training and trunk states).

Every generation prompt starts with the same instruction and demonstrations. Under causal attention
the prefix's hidden states do not depend on what follows it, so for a batch of prompts:

* the prefix runs through the layers once (batch 1), keeping each layer's keys and values
  (`SharedPrefix`);
* each prompt's own tokens (passages, question, answer) run through the same layers attending to
  those keys and values (broadcast, not copied per row) and to their own, at positions after the
  prefix.

Both passes go through the model's own decoder layers (`run_layers_on_prefix`,
`run_layers_after_prefix`), with gradients when the caller trains: the adapter's effect on the
prefix is recomputed once per step. The result equals running prefix + suffix for every row
(tested to 1e-5 against a plain forward).
"""
from __future__ import annotations

import torch

from .encoder import call_layer


class SharedPrefix:
    """Per-layer keys and values of one prefix, put in front of every row's own: the one cache
    method a Llama attention layer calls (`update`), first to record, then to extend."""

    def __init__(self):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recording = True
        self.length = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.recording:
            self.kv[layer_idx] = (key_states, value_states)
            self.length = key_states.shape[-2]
            return key_states, value_states
        pk, pv = self.kv[layer_idx]
        b = key_states.shape[0]
        return (torch.cat([pk.expand(b, -1, -1, -1), key_states], dim=2),
                torch.cat([pv.expand(b, -1, -1, -1), value_states], dim=2))


def _causal(length: int, device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def run_layers_on_prefix(decoder, hidden: torch.Tensor, start: int, end: int,
                         prefix: SharedPrefix | None = None) -> tuple[torch.Tensor, SharedPrefix]:
    """Layers [start, end) on one prefix `hidden` ([1, P, D]), recording each layer's keys and
    values into `prefix` (a new one by default). Returns the output at layer `end` and `prefix`."""
    prefix = prefix if prefix is not None else SharedPrefix()
    prefix.recording = True
    length = hidden.shape[1]
    positions = torch.arange(length, device=hidden.device).unsqueeze(0)
    mask = additive_mask(_causal(length, hidden.device)[None, None], hidden.dtype)
    emb = decoder.rotary_emb(hidden, position_ids=positions)
    for layer in decoder.layers[start:end]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=emb, position_ids=positions,
                       cache=prefix, use_cache=True)
    prefix.recording = False
    return hidden, prefix


def run_layers_after_prefix(decoder, hidden: torch.Tensor, attention_mask: torch.Tensor, prefix: SharedPrefix,
                            start: int, end: int, final_norm: bool) -> torch.Tensor:
    """Layers [start, end) on right-padded rows `hidden` ([B, T, D], `attention_mask` [B, T]) that
    follow `prefix`: row tokens sit at positions P, P+1, ... and attend to the whole prefix and to
    their own earlier tokens."""
    b, t = attention_mask.shape
    p = prefix.length
    device = hidden.device
    positions = (p + torch.arange(t, device=device)).unsqueeze(0).expand(b, -1)
    own = _causal(t, device)[None] & attention_mask.bool()[:, None, :]  # [B, T, T]
    allowed = torch.cat([torch.ones(b, t, p, dtype=torch.bool, device=device), own], dim=2)[:, None]
    mask = additive_mask(allowed, hidden.dtype)
    emb = decoder.rotary_emb(hidden, position_ids=positions)
    prefix.recording = False
    for layer in decoder.layers[start:end]:  # the prefix is only read here, so a recomputation is exact
        hidden = call_layer(layer, hidden, attention_mask=mask, position_embeddings=emb, position_ids=positions,
                            cache=prefix, use_cache=True)
    return decoder.norm(hidden) if final_norm else hidden


def additive_mask(allowed: torch.Tensor, dtype) -> torch.Tensor:
    """A boolean [.., Q, K] mask as the additive float mask eager and sdpa attention both take."""
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)
