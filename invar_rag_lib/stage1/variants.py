"""The retriever variants of docs/method.md §1, in one registry: each is a weighting of the loss terms.

`llm-zero` (the base model, no training) is not an objective; every table reports it beside these.
Notebook 04 trains the method and its baselines (`main_objectives`); notebook 07 trains the component
ablations (`ABLATIONS`) with the λ and R grid, so no variant is trained or evaluated twice.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Profile

# The `retriever.*` fields that change what training produces: a checkpoint is reused or resumed
# only under the same values (evaluation-only fields such as rerank_depth are left out).
# (retriever.trunk_quantization is in the data key instead: it changes the trunk's fingerprint.)
TRAINING_FIELDS = ("pooling", "tau_r", "lora_layers", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                   "max_len", "query_max_len", "query_template", "passage_template")


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

    @property
    def needs_lsr(self) -> bool:
        return bool(self.lsr or self.lam)


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
# trains the method and its baselines.
ABLATIONS = ("invar-align", "invar-inv")


def main_objectives(profile: Profile) -> dict[str, Objective]:
    """Notebook 04's trained variants: `variant_objectives` without the component ablations."""
    return {k: v for k, v in variant_objectives(profile).items() if k not in ABLATIONS}


def objective_of(profile: Profile, name: str) -> Objective | None:
    """The objective of variant `name` (None for `llm-zero`); a clear error for an unknown name."""
    if name == "llm-zero":
        return None
    objectives = variant_objectives(profile)
    if name not in objectives:
        raise ValueError(f"unknown retriever variant {name!r}; valid are {['llm-zero', *objectives]}")
    return objectives[name]
