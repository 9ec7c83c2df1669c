"""Notebook 03's analysis: LSR scores by environment, the invariant/variant split, L_inv on a batch."""
from __future__ import annotations

import torch

from .. import losses
from ..config import Profile
from ..llm.backbone import RETRIEVER
from ..llm.retriever import encode_states, group_scores


def summarize(profile: Profile, prepared, n_examples: int = 3) -> dict:
    data, envs, groups = prepared.data, prepared.envs, prepared.groups
    q = data.lsr_logq.exp()  # [E, n, G]
    n, g = data.coarse.shape
    mask = torch.ones(n, g, dtype=torch.bool)
    inv = losses.invariant_mask(data.lsr_logq, mask)
    pos = data.positive
    by_env, dist = {}, {}
    for e, env in enumerate(envs):
        ll = prepared.lsr[e]
        by_env[env.name] = {
            "mean loglik, positives": float(ll[pos].mean()), "mean loglik, negatives": float(ll[~pos].mean()),
            "mean Q of positives": float(q[e][pos].mean()),
            "share useful (Q > 1/|G|)": float((q[e] > 1.0 / g).float().mean()),
            "positive ranked first by Q": float((q[e].argmax(1) == pos.float().argmax(1)).float().mean())}
        dist[env.name] = {"positive": q[e][pos].tolist(), "negative": q[e][~pos].tolist()}
    examples = []
    for i, grp in enumerate(groups[:n_examples]):
        table = [{"passage": pid, "positive": bool(pos[i, j]), **{env.name: round(float(q[e, i, j]), 3)
                  for e, env in enumerate(envs)}, "invariant": bool(inv[i, j])}
                 for j, pid in enumerate(grp.passage_ids)]
        examples.append({"question": grp.question, "answer": grp.target_answer, "table": table})
    return {"environments": [env.__dict__ for env in envs], "n_groups": n, "group_size": g,
            "by_environment": by_env, "distributions": dist,
            "invariant_share": float(inv.float().mean()),
            "invariant_positive_share": float(inv[pos].float().mean()),
            "invariant_negative_share": float(inv[~pos].float().mean()),
            "examples": examples, "rewrite_sources": _sources(prepared),
            "invariance_loss_on_batch": loss_on_batch(profile, prepared)}


def _sources(prepared) -> dict:
    counts: dict[str, int] = {}
    for grp in prepared.groups:
        for r in prepared.rewrites[grp.question]:
            counts[r["source"]] = counts.get(r["source"], 0) + 1
    return counts


@torch.no_grad()
def loss_on_batch(profile: Profile, prepared) -> dict:
    """L_inv and its parts for the first batch, with the adapter's initial (no-op) weights."""
    data = prepared.data
    start = prepared.retriever(weights=prepared.backbone.initial[RETRIEVER], name="initial adapter")
    enc = start.encoder().eval()
    idx = list(range(min(profile.stage1.batch_size, len(data))))
    g = data.coarse.shape[1]
    scores = []
    with start.active():
        for env in data.envs:
            qr = encode_states(enc, [data.query_states[env.query_variant][i] for i in idx], enc.padding_side)
            pr = encode_states(enc, [s for i in idx for s in data.passage_states[env.window][i]], enc.padding_side)
            scores.append(group_scores(qr, pr, start.tau_r).cpu())
    mask = torch.ones(len(idx), g, dtype=torch.bool)
    loss, diag = losses.invariance_loss(torch.stack(scores), data.lsr_logq[:, idx], mask, profile.stage1.gamma)
    return {"L_inv": float(loss), "gamma": profile.stage1.gamma,
            **{k: (v if isinstance(v, (int, float, list)) else float(v)) for k, v in diag.items()},
            "environments": [e.name for e in data.envs]}
