"""Notebook 02's experiments: the trunk-cache equality check and the alignment loss at work."""
from __future__ import annotations

from dataclasses import replace

import torch

from .. import losses
from ..config import Profile
from ..data import Benchmark
from ..llm.encoder import POOLINGS, encode_full, tokenize
from ..llm.retriever import group_scores
from ..paths import data_dir
from ..retrieval.harness import evaluate_run, random_ranking
from ..stage1.experiment import validation_set
from ..stage1.groups import build_groups, training_split
from ..stage1.pipeline import RetrieverStage
from ..stage1.train import Objective, TrainingData, train_retriever

DEMO_GROUPS = 128  # the demonstration trains on this many groups only (the real runs: notebook 04)


TRUNK_CACHE_TOLERANCE = 1e-5  # max |h_cached − h_plain| allowed (float32 states)


@torch.no_grad()
def trunk_cache_check(stage: RetrieverStage, texts: list[str]) -> dict:
    """Max |h_cached − h_plain| over `texts`, for both padding sides, with the current adapter and
    the profile's pooling. Raises when the cached path is not exact: nothing downstream may use it."""
    rc = stage.profile.retriever
    out = {"pooling": rc.pooling}
    for side in ("left", "right"):
        plain = encode_full(stage.model, tokenize(stage.tokenizer, texts, rc.max_len, side), rc.pooling)
        enc = stage.encoder().eval()
        enc.padding_side = side
        cached = enc.encode(stage.states(texts, rc.max_len))
        if stage.projection is not None:
            plain = torch.nn.functional.normalize(plain @ stage.projection.to(plain.device), dim=-1)
        out[f"max_abs_diff_{side}"] = float((plain - cached.to(plain.device)).abs().max())
    out["tolerance"] = TRUNK_CACHE_TOLERANCE
    out["exact"] = all(v <= TRUNK_CACHE_TOLERANCE for k, v in out.items() if k.startswith("max_abs"))
    if not out["exact"]:
        raise RuntimeError(f"the trunk-cache path differs from a plain forward: {out}; delete "
                           f"{stage.trunk.dir} and rerun")
    return out


@torch.no_grad()
def group_distributions(stage: RetrieverStage, data: TrainingData, tau_r: float, tau_c: float):
    """P_c and P_θ over every training group, with the adapter as it is now: two [n, G] tensors."""
    enc = stage.encoder().eval()
    q = enc.encode(data.query_states[0])
    window = max(data.passage_states)
    flat = [s for group in data.passage_states[window] for s in group]
    size = stage.profile.retriever.score_batch_size
    p = torch.cat([enc.encode(flat[i:i + size]) for i in range(0, len(flat), size)])
    n, g = data.coarse.shape
    scores = group_scores(q, p, tau_r).cpu()
    mask = torch.ones(n, g, dtype=torch.bool)
    return (losses.group_log_softmax(data.coarse, mask, tau_c).exp(),
            losses.group_log_softmax(scores, mask).exp(), scores)


def alignment_demo(profile: Profile, bench: Benchmark, stage: RetrieverStage, n_examples: int = 4,
                   log=print) -> dict:
    """Train with L_ctr + α L_align only and compare P_θ with P_c before and after."""
    s1, rc = profile.stage1, profile.retriever
    groups = build_groups(profile, bench, training_split(profile, bench)[0], log=log)[:DEMO_GROUPS]
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


@torch.no_grad()
def pooling_floor(profile: Profile, bench: Benchmark, stage: RetrieverStage, log=print) -> dict:
    """Zero-shot acc@k of each pooling (untrained model) on the validation questions (held-out
    training questions, never the evaluation samples), reranking MiniLM's top `rerank_depth`,
    beside the exact random rerank of the same candidates and MiniLM itself."""
    cfg = profile.retrieval
    val, cands = validation_set(profile, bench, training_split(profile, bench)[1], log=log)
    depth = min(profile.retriever.rerank_depth, len(stage.passages))
    ks = [k for k in (5, 20) if k <= depth]
    text = {pid: p["text"] for pid, p in stage.passages.items()}
    rows = {"random": random_ranking(cands, val, text, ks, cfg.bootstrap_resamples, profile.seed)["metrics"],
            "minilm": evaluate_run(cands, val, text, ks, cfg.bootstrap_resamples, profile.seed)["metrics"]}
    stage.reset_adapter()
    try:
        for pooling in POOLINGS:
            stage.profile = replace(profile, retriever=replace(profile.retriever, pooling=pooling))
            # The frozen model (adapter off, as notebook 04 scores llm-zero): its passage reps persist,
            # and 04's llm-zero evaluation under the same pooling reads the ones its candidates share.
            run = stage.rerank(val, cands, depth, adapter=False, persist=True)
            rows[f"llm-zero ({pooling})"] = evaluate_run(run, val, text, ks, cfg.bootstrap_resamples,
                                                         profile.seed)["metrics"]
    finally:
        stage.profile = profile
    return {"n": len(val), "depth": depth, "chosen": profile.retriever.pooling, "rows": rows}
