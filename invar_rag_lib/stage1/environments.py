"""Environments e ∈ E (docs/method.md §1): the interventions that create variance.

E = the original question at the full window, each of the R rewrites at the full window, and the
original question at each extra context-window size w ∈ stage1.windows. A window is the number of
passage tokens the LLM reads, both inside the LSR prompt and inside h(d).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Profile


@dataclass(frozen=True)
class Environment:
    name: str
    query_variant: int  # 0 = the original question, r = the r-th rewrite
    window: int  # passage tokens (EOS included for h(d))


def environments(profile: Profile) -> list[Environment]:
    full = profile.retriever.max_len
    envs = [Environment("original", 0, full)]
    envs += [Environment(f"rewrite-{r}", r, full) for r in range(1, profile.stage1.n_rewrites + 1)]
    envs += [Environment(f"window-{w}", 0, w) for w in profile.stage1.windows]
    return envs
