"""LSR scores (docs/method.md §1, as in REPLUG): how much a passage helps the *base* LM say the answer.

ℓ_e(d) = mean over answer tokens of log P_M(y | prompt_e(d, q)), with the adapter disabled, for
every training group, environment and group member; computed once and cached on disk (keyed by
the model fingerprint, the exact prompt and the answer).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import torch

from ..integrity import load_or_none, read_sealed_json, write_sealed_json
from ..io_utils import sha256_text
from .environments import Environment
from .groups import Group


def window_text(tokenizer, title: str, text: str, window: int) -> str:
    """The first `window - 1` tokens of "{title} {text}" (h(d) spends its last token on the EOS)."""
    ids = tokenizer(f"{title} {text}".strip(), add_special_tokens=False)["input_ids"][: window - 1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def query_in(env: Environment, question: str, rewrites: dict[str, list[dict]]) -> str:
    return question if env.query_variant == 0 else rewrites[question][env.query_variant - 1]["text"]


def lsr_prompts(tokenizer, groups: Sequence[Group], envs: Sequence[Environment],
                rewrites: dict[str, list[dict]], passages: dict[str, dict], template: str) -> list[str]:
    """Prompts in [E, n_groups, G] order, flattened."""
    windows = {}
    prompts = []
    for env in envs:
        for g in groups:
            q = query_in(env, g.question, rewrites)
            for pid in g.passage_ids:
                if (pid, env.window) not in windows:
                    p = passages[pid]
                    windows[pid, env.window] = window_text(tokenizer, p["title"], p["text"], env.window)
                prompts.append(template.format(passage=windows[pid, env.window], question=q))
    return prompts


def compute_lsr(model, tokenizer, groups: Sequence[Group], envs: Sequence[Environment],
                rewrites: dict[str, list[dict]], passages: dict[str, dict], template: str,
                cache_path: str | Path, fingerprint: str, batch_size: int = 8,
                log=print) -> torch.Tensor:
    """ℓ_e(d) as a float32 tensor [E, n_groups, G]."""
    from ..llm.scoring import answer_logliks

    prompts = lsr_prompts(tokenizer, groups, envs, rewrites, passages, template)
    answers = [g.target_answer for _ in envs for g in groups for _ in g.passage_ids]
    keys = [sha256_text(fingerprint, p, a)[:32] for p, a in zip(prompts, answers)]
    cache_path = Path(cache_path)
    cache = load_or_none(cache_path, read_sealed_json, "LSR", log) or {}
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in cache:
            first.setdefault(k, i)
    todo = list(first.values())
    if todo:
        log(f"LSR: scoring {len(todo)} (prompt, answer) pairs with the base model "
            f"({len(set(keys)) - len(todo)} cached)")
        disable = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with disable:
            scores = answer_logliks(model, tokenizer, [prompts[i] for i in todo],
                                    [answers[i] for i in todo], batch_size=batch_size)
        cache.update({keys[i]: float(s) for i, s in zip(todo, scores)})
        write_sealed_json(cache_path, cache)
    group_size = len(groups[0].passage_ids)
    values = torch.tensor([cache[k] for k in keys], dtype=torch.float32)
    return values.view(len(envs), len(groups), group_size)
