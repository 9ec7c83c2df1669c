"""How fast this machine is, measured: the fp32 matmul throughput that the study's time budget is
normalised to (timings in minutes at a reference speed, so two machines' runs can be compared)."""
from __future__ import annotations

import time

import torch

# The reference speed of the study's budget (README: "normalised minutes"): a 2048² fp32 matmul on
# the 2-core reference machine runs at 150-190 GFLOP/s; minutes are normalised to 150.
REFERENCE_GFLOPS = 150.0


def matmul_gflops(n: int = 2048, repeats: int = 8) -> float:
    """The best of `repeats` n×n fp32 matmuls on the CPU, in GFLOP/s (about 2 s on 2 cores)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def normalised_minutes(wall_s: float, gflops: float, reference: float = REFERENCE_GFLOPS) -> float:
    """`wall_s` as minutes on a machine of `reference` GFLOP/s: a machine twice as fast does the
    same work in half the wall time, which is the same number of normalised minutes."""
    return wall_s / 60.0 * gflops / reference


def timing_entries(wall_s: dict[str, float], gflops_start: float, gflops_end: float, cores: int | None,
                   **extra) -> dict[str, dict]:
    """The `timings.json` entry of each notebook of one run: wall seconds, the machine's matmul speed
    measured at the run's start and end, and the wall time in minutes normalised to
    `REFERENCE_GFLOPS` at the mean of the two speeds."""
    speed = (gflops_start + gflops_end) / 2
    return {k: {"wall_s": v, "cores": cores, "gflops_start": round(gflops_start, 1), "gflops_end": round(gflops_end, 1),
                "normalised_min": round(normalised_minutes(v, speed), 2), **extra} for k, v in wall_s.items()}
