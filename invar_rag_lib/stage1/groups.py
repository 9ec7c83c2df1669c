"""Training groups G(q) (docs/method.md §1): positives plus MiniLM hard negatives, with coarse scores.

For each training question, `K(q)` = MiniLM's top `coarse_candidates` passages. Positives are gold
passages (NQ oracle, WikiQA label-1 sentences) and passages among MiniLM's top `positive_depth` that
contain an answer (DPR has_answer; deeper matches are often coincidental); hard negatives are the
highest-ranked passages of K(q) without an answer. The coarse
score s_c(q, d) = c(q)·c(d) of every group member is kept for the alignment loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..retrieval.coarse import CoarseStage
from ..config import Profile
from ..data import Benchmark
from ..metrics import dpr_tokens, has_answer_in_tokens


@dataclass
class Group:
    qid: str
    question: str
    answers: list[str]
    passage_ids: list[str]
    positive: list[bool]
    coarse_scores: list[float]
    target_answer: str  # the y of the LSR score: a gold answer that a positive passage contains


def build_groups(profile: Profile, bench: Benchmark, questions: list[dict], log=print) -> list[Group]:
    s1 = profile.stage1
    coarse = CoarseStage(profile, bench, log=log)
    text, corpus_emb = coarse.text, coarse.corpus_emb
    row_of = {pid: i for i, pid in enumerate(coarse.ids)}
    q_emb = coarse.encode_queries([q["question"] for q in questions])
    ranked, _ = coarse.dense.search_embeddings(q_emb, s1.coarse_candidates)

    tokens_of: dict[str, list[str]] = {}  # each passage is tokenised once, not once per question

    def has_answer(pid: str, answers: list[str]) -> bool:
        if pid not in tokens_of:
            tokens_of[pid] = dpr_tokens(text[pid])
        return has_answer_in_tokens(tokens_of[pid], answers)

    groups, skipped = [], 0
    for q, qe, cands in zip(questions, q_emb, ranked):
        gold = [p for p in q["metadata"]["gold_ids"] if p in row_of]
        answer_hits = [p for p in cands[: s1.positive_depth] if has_answer(p, q["golden_answers"])]
        positives = list(dict.fromkeys(gold + answer_hits))[: s1.max_positives]
        negatives = [p for p in cands if p not in positives and p not in gold
                     and not has_answer(p, q["golden_answers"])]
        negatives = negatives[: s1.group_size - len(positives)]
        if not positives or len(positives) + len(negatives) < s1.group_size:
            skipped += 1
            continue
        members = positives + negatives
        scores = corpus_emb[[row_of[p] for p in members]] @ qe
        found = [a for a in q["golden_answers"] if any(has_answer(p, [a]) for p in positives)]
        groups.append(Group(q["id"], q["question"], q["golden_answers"], members,
                            [True] * len(positives) + [False] * len(negatives),
                            [float(s) for s in np.asarray(scores)],
                            (found or q["golden_answers"])[0]))
    log(f"{len(groups)} training groups of {s1.group_size}; {skipped} questions skipped "
        "(no positive, or too few negatives)")
    return groups
