"""Notebook 02's experiments: the trunk-cache equality check and the alignment loss at work."""
from __future__ import annotations

import torch

from .. import losses
from ..config import Profile
from ..data import Benchmark
from ..llm.encoder import encode_full, tokenize
from ..paths import data_dir
from .groups import build_groups, select_training_questions
from .pipeline import RetrieverStage
from .train import Objective, TrainingData, group_scores, train_retriever


@torch.no_grad()
def trunk_cache_check(stage: RetrieverStage, texts: list[str]) -> dict:
    """Max |h_cached − h_plain| over `texts`, for both padding sides, with the current adapter."""
    rc = stage.profile.retriever
    out = {}
    for side in ("left", "right"):
        plain = encode_full(stage.model, tokenize(stage.tokenizer, texts, rc.max_len, side))
        enc = stage.encoder().eval()
        enc.padding_side = side
        cached = enc.encode(stage.states(texts, rc.max_len))
        out[f"max_abs_diff_{side}"] = float((plain - cached).abs().max())
    out["tolerance"] = 1e-5
    out["exact"] = all(v <= 1e-5 for k, v in out.items() if k.startswith("max_abs"))
    return out


@torch.no_grad()
def group_distributions(stage: RetrieverStage, data: TrainingData, tau_r: float, tau_c: float):
    """P_c and P_θ over every training group, with the adapter as it is now: two [n, G] tensors."""
    enc = stage.encoder().eval()
    q = enc.encode(data.query_states[0])
    window = max(data.passage_states)
    flat = [s for group in data.passage_states[window] for s in group]
    p = torch.cat([enc.encode(flat[i:i + 64]) for i in range(0, len(flat), 64)])
    n, g = data.coarse.shape
    scores = group_scores(q, p, tau_r)
    mask = torch.ones(n, g, dtype=torch.bool)
    return (losses.group_log_softmax(data.coarse, mask, tau_c).exp(),
            losses.group_log_softmax(scores, mask).exp(), scores)


def alignment_demo(profile: Profile, bench: Benchmark, stage: RetrieverStage, n_examples: int = 4,
                   log=print) -> dict:
    """Train with L_ctr + α L_align only and compare P_θ with P_c before and after."""
    s1, rc = profile.stage1, profile.retriever
    groups = build_groups(profile, bench, select_training_questions(bench, s1.train_questions, profile.seed), log=log)
    data = stage.training_data(groups, None, None)
    stage.reset_adapter()
    p_c, before, s_before = group_distributions(stage, data, rc.tau_r, s1.tau_c)
    mask = torch.ones_like(p_c, dtype=torch.bool)
    kl_before = float(losses.alignment_loss(data.coarse, s_before, mask, s1.tau_c))
    history = train_retriever(stage.model, stage.split, data, Objective(alpha=s1.alpha), profile,
                              data_dir() / "checkpoints" / profile.name / "retriever" / "alignment-demo",
                              log=log)["history"]
    _, after, s_after = group_distributions(stage, data, rc.tau_r, s1.tau_c)
    kl_after = float(losses.alignment_loss(data.coarse, s_after, mask, s1.tau_c))
    stage.reset_adapter()
    examples = [{"question": g.question, "passage_ids": g.passage_ids, "positive": g.positive,
                 "p_c": p_c[i].tolist(), "p_theta_before": before[i].tolist(),
                 "p_theta_after": after[i].tolist()} for i, g in enumerate(groups[:n_examples])]
    return {"kl_before": kl_before, "kl_after": kl_after, "n_groups": len(groups),
            "group_size": s1.group_size, "examples": examples, "history": history,
            "all": {"p_c": p_c.flatten().tolist(), "p_theta_before": before.flatten().tolist(),
                    "p_theta_after": after.flatten().tolist(),
                    "positive": [p for g in groups for p in g.positive]}}
