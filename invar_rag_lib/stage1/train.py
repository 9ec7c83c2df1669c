"""Stage 1's batch loss and its training entry point (docs/method.md §1).

`batch_loss` is L = L_ctr + α L_align + λ L_inv (+ μ L_lsr) on one micro-batch; `train_retriever`
hands it to the one training loop (`training.train_adapter`: accelerate, accumulation, checkpoints
with exact resume). In-batch negatives are the queries' groups within one micro-batch, so one
process with grad_accum = W computes exactly what W processes compute.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .. import losses
from ..config import Profile
from ..llm.encoder import RETRIEVER_ADAPTER
from ..llm.retriever import TopEncoder, encode_states, group_scores
from ..training import Schedule, epoch_order, train_adapter
from .environments import Environment
from .variants import TRAINING_FIELDS, Objective


@dataclass
class TrainingData:
    """Everything a step needs, precomputed: trunk states, coarse scores, LSR targets."""
    query_states: dict[int, list[torch.Tensor]]  # query variant -> one state per group
    passage_states: dict[int, list[list[torch.Tensor]]]  # window -> G states per group
    coarse: torch.Tensor  # [n, G] MiniLM cosine scores
    lsr_logq: torch.Tensor | None  # [E, n, G] log Q_e; None when no objective needs LSR
    positive: torch.Tensor  # [n, G] bool
    envs: list[Environment] = field(default_factory=list)

    def __len__(self) -> int:
        return self.coarse.shape[0]


def _padding_side(encoder) -> str:
    return getattr(encoder, "module", encoder).padding_side  # a DDP wrapper keeps the module inside


def _env_scores(encoder, data: TrainingData, idx: list[int], envs, tau_r: float):
    """s_θ(q, d) over each query's own group in every environment of `envs`: [E, B, G]."""
    padding_side = _padding_side(encoder)
    q_reps, p_reps = {}, {}
    for env in envs:
        if env.query_variant not in q_reps:
            q_reps[env.query_variant] = encode_states(
                encoder, [data.query_states[env.query_variant][i] for i in idx], padding_side)
        if env.window not in p_reps:
            flat = [s for i in idx for s in data.passage_states[env.window][i]]
            p_reps[env.window] = encode_states(encoder, flat, padding_side)
    scores = torch.stack([group_scores(q_reps[e.query_variant], p_reps[e.window], tau_r) for e in envs])
    return scores, q_reps[envs[0].query_variant], p_reps[envs[0].window]


def batch_loss(encoder, data: TrainingData, idx: Sequence[int], objective: Objective,
               tau_r: float, tau_c: float,
               env_data: TrainingData | None = None, env_idx: Sequence[int] | None = None
               ) -> tuple[torch.Tensor, dict]:
    """L = L_ctr + α L_align (on `data[idx]`) + λ L_inv + μ L_lsr (on `env_data[env_idx]`, the
    questions with environments and LSR scores; by default `data[idx]` itself)."""
    idx = list(idx)
    if env_data is None:
        env_data, env_idx = data, idx
    env_idx = list(env_idx if env_idx is not None else idx)
    if (objective.lsr or objective.lam) and env_data.lsr_logq is None:
        raise ValueError("this objective needs LSR targets: build TrainingData with LSR scores")
    scores, q_rep, p_rep = _env_scores(encoder, data, idx, data.envs[:1], tau_r)
    device = scores.device
    n_groups = len(data.coarse[0])
    positive = torch.zeros(len(idx), len(idx) * n_groups, dtype=torch.bool, device=device)
    for b, i in enumerate(idx):
        positive[b, b * n_groups:(b + 1) * n_groups] = data.positive[i].to(device)
    parts = {"ctr": losses.contrastive_loss(q_rep, p_rep, positive, tau_r)}
    if objective.alpha:
        mask = torch.ones(len(idx), n_groups, dtype=torch.bool, device=device)
        parts["align"] = losses.alignment_loss(data.coarse[idx].to(device), scores[0], mask, tau_c)
    diag = {}
    if objective.lsr or objective.lam:
        envs = env_data.envs if objective.needs_environments else env_data.envs[:1]
        env_scores, _, _ = _env_scores(encoder, env_data, env_idx, envs, tau_r)
        mask = torch.ones(len(env_idx), env_scores.shape[-1], dtype=torch.bool, device=device)
        logq = env_data.lsr_logq[:, env_idx].to(device)
        if objective.lsr:
            parts["lsr"] = losses.kl_to_student(logq[0], losses.group_log_softmax(env_scores[0], mask), mask)
        if objective.lam:
            parts["inv"], diag = losses.invariance_loss(env_scores, logq, mask, objective.gamma)
    total = (objective.ctr * parts["ctr"] + objective.alpha * parts.get("align", 0.0) + objective.lam * parts.get("inv", 0.0)
             + objective.lsr * parts.get("lsr", 0.0))
    logs = {k: float(v.detach()) for k, v in parts.items()}
    logs["loss"] = float(total.detach())
    if diag:
        logs["inv_share"] = float(diag.get("inv_share", float("nan")))
    return total, logs


def env_batch(n: int, size: int, seed: int, micro_batch: int) -> list[int]:
    """Indices of the environment questions for global micro-batch number `micro_batch`: a
    seeded pass over the `n` questions, reshuffled each time it is used up (deterministic per
    step, so a resumed run draws what an uninterrupted one draws)."""
    per_pass = max(1, n // size)
    epoch, j = divmod(micro_batch, per_pass)
    order = epoch_order(n, seed + 7919, epoch)
    return order[j * size:(j + 1) * size]


def train_retriever(backbone, data: TrainingData, objective: Objective, profile: Profile,
                    out_dir: str | Path, resume: bool = False, log=print, stop_after: int | None = None,
                    data_key: str = "", reuse: bool = False, env_data: TrainingData | None = None,
                    projection: torch.Tensor | None = None) -> dict:
    """Train the `retriever` adapter of `backbone` (from the weights now in its slot) on `data` with
    `objective`, through the one loop `training.train_adapter`; returns the history.

    With `reuse`, a finished checkpoint in `out_dir` made with the same config and `data_key` is
    loaded instead of training again (notebooks 05 and 07 reuse notebook 04's variants this way).
    """
    s1, rc = profile.stage1, profile.retriever
    if env_data is not None and not objective.needs_lsr:
        env_data = None  # this objective has no environment term
    encoder = TopEncoder(backbone.model, backbone.split(RETRIEVER_ADAPTER), rc.padding_side, rc.pooling, projection)
    config = {"objective": asdict(objective), "stage1": asdict(s1), "seed": profile.seed,
              "retriever": {k: v for k, v in asdict(rc).items() if k in TRAINING_FIELDS}, "data_key": data_key,
              "projection": None if projection is None else hashlib.sha256(projection.cpu().numpy().tobytes()).hexdigest()[:16]}

    def loss_fn(module, idx, micro):
        env_idx = None if env_data is None else env_batch(len(env_data), s1.env_batch_size, profile.seed, micro)
        return batch_loss(module, data, idx, objective, rc.tau_r, s1.tau_c, env_data, env_idx)

    schedule = Schedule(s1.lr, s1.weight_decay, s1.warmup_steps, s1.max_grad_norm, s1.batch_size, s1.grad_accum,
                        s1.epochs, s1.checkpoint_every, rc.gradient_checkpointing)
    backbone.mark_changed(RETRIEVER_ADAPTER)
    with backbone.adapter(RETRIEVER_ADAPTER):
        return train_adapter(encoder, backbone.model, RETRIEVER_ADAPTER, len(data), loss_fn, schedule, profile.seed,
                             out_dir, config, what="training groups", resume=resume, reuse=reuse,
                             stop_after=stop_after, desc="training retriever", log=log)
