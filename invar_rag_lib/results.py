"""Typed views of the results files: what a table, a figure or a claim reads, by name, not by path.

The JSON on disk keeps its layout (committed results still load); these small frozen dataclasses
wrap one entry each:

* `Estimate`: a mean with its 95% bootstrap interval (`metrics.bootstrap_ci`);
* `RetrievalResult`: one retriever on one dataset (acc@k, per-question hits, stability);
* `GenerationResult`: one generation row on one dataset (EM / F1 / acc, what the prompts showed);
* `retrievers(results)` and `generation(results)`: every entry of a results dict, typed.

A claim of the paper is `report.claims.Claim`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int = 0

    @classmethod
    def of(cls, d: Mapping) -> "Estimate":
        return cls(float(d["mean"]), float(d["low"]), float(d["high"]), int(d.get("n", 0)))

    def pct(self, digits: int = 1) -> str:
        """'72.0 [63.0, 80.0]': the mean and interval in percent."""
        return f"{100 * self.mean:.{digits}f} [{100 * self.low:.{digits}f}, {100 * self.high:.{digits}f}]"


@dataclass(frozen=True)
class RetrievalResult:
    """One retriever on one dataset (`retrieval.harness.evaluate_run`, plus stability across
    rewrites when it was scored in several environments)."""
    raw: Mapping

    @property
    def metrics(self) -> dict[str, Estimate]:
        return {k: Estimate.of(v) for k, v in self.raw["metrics"].items()}

    def acc(self, k: int) -> Estimate:
        return Estimate.of(self.raw["metrics"][f"acc@{k}"])

    def hits(self, k: int) -> list[float]:
        """Per-question hit@k (the exact probability for the random floor)."""
        from .retrieval.harness import hits_at_k

        return hits_at_k(self.raw, k)

    @property
    def has_stability(self) -> bool:
        return "stability" in self.raw

    def stability(self, name: str, k: int) -> Estimate:
        """`jaccard` or `has_answer_std` at `k`, across a question and its rewrites."""
        return Estimate.of(self.raw["stability"][f"{name}@{k}"])

    def stability_per_question(self, name: str) -> list[float]:
        return list(self.raw["stability"]["per_question"][name])


@dataclass(frozen=True)
class GenerationResult:
    """One generation row on one dataset: EM, F1, acc and what the prompts showed, per question."""
    raw: Mapping

    def metric(self, name: str) -> Estimate:
        return Estimate.of(self.raw["metrics"][name])

    def has(self, name: str) -> bool:
        return name in self.raw["metrics"]

    def per_question(self, name: str) -> list:
        return list(self.raw["per_question"][name])

    @property
    def ids(self) -> list[str]:
        return self.per_question("ids")

    @property
    def predictions(self) -> list[str]:
        return self.per_question("prediction")


def retrievers(results: Mapping) -> dict[str, dict[str, RetrievalResult]]:
    """name -> dataset -> `RetrievalResult`, from a results dict with a `retrievers` entry."""
    return {name: {ds: RetrievalResult(r) for ds, r in by_ds.items()} for name, by_ds in results["retrievers"].items()}


def generation(results: Mapping) -> dict[str, dict[str, GenerationResult]]:
    """row -> dataset -> `GenerationResult`, from notebook 06's results."""
    return {row: {ds: GenerationResult(r) for ds, r in by_ds.items()} for row, by_ds in results["rows"].items()}
