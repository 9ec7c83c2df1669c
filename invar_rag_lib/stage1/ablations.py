"""Notebook 07's ablations at the retrieval level: invar−align, invar−inv, the λ sweep and the
number of rewrites R (docs/method.md §1), all on the same groups, candidates and evaluation environments.

Each point is an (objective, R) pair, trained here into `data/checkpoints/<profile>/retriever/<point>`.
Notebook 04 trains the method and its baselines (`llm-ctr`, `llm-lsr`, `invar`); the component
ablations `invar−align` and `invar−inv` are trained and scored only here, so no variant is trained
or evaluated twice. A point equal to a finished checkpoint (λ = 0.5 is `invar`, λ = 0 is
`invar−inv`, ...) reuses it when its config and data match. Changing R changes the environments,
so those points get their own rewrites, LSR scores and trunk states (cached like the rest).
Evaluation always uses the profile's own environments (the original question and its
`stage1.n_rewrites` rewrites), so every point is scored on the same questions and rewrites.
"""
from __future__ import annotations

import copy
import math
import dataclasses
import time
from dataclasses import dataclass

from ..config import FULL_LAMBDAS, FULL_REWRITES, Profile
from ..data import Benchmark
from .environments import environments
from .evaluate import paired_pvalues
from .experiment import Evaluation, Prepared, prepare, train_variant
from .train import Objective, variant_objectives


@dataclass(frozen=True)
class Point:
    name: str  # checkpoint and result name
    axis: str  # "component" | "lambda" | "rewrites"
    value: float | str
    objective: Objective
    n_rewrites: int


def _name(profile: Profile, objective: Objective, n_rewrites: int) -> str:
    if n_rewrites == profile.stage1.n_rewrites:
        for name, obj in variant_objectives(profile).items():
            if obj == objective:
                return name
    if n_rewrites != profile.stage1.n_rewrites:
        return f"invar-R{n_rewrites}"
    return f"invar-lam{objective.lam:g}"


def ablation_points(profile: Profile) -> list[Point]:
    s = profile.stage1
    variants = variant_objectives(profile)
    points = [Point("invar", "component", "full loss", variants["invar"], s.n_rewrites),
              Point("invar-align", "component", "α = 0", variants["invar-align"], s.n_rewrites),
              Point("invar-inv", "component", "λ = 0", variants["invar-inv"], s.n_rewrites)]
    for lam in profile.ablations.lams:
        obj = dataclasses.replace(variants["invar"], lam=lam)
        points.append(Point(_name(profile, obj, s.n_rewrites), "lambda", lam, obj, s.n_rewrites))
    for r in profile.ablations.rewrites:
        points.append(Point(_name(profile, variants["invar"], r), "rewrites", r, variants["invar"], r))
    return points


def not_run(profile: Profile) -> list[str]:
    """docs/method.md's sweep points this profile does not run (reported, never silently skipped)."""
    missing = [f"λ = {lam:g}" for lam in FULL_LAMBDAS if lam not in profile.ablations.lams]
    missing += [f"R = {r}" for r in FULL_REWRITES if r not in profile.ablations.rewrites]
    return missing


def with_rewrites(profile: Profile, n_rewrites: int) -> Profile:
    return dataclasses.replace(profile, stage1=dataclasses.replace(profile.stage1, n_rewrites=n_rewrites))


def prepared_for(profile: Profile, bench: Benchmark, base: Prepared, n_rewrites: int, log=print) -> Prepared:
    """Training data with R rewrites, from the same loaded model (a shallow copy of the stage)."""
    if n_rewrites == profile.stage1.n_rewrites:
        return base
    p = with_rewrites(profile, n_rewrites)
    stage = copy.copy(base.stage)
    stage.profile, stage.envs = p, environments(p)
    return prepare(p, bench, stage=stage, log=log)


def run_ablations(profile: Profile, bench: Benchmark, log=print) -> dict:
    t0 = time.perf_counter()
    base = prepare(profile, bench, log=log)
    ev = Evaluation(profile, bench, base.stage, log=log)
    timings = {"prepare_s": time.perf_counter() - t0}
    prepared = {profile.stage1.n_rewrites: base}
    retrievers, done, points = {}, {}, ablation_points(profile)
    training, cosine = {}, {}
    for point in points:
        if point.name in done:
            continue
        t0 = time.perf_counter()
        if point.n_rewrites not in prepared:
            prepared[point.n_rewrites] = prepared_for(profile, bench, base, point.n_rewrites, log=log)
        p_profile = with_rewrites(profile, point.n_rewrites)
        record = train_variant(p_profile, bench, prepared[point.n_rewrites], point.name, point.objective,
                               reuse=True, log=log)
        timings[f"train_{point.name}_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        retrievers[point.name] = ev.score_llm(adapter=True)
        cosine[point.name] = ev.passage_cosine()
        timings[f"eval_{point.name}_s"] = round(time.perf_counter() - t0, 1)
        done[point.name] = {"reused_checkpoint": bool(record.get("reused")),
                            "final_loss": record["history"][-1]["loss"] if record["history"] else None}
        training[point.name] = record["history"]
        log(f"{point.name}: " + ", ".join(f"{ds} acc@5 {r['metrics']['acc@5']['mean']:.2f}"
                                          for ds, r in retrievers[point.name].items()))
    base.stage.reset_adapter()
    retrievers["minilm"] = ev.score_coarse("minilm")
    cfg = profile.retrieval
    return {
        "mode": ev.mode, "ks": ev.ks,
        "points": [{"name": p.name, "axis": p.axis, "value": p.value, "n_rewrites": p.n_rewrites,
                    "objective": dataclasses.asdict(p.objective), **done[p.name]} for p in points],
        "not_run": not_run(profile),
        "retrievers": retrievers,
        "paired_pvalues": paired_pvalues(retrievers, ["invar"], ev.ks, cfg.bootstrap_resamples, profile.seed),
        "training": training,  # loss history per point (a reused checkpoint keeps its own)
        "ctr_uniform": math.log(profile.stage1.batch_size * profile.stage1.group_size),
        "passage_cosine": cosine,  # the collapse check of notebook 04, per point
        "eval_environments": ["original"] + [f"rewrite-{r}" for r in range(1, profile.stage1.n_rewrites + 1)],
        "timings_s": {k: round(v, 1) for k, v in {**ev.timings, **timings}.items()},
    }
