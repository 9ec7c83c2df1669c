"""The LLM retriever as a model: the layers above the cached trunk, the pooling, the optional map
into MiniLM's space, and the group scores s_θ(q, d) (docs/method.md §1).

`TopEncoder` is the one module that turns trunk states into h(x): training (stage 1), evaluation
(rerank or full retrieval), the ridge fit and the notebooks' checks all call it, so what is
trained is exactly what is evaluated. It sits below the training code (`stage1/train.py` imports
it, never the reverse).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .encoder import encode_hidden
from .padding import pad_states


class TopEncoder(torch.nn.Module):
    """The trainable part: decoder layers [split, N) + norm + pooling, fed trunk states; with a
    `projection` W ([D, D']), h(x) = normalize(W^T h_pooled(x)) (a fixed map, not trained)."""

    def __init__(self, model, split: int, padding_side: str = "left", pooling: str = "eos",
                 projection: torch.Tensor | None = None):
        super().__init__()
        self.model, self.split, self.padding_side, self.pooling = model, split, padding_side, pooling
        self.projection = projection

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rep = encode_hidden(self.model, hidden, mask, self.split, self.pooling)
        if self.projection is None:
            return rep
        return torch.nn.functional.normalize(rep @ self.projection.to(rep.device), dim=-1)

    def encode(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        return encode_states(self, states, self.padding_side)


def encode_states(encoder, states: Sequence[torch.Tensor], padding_side: str) -> torch.Tensor:
    """Pad and run through `encoder.__call__`, so a DDP wrapper sees the forward (and syncs grads)."""
    hidden, mask = pad_states(states, padding_side)
    return encoder(hidden, mask)


def group_scores(q_reps: torch.Tensor, p_reps: torch.Tensor, tau_r: float) -> torch.Tensor:
    """s_θ(q, d) for each query's own group: q_reps [B, D], p_reps [B*G, D] (grouped) -> [B, G]."""
    return torch.einsum("bd,bgd->bg", q_reps, p_reps.view(q_reps.shape[0], -1, q_reps.shape[1])) / tau_r
