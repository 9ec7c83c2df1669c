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

import math
import dataclasses
import time
from dataclasses import dataclass

from ..config import FULL_LAMBDAS, FULL_REWRITES, Profile
from ..data import Benchmark
from ..retrieval.harness import paired_pvalues
from .evaluate import Evaluation
from .experiment import train_variant
from .prepare import Prepared, prepare
from .variants import Objective, variant_objectives


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
    """Training data with R rewrites, on the same loaded backbone."""
    if n_rewrites == profile.stage1.n_rewrites:
        return base
    return prepare(with_rewrites(profile, n_rewrites), bench, backbone=base.backbone, log=log)


class AblationRuns:
    """Notebook 07 step by step: stage 1 prepared once and the evaluation side, then `run(point)`
    per ablation point (reusing a finished checkpoint of the same config and data), then `summary()`."""

    def __init__(self, profile: Profile, bench: Benchmark, log=print):
        self.profile, self.bench, self.log = profile, bench, log
        t0 = time.perf_counter()
        self.base = prepare(profile, bench, log=log)
        self.ev = Evaluation(profile, bench, self.base.backbone, log=log)
        self.timings = {"prepare_s": time.perf_counter() - t0}
        self.prepared = {profile.stage1.n_rewrites: self.base}
        self.points = ablation_points(profile)
        self.retrievers, self.done, self.training, self.cosine = {}, {}, {}, {}

    def run(self, point: Point) -> dict | None:
        """Train (or reuse) and score one point; None when a point of the same name already ran."""
        if point.name in self.done:
            return None
        t0 = time.perf_counter()
        if point.n_rewrites not in self.prepared:
            self.prepared[point.n_rewrites] = prepared_for(self.profile, self.bench, self.base, point.n_rewrites,
                                                           log=self.log)
        retriever, record = train_variant(with_rewrites(self.profile, point.n_rewrites), self.bench,
                                          self.prepared[point.n_rewrites], point.name, point.objective, reuse=True,
                                          log=self.log)
        self.timings[f"train_{point.name}_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        self.retrievers[point.name] = self.ev.score_llm(retriever)
        self.cosine[point.name] = self.ev.passage_cosine()
        self.timings[f"eval_{point.name}_s"] = round(time.perf_counter() - t0, 1)
        self.done[point.name] = {"reused_checkpoint": bool(record.get("reused")),
                                 "final_loss": record["history"][-1]["loss"] if record["history"] else None}
        self.training[point.name] = record["history"]
        self.log(f"{point.name}: " + ", ".join(f"{ds} acc@5 {r['metrics']['acc@5']['mean']:.2f}"
                                               for ds, r in self.retrievers[point.name].items()))
        return self.retrievers[point.name]

    def summary(self) -> dict:
        """What notebook 07 saves (`07_ablations/ablations.json`)."""
        profile, ev, cfg = self.profile, self.ev, self.profile.retrieval
        retrievers = {**self.retrievers, "minilm": ev.score_coarse("minilm")}
        return {
            "mode": ev.mode, "ks": ev.ks,
            "points": [{"name": p.name, "axis": p.axis, "value": p.value, "n_rewrites": p.n_rewrites,
                        "objective": dataclasses.asdict(p.objective), **self.done[p.name]} for p in self.points],
            "not_run": not_run(profile),
            "retrievers": retrievers,
            "paired_pvalues": paired_pvalues(retrievers, ["invar"], ev.ks, cfg.bootstrap_resamples, profile.seed),
            "training": self.training,  # loss history per point (a reused checkpoint keeps its own)
            "ctr_uniform": math.log(profile.stage1.batch_size * profile.stage1.group_size),
            "passage_cosine": self.cosine,  # the collapse check of notebook 04, per point
            "eval_environments": ["original"] + [f"rewrite-{r}" for r in range(1, profile.stage1.n_rewrites + 1)],
            "timings_s": {k: round(v, 1) for k, v in {**ev.timings, **self.timings}.items()},
        }


def run_ablations(profile: Profile, bench: Benchmark, log=print) -> dict:
    runs = AblationRuns(profile, bench, log=log)
    for point in runs.points:
        runs.run(point)
    return runs.summary()
