"""Answer log-likelihoods under the causal LM (the LSR scores of docs/method.md §1).

Batched by length (fewer pad tokens on 2 cores); results in input order. Generation lives in
`llm/decode.py`, the one greedy decoder.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..progress import progress
from .encoder import positions_from_mask
from .padding import pad_id, pad_token_rows


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def answer_logliks(model, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                   batch_size: int = 8, max_prompt_tokens: int | None = None) -> torch.Tensor:
    """Mean over answer tokens of log P(answer | prompt), one float per (prompt, answer) pair.

    The answer is tokenized on its own (with a leading space) and appended to the prompt's tokens,
    so every pair scores exactly the answer's tokens. Prompts longer than `max_prompt_tokens` keep
    their end (the question and "Answer:" sit there).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    pairs = []
    for prompt, answer in zip(prompts, answers):
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        a = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        if not a:
            raise ValueError(f"answer {answer!r} has no tokens")
        if max_prompt_tokens and len(p) > max_prompt_tokens:
            p = p[-max_prompt_tokens:]
        pairs.append((p, a))
    pad = pad_id(tokenizer)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, lm_head = inner.model, inner.lm_head
    device = lm_head.weight.device
    out = torch.empty(len(pairs))
    for idx in progress(_length_batches([len(p) + len(a) for p, a in pairs], batch_size), "LSR scores",
                        unit="batch"):
        ids, mask = pad_token_rows([pairs[i][0] + pairs[i][1] for i in idx], pad, "right")
        target = torch.zeros_like(mask, dtype=torch.bool)
        for row, i in enumerate(idx):
            p, a = pairs[i]
            target[row, len(p): len(p) + len(a)] = True
        ids, mask, target = ids.to(device), mask.to(device), target.to(device)
        hidden = decoder(input_ids=ids, attention_mask=mask,
                         position_ids=positions_from_mask(mask)).last_hidden_state
        # The LM head (vocabulary-sized) runs only where an answer token is predicted: most
        # positions are prompt, and the head + softmax would otherwise dominate the cost.
        rows, cols = target[:, 1:].nonzero(as_tuple=True)
        logp = torch.log_softmax(lm_head(hidden[rows, cols]).float(), dim=-1)
        token_logp = logp.gather(-1, ids[rows, cols + 1].unsqueeze(-1)).squeeze(-1)
        sums = torch.zeros(len(idx), device=device).index_add_(0, rows, token_logp)
        counts = torch.zeros(len(idx), device=device).index_add_(0, rows, torch.ones_like(token_logp))
        out[idx] = (sums / counts).cpu()
    return out
