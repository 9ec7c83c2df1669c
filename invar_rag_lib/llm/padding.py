"""The one way to pad: token-id rows and hidden-state rows, left or right, with their mask.

Position ids always come from the mask (`encoder.positions_from_mask`), so which side the padding
is on never changes a real token's state; pad values are masked out everywhere.
"""
from __future__ import annotations

from typing import Sequence

import torch

SIDES = ("left", "right")


def pad_id(tokenizer) -> int:
    """The tokenizer's pad token, or EOS when it has none (`load_model` always sets one)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _slot(width: int, length: int, side: str) -> slice:
    if side not in SIDES:
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    return slice(width - length, width) if side == "left" else slice(0, length)


def pad_token_rows(rows: Sequence[Sequence[int]], pad: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] input ids (filled with `pad`) and the [B, T] attention mask of token-id rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        sl = _slot(width, len(row), side)
        ids[i, sl] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def pad_states(states: Sequence[torch.Tensor], side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, D] hidden states (zeros where padded) and the [B, T] mask of unpadded [t_i, D] rows."""
    width = max(s.shape[0] for s in states)
    hidden = torch.zeros(len(states), width, states[0].shape[1], dtype=states[0].dtype)
    mask = torch.zeros(len(states), width, dtype=torch.long)
    for i, s in enumerate(states):
        sl = _slot(width, len(s), side)
        hidden[i, sl] = s
        mask[i, sl] = 1
    return hidden, mask
