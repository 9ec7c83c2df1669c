"""The training and validation questions both stages draw from (held-out training questions are the
validation split of every sweep; no evaluation question or near-duplicate is in either: data.py).

Stage 1 trains the retriever on `training_split`'s first part and selects its recipe on the second;
stage 2 trains the generator on questions of the same first part (`balanced_head`) and validates on
the same held-out second part, so neither stage is tuned on questions it trained on.
"""
from __future__ import annotations

import random

from .config import Profile
from .data import TRAIN_SOURCES, Benchmark


def select_training_questions(bench: Benchmark, n_total: int, seed: int,
                              sources: tuple[str, ...] = tuple(TRAIN_SOURCES), skip: int = 0) -> list[dict]:
    """`n_total` questions drawn evenly (seeded) from `sources`, after the first `skip` per source
    of the same shuffle (so two draws with different `skip` ranges are disjoint)."""
    per_source = -(-n_total // len(sources))
    chosen = []
    for source in sources:
        records = bench.train_records(source)
        random.Random(f"{seed}:stage1:{source}").shuffle(records)
        chosen += records[skip:skip + per_source]
    return chosen[:n_total] if n_total < len(chosen) else chosen


def training_split(profile: Profile, bench: Benchmark) -> tuple[list[dict], list[dict]]:
    """(training questions, validation questions): disjoint draws from `stage1.train_sources`; the
    validation draw takes the questions after the training draw in each source's seeded order."""
    s1 = profile.stage1
    train = select_training_questions(bench, s1.train_questions, profile.seed, s1.train_sources)
    skip = -(-s1.train_questions // len(s1.train_sources))
    val = select_training_questions(bench, s1.val_questions, profile.seed, s1.train_sources, skip=skip) \
        if s1.val_questions else []
    return train, val


def balanced_head(questions: list[dict], n: int, exclude: set[str] = frozenset()) -> list[dict]:
    """The first `n` of `questions` (drawn per source, in order) taking the sources in turn, so
    any `n` keeps the sources balanced; questions whose id is in `exclude` are skipped."""
    by_source: dict[str, list[dict]] = {}
    for q in questions:
        if q["id"] not in exclude:
            by_source.setdefault(q["id"].split("/", 1)[0], []).append(q)
    out, lists = [], list(by_source.values())
    for i in range(max((len(v) for v in lists), default=0)):
        for v in lists:
            if i < len(v) and len(out) < n:
                out.append(v[i])
    return out
