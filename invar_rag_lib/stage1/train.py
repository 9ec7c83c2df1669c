"""Training loop for the retriever adapter, written with `accelerate` (nanoGPT-style, top to bottom).

One CPU process, several GPUs or several machines run the same code. The global batch is
`batch_size × processes × grad_accum` queries; in-batch negatives are the queries' groups within
one micro-batch, so one process with grad_accum = W computes exactly what W processes compute.
The learning rate is set by the plain function `get_lr` at every optimizer step (no scheduler
object whose stepping would depend on the number of processes).

A checkpoint (every `checkpoint_every` steps and at the end) is a directory: the adapter weights
(safetensors), the optimizer state, the RNG states, the step and the config. `resume=True`
continues from the latest one to the same result as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import losses
from ..config import Profile
from ..io_utils import jsonable
from ..paths import shown
from ..progress import step_bar
from ..llm.device import compute_device
from ..llm.encoder import RETRIEVER_ADAPTER
from ..llm.retriever import TopEncoder, encode_states, group_scores
from ..training import (checkpoint_path, clean_leftovers, epoch_order, finished_checkpoint, get_lr,
                        load_adapter, load_checkpoint, micro_batch, save_checkpoint)
from .environments import Environment


# The `retriever.*` fields that change what training produces: a checkpoint is reused or resumed
# only under the same values (evaluation-only fields such as rerank_depth are left out).
TRAINING_FIELDS = ("pooling", "tau_r", "lora_layers", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                   "max_len", "query_max_len", "query_template", "passage_template")
# (retriever.trunk_quantization is in the data key instead: it changes the trunk's fingerprint.)


@dataclass(frozen=True)
class Objective:
    """Weights of the loss terms: L = c L_ctr + α L_align + λ L_inv + μ KL(Q_orig ‖ P_θ) (c = 1 in
    every variant of docs/method.md; c = 0 only in the sweep's "alignment alone" point)."""
    ctr: float = 1.0
    alpha: float = 0.0
    lam: float = 0.0
    lsr: float = 0.0
    gamma: float = 1.0

    @property
    def needs_environments(self) -> bool:
        return self.lam > 0


def variant_objectives(profile: Profile) -> dict[str, Objective]:
    """The trained retriever variants of docs/method.md §1 (ASCII names; tables print − for -)."""
    s = profile.stage1
    return {
        "llm-ctr": Objective(),
        "llm-lsr": Objective(lsr=1.0),
        "invar": Objective(alpha=s.alpha, lam=s.lam, gamma=s.gamma),
        "invar-align": Objective(alpha=0.0, lam=s.lam, gamma=s.gamma),
        "invar-inv": Objective(alpha=s.alpha, lam=0.0, gamma=s.gamma),
    }


# The component ablations: notebook 07 trains and scores them (with the λ and R grid); notebook 04
# trains the method and its baselines, so no variant is evaluated twice.
ABLATIONS = ("invar-align", "invar-inv")


def main_objectives(profile: Profile) -> dict[str, Objective]:
    """Notebook 04's trained variants: `variant_objectives` without the component ablations."""
    return {k: v for k, v in variant_objectives(profile).items() if k not in ABLATIONS}


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


def _env_scores(encoder, data: TrainingData, idx: list[int], envs, tau_r: float, padding_side: str):
    """s_θ(q, d) over each query's own group in every environment of `envs`: [E, B, G]."""
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
               tau_r: float, tau_c: float, padding_side: str = "left",
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
    scores, q_rep, p_rep = _env_scores(encoder, data, idx, data.envs[:1], tau_r, padding_side)
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
        env_scores, _, _ = _env_scores(encoder, env_data, env_idx, envs, tau_r, padding_side)
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


def train_retriever(model, split: int, data: TrainingData, objective: Objective, profile: Profile,
                    out_dir: str | Path, resume: bool = False, log=print, stop_after: int | None = None,
                    data_key: str = "", reuse: bool = False, env_data: TrainingData | None = None,
                    projection: torch.Tensor | None = None) -> dict:
    """Train the `retriever` adapter of `model` (peft, already added) on `data`; returns history.

    With `reuse`, a finished checkpoint in `out_dir` made with the same config and `data_key` is
    loaded instead of training again (notebooks 05 and 07 reuse notebook 04's variants this way).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    s1, rc = profile.stage1, profile.retriever
    out_dir = Path(out_dir)
    set_seed(profile.seed)
    # Gradient accumulation is written out below (loss / grad_accum, no all-reduce until the last
    # micro-batch, one optimizer step), so accelerate is not asked to accumulate.
    accelerator = Accelerator(cpu=compute_device().type == "cpu")
    encoder = TopEncoder(model, split, rc.padding_side, rc.pooling, projection)
    if env_data is not None and not (objective.lsr or objective.lam):
        env_data = None  # this objective has no environment term
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s1.lr, weight_decay=s1.weight_decay)
    encoder, optimizer = accelerator.prepare(encoder, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    micro = s1.batch_size
    per_epoch = len(data) // (micro * world * s1.grad_accum)  # whole global batches only
    total_steps = per_epoch * s1.epochs
    if total_steps == 0:
        raise ValueError(f"{len(data)} training groups are fewer than one global batch "
                         f"({micro} x {world} processes x {s1.grad_accum} accumulation)")
    config = {"objective": asdict(objective), "stage1": asdict(s1), "seed": profile.seed,
              "retriever": {k: v for k, v in asdict(rc).items() if k in TRAINING_FIELDS},
              "processes": world, "total_steps": total_steps, "data_key": data_key,
              "projection": None if projection is None else hashlib.sha256(projection.cpu().numpy().tobytes()).hexdigest()[:16]}
    config = jsonable(config)
    if reuse and (done := finished_checkpoint(out_dir, config)):
        load_adapter(accelerator.unwrap_model(encoder).model, out_dir, RETRIEVER_ADAPTER)
        log(f"reused the finished checkpoint in {shown(out_dir)} (same config and data)")
        return {"history": done["history"], "config": config, "reused": True}
    step, history = 0, []
    latest = checkpoint_path(out_dir)
    clean_leftovers(out_dir, log)
    if resume and (latest / "state.json").exists():
        step, history = load_checkpoint(latest, accelerator.unwrap_model(encoder).model, optimizer,
                                        RETRIEVER_ADAPTER, config)
        log(f"resumed from {latest.name} at step {step}")
    encoder.train()
    bar = step_bar(total_steps, step, "training retriever", show=accelerator.is_main_process)
    while step < total_steps:
        epoch, in_epoch = divmod(step, per_epoch)
        order = epoch_order(len(data), profile.seed, epoch)
        logs_acc: list[dict] = []
        for a in range(s1.grad_accum):
            env_idx = None if env_data is None else env_batch(
                len(env_data), s1.env_batch_size, profile.seed, (step * s1.grad_accum + a) * world + rank)
            last = a == s1.grad_accum - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(encoder):
                loss, logs = batch_loss(encoder, data, micro_batch(order, in_epoch, micro, world, rank, a, s1.grad_accum),
                                        objective, rc.tau_r,
                                        s1.tau_c, rc.padding_side, env_data, env_idx)
                accelerator.backward(loss / s1.grad_accum)  # gradients sum to the global-batch mean
            logs_acc.append(logs)
        accelerator.clip_grad_norm_(params, s1.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, s1.lr, s1.warmup_steps, total_steps)
        optimizer.step()  # one step per global batch of batch_size x processes x grad_accum queries
        optimizer.zero_grad()
        local = torch.tensor([float(np.mean([l[k] for l in logs_acc])) for k in logs_acc[0]])
        means = accelerator.reduce(local.to(accelerator.device), reduction="mean").cpu()
        record = {"step": step + 1, "lr": get_lr(step, s1.lr, s1.warmup_steps, total_steps),
                  **{k: float(v) for k, v in zip(logs_acc[0], means)}}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
        bar.update()
        step += 1
        if step % s1.checkpoint_every == 0 or step == total_steps:
            if accelerator.is_main_process:
                save_checkpoint(latest, accelerator.unwrap_model(encoder).model, optimizer, step, config, history,
                                RETRIEVER_ADAPTER)
            accelerator.wait_for_everyone()
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    return {"history": history, "config": config}
