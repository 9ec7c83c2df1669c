"""Stage 1's preparation, as plain functions over a `Backbone` (docs/method.md §1).

Everything here is the same for every retriever variant and cached on disk under `data/cache/`,
keyed by content and model fingerprint: query rewrites, LSR scores, the trunk states of the
training texts, and the ridge map into MiniLM's space. `prepare` runs them in order and returns a
`Prepared`; a variant is then a training run on `Prepared.main` (and `Prepared.data`, the
environment subset).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from ..config import Profile
from ..data import Benchmark
from ..llm.backbone import Backbone
from ..llm.encoder import format_passage, format_query
from ..llm.retriever import LLMRetriever
from ..paths import cache_dir
from .environments import Environment, environments
from ..splits import training_split
from .groups import Group, build_groups
from .lsr import compute_lsr
from .rewrites import make_rewrites
from .train import TrainingData


def rewrites(backbone: Backbone, profile: Profile, items: Sequence[dict], log=print) -> dict[str, list[dict]]:
    """`stage1.n_rewrites` rewrites of each question, by the base model (adapter off), cached."""
    s1 = profile.stage1
    path = cache_dir() / "rewrites" / f"{backbone.model_fingerprint}.json"
    with backbone.adapter(None):
        return make_rewrites(items, s1.n_rewrites, s1.rewrite_method, path, backbone.model, backbone.tokenizer,
                             s1.rewrite_batch_size, log=log)


def lsr_scores(backbone: Backbone, profile: Profile, groups: Sequence[Group], envs: Sequence[Environment],
               rewrites_of: dict, passages: dict, log=print) -> torch.Tensor:
    """ℓ_e(d) [E, n, G] under the base model, cached (`lsr.compute_lsr`)."""
    s1 = profile.stage1
    path = cache_dir() / "lsr" / f"{backbone.model_fingerprint}.json"
    return compute_lsr(backbone.model, backbone.tokenizer, groups, envs, rewrites_of, passages, s1.lsr_prompt, path,
                       backbone.model_fingerprint, s1.lsr_batch_size, log=log)


def training_data(backbone: Backbone, profile: Profile, envs: Sequence[Environment], groups: Sequence[Group],
                  passages: dict, rewrites_of: dict | None, lsr_ll: torch.Tensor | None) -> TrainingData:
    """Trunk states of every query variant and passage window of `groups`, their coarse scores and
    (with `lsr_ll`) the LSR targets log Q_e. Without `rewrites_of`: the original question and the
    full window only (the L_ctr / L_align data)."""
    from .. import losses

    rc, s1 = profile.retriever, profile.stage1

    def query_states(texts):
        return backbone.states([format_query(t, rc.query_template) for t in texts], rc.query_max_len)

    q_states = {0: query_states([g.question for g in groups])}
    for r in range(1, (s1.n_rewrites if rewrites_of else 0) + 1):
        q_states[r] = query_states([rewrites_of[g.question][r - 1]["text"] for g in groups])
    p_states = {}
    envs = list(envs if rewrites_of else envs[:1])
    size = len(groups[0].passage_ids)
    for window in sorted({e.window for e in envs}):
        flat = backbone.states([format_passage(passages[p]["title"], passages[p]["text"], rc.passage_template)
                                for g in groups for p in g.passage_ids], window)
        p_states[window] = [flat[i * size:(i + 1) * size] for i in range(len(groups))]
    mask = torch.ones(len(groups), size, dtype=torch.bool)
    return TrainingData(query_states=q_states, passage_states=p_states,
                        coarse=torch.tensor([g.coarse_scores for g in groups]),
                        lsr_logq=None if lsr_ll is None else losses.lsr_distribution(lsr_ll, mask, s1.beta),
                        positive=torch.tensor([g.positive for g in groups]), envs=envs)


@torch.no_grad()
def fit_projection(zero: LLMRetriever, profile: Profile, bench: Benchmark, groups: Sequence[Group],
                   log=print) -> torch.Tensor:
    """W = argmin ||X W − Y||² + λ||W||²: X = the frozen model's pooled h(x) (`zero`: no adapter, no
    projection) of every training question and group passage, Y = MiniLM's embeddings of the same
    texts. Closed form in float64; cached on disk by model, texts, pooling and λ."""
    from safetensors.torch import load, save

    from ..integrity import load_or_none, read_sealed, write_sealed
    from ..io_utils import sha256_text
    from ..retrieval.coarse import CoarseStage

    if zero.weights is not None or zero.projection is not None:
        raise ValueError("the ridge map is fitted on the frozen model's own h(x): pass the llm-zero retriever")
    rc, s1 = profile.retriever, profile.stage1
    questions = list(dict.fromkeys(g.question for g in groups))
    pids = list(dict.fromkeys(p for g in groups for p in g.passage_ids))
    key = sha256_text(zero.backbone.model_fingerprint, zero.pooling, str(rc.max_len), str(rc.query_max_len),
                      rc.query_template, rc.passage_template, str(s1.ridge_lambda), *questions, *pids)[:16]
    path = cache_dir() / "projection" / f"{key}.safetensors"
    cached = load_or_none(path, lambda p: load(read_sealed(p))["W"], "ridge projection", log)
    if cached is not None:
        return cached
    xq = zero.query_reps([zero.query_text(q) for q in questions])
    xp = zero.passage_reps(pids)
    coarse = CoarseStage(profile, bench, log=log)
    row = {pid: i for i, pid in enumerate(coarse.ids)}
    yq = torch.as_tensor(coarse.encode_queries(questions))
    yp = torch.as_tensor(coarse.corpus_emb[[row[p] for p in pids]])
    x, y = torch.cat([xq, xp]).cpu().double(), torch.cat([yq, yp]).double()
    w = torch.linalg.solve(x.T @ x + s1.ridge_lambda * torch.eye(x.shape[1], dtype=torch.float64), x.T @ y)
    w = w.float().contiguous()
    write_sealed(path, save({"W": w}))
    log(f"ridge projection {tuple(w.shape)} fitted on {len(questions)} questions and {len(pids)} passages")
    return w


@dataclass
class Prepared:
    """Stage-1 training data. `all_groups`/`main` (every training question: L_ctr, L_align) and
    the environment subset `groups`/`data` (its first `stage1.env_questions` groups, cut to
    `env_group_size` members, with rewrites, windows and LSR scores: L_inv and the LSR term)."""
    profile: Profile
    backbone: Backbone
    passages: dict
    envs: list[Environment]
    groups: list[Group]  # the environment subset
    rewrites: dict
    lsr: torch.Tensor  # [E, n_env, G_env] of ℓ_e(d)
    data: TrainingData  # the environment subset, with LSR targets
    all_groups: list[Group]  # every training group
    main: TrainingData  # every training group, original question and window only
    val_questions: list  # held-out training questions (validation split), not trained on
    projection: torch.Tensor | None  # W (ridge map into MiniLM's space) or None
    timings: dict = field(default_factory=dict)

    def retriever(self, **fields) -> LLMRetriever:
        """A retriever value over this backbone (default: `llm-zero`, the frozen model)."""
        return LLMRetriever.from_profile(self.backbone, self.profile, self.passages, **fields)


def env_subset(groups: list[Group], n: int, size: int) -> list[Group]:
    """The first `n` groups (0 = all), each cut to its first `size` members (positives first,
    then MiniLM's hardest negatives)."""
    chosen = groups[:n] if n else groups
    return [replace(g, passage_ids=g.passage_ids[:size], positive=g.positive[:size],
                    coarse_scores=g.coarse_scores[:size]) for g in chosen]


def prepare(profile: Profile, bench: Benchmark, backbone: Backbone | None = None, log=print) -> Prepared:
    """Groups, rewrites, LSR, trunk states and the ridge map, each cached; `backbone` is loaded from
    the profile unless given (notebook 07 passes its own to prepare another number of rewrites)."""
    s1 = profile.stage1
    timings = {}
    t0 = time.perf_counter()
    backbone = backbone or Backbone.from_profile(profile, log=log)
    timings["load_backbone_s"] = time.perf_counter() - t0
    passages, envs = bench.passages(), environments(profile)
    t0 = time.perf_counter()
    train_q, val_q = training_split(profile, bench)
    all_groups = build_groups(profile, bench, train_q, log=log)
    groups = env_subset(all_groups, s1.env_questions, s1.env_group_size)
    timings["groups_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewrites_of = rewrites(backbone, profile, [{"question": g.question, "golden_answers": g.answers} for g in groups],
                           log=log)
    timings["rewrites_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lsr = lsr_scores(backbone, profile, groups, envs, rewrites_of, passages, log=log)
    timings["lsr_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    main = training_data(backbone, profile, envs, all_groups, passages, None, None)
    data = training_data(backbone, profile, envs, groups, passages, rewrites_of, lsr)
    timings["trunk_training_s"] = time.perf_counter() - t0
    prepared = Prepared(profile, backbone, passages, envs, groups, rewrites_of, lsr, data, all_groups, main, val_q,
                        None, timings)
    if s1.projection == "ridge":
        t0 = time.perf_counter()
        prepared.projection = fit_projection(prepared.retriever(), profile, bench, all_groups, log=log)
        timings["projection_s"] = time.perf_counter() - t0
    log(f"training: {len(all_groups)} groups of {s1.group_size} (L_ctr, L_align); {len(groups)} with "
        f"environments and LSR over {s1.env_group_size} members (L_inv, LSR); {len(val_q)} validation questions")
    return prepared
