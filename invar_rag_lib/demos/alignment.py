"""Notebook 02's experiments: the trunk-cache equality check and the alignment loss at work."""
from __future__ import annotations

import torch

from .. import losses
from ..config import Profile
from ..data import Benchmark
from ..llm.backbone import RETRIEVER, Backbone
from ..llm.encoder import POOLINGS, encode_full, tokenize
from ..llm.retriever import LLMRetriever, group_scores
from ..paths import data_dir
from ..retrieval.harness import evaluate_run, random_ranking
from ..stage1.evaluate import validation_set
from ..splits import training_split
from ..stage1.groups import build_groups
from ..stage1.environments import environments
from ..stage1.prepare import training_data
from ..stage1.train import TrainingData, train_retriever
from ..stage1.variants import Objective

DEMO_GROUPS = 128  # the demonstration trains on this many groups only (the real runs: notebook 04)


TRUNK_CACHE_TOLERANCE = 1e-5  # max |h_cached − h_plain| allowed (float32 states)


@torch.no_grad()
def trunk_cache_check(retriever: LLMRetriever, texts: list[str]) -> dict:
    """Max |h_cached − h_plain| over `texts`, for both padding sides, for `retriever` (its adapter
    weights and pooling). Raises when the cached path is not exact: nothing downstream may use it."""
    backbone = retriever.backbone
    out = {"pooling": retriever.pooling}
    with retriever.active():
        for side in ("left", "right"):
            plain = encode_full(backbone.model, tokenize(backbone.tokenizer, texts, retriever.max_len, side),
                                retriever.pooling)
            enc = retriever.replace(padding_side=side).encoder().eval()
            cached = enc.encode(backbone.states(texts, retriever.max_len))
            if retriever.projection is not None:
                plain = torch.nn.functional.normalize(plain @ retriever.projection.to(plain.device), dim=-1)
            out[f"max_abs_diff_{side}"] = float((plain - cached.to(plain.device)).abs().max())
    out["tolerance"] = TRUNK_CACHE_TOLERANCE
    out["exact"] = all(v <= TRUNK_CACHE_TOLERANCE for k, v in out.items() if k.startswith("max_abs"))
    if not out["exact"]:
        raise RuntimeError(f"the trunk-cache path differs from a plain forward: {out}; delete "
                           f"{backbone.trunk(retriever.split).dir} and rerun")
    return out


@torch.no_grad()
def group_distributions(retriever: LLMRetriever, data: TrainingData, tau_c: float):
    """P_c and P_θ over every training group under `retriever`: two [n, G] tensors, and s_θ."""
    enc = retriever.encoder().eval()
    with retriever.active():
        q = enc.encode(data.query_states[0])
        window = max(data.passage_states)
        flat = [s for group in data.passage_states[window] for s in group]
        size = retriever.score_batch_size
        p = torch.cat([enc.encode(flat[i:i + size]) for i in range(0, len(flat), size)])
    n, g = data.coarse.shape
    scores = group_scores(q, p, retriever.tau_r).cpu()
    mask = torch.ones(n, g, dtype=torch.bool)
    return (losses.group_log_softmax(data.coarse, mask, tau_c).exp(),
            losses.group_log_softmax(scores, mask).exp(), scores)


def alignment_demo(profile: Profile, bench: Benchmark, backbone: Backbone, n_examples: int = 4,
                   log=print) -> dict:
    """Train with L_ctr + α L_align only (no ridge map) and compare P_θ with P_c before and after."""
    s1 = profile.stage1
    passages = bench.passages()
    groups = build_groups(profile, bench, training_split(profile, bench)[0], log=log)[:DEMO_GROUPS]
    data = training_data(backbone, profile, environments(profile), groups, passages, None, None)
    backbone.reset_adapter(RETRIEVER)
    start = LLMRetriever.from_profile(backbone, profile, passages, weights=backbone.initial[RETRIEVER],
                                      name="alignment-demo (start)")
    p_c, before, s_before = group_distributions(start, data, s1.tau_c)
    mask = torch.ones_like(p_c, dtype=torch.bool)
    kl_before = float(losses.alignment_loss(data.coarse, s_before, mask, s1.tau_c))
    history = train_retriever(backbone, data, Objective(alpha=s1.alpha), profile,
                              data_dir() / "checkpoints" / profile.name / "retriever" / "alignment-demo",
                              log=log)["history"]
    trained = start.replace(weights=backbone.adapter_state(RETRIEVER), name="alignment-demo")
    _, after, s_after = group_distributions(trained, data, s1.tau_c)
    kl_after = float(losses.alignment_loss(data.coarse, s_after, mask, s1.tau_c))
    examples = [{"question": g.question, "passage_ids": g.passage_ids, "positive": g.positive,
                 "p_c": p_c[i].tolist(), "p_theta_before": before[i].tolist(),
                 "p_theta_after": after[i].tolist()} for i, g in enumerate(groups[:n_examples])]
    return {"kl_before": kl_before, "kl_after": kl_after, "n_groups": len(groups),
            "group_size": s1.group_size, "examples": examples, "history": history,
            "all": {"p_c": p_c.flatten().tolist(), "p_theta_before": before.flatten().tolist(),
                    "p_theta_after": after.flatten().tolist(),
                    "positive": [p for g in groups for p in g.positive]}}


@torch.no_grad()
def pooling_floor(profile: Profile, bench: Benchmark, backbone: Backbone, log=print) -> dict:
    """Zero-shot acc@k of each pooling (untrained model) on the validation questions (held-out
    training questions, never the evaluation samples), reranking MiniLM's top `rerank_depth`,
    beside the exact random rerank of the same candidates and MiniLM itself."""
    cfg = profile.retrieval
    val, cands = validation_set(profile, bench, training_split(profile, bench)[1], log=log)
    passages = bench.passages()
    depth = min(profile.retriever.rerank_depth, len(passages))
    ks = [k for k in (5, 20) if k <= depth]
    text = {pid: p["text"] for pid, p in passages.items()}
    rows = {"random": random_ranking(cands, val, text, ks, cfg.bootstrap_resamples, profile.seed)["metrics"],
            "minilm": evaluate_run(cands, val, text, ks, cfg.bootstrap_resamples, profile.seed)["metrics"]}
    for pooling in POOLINGS:
        # The frozen model (adapter off, as notebook 04 scores llm-zero): its passage reps persist,
        # and 04's llm-zero evaluation under the same pooling reads the ones its candidates share.
        zero = LLMRetriever.from_profile(backbone, profile, passages, pooling=pooling)
        run = zero.rerank(val, cands, depth, persist=True)
        rows[f"llm-zero ({pooling})"] = evaluate_run(run, val, text, ks, cfg.bootstrap_resamples,
                                                     profile.seed)["metrics"]
    return {"n": len(val), "depth": depth, "chosen": profile.retriever.pooling, "rows": rows}
