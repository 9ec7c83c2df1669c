"""What `make test` runs and what it costs, measured: the unit suite and nbval, each as `make test`
runs it, with the counts pytest reports (from its JUnit XML) and the wall time beside the machine's
fp32 matmul speed measured in the same run.

Writes `reports/results/benchmarks/test_suite.json` and `reports/tables/test_suite.md`, which
`invar-rag report` copies into the README and docs/maintainers.md (between `test_suite` markers), so
no test count in the docs is typed by hand. Prints the table; asserts nothing.

Usage: .venv/bin/python benchmarks/test_suite.py        (about as long as `make test`)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

from invar_rag_lib.io_utils import atomic_write_json, atomic_write_text
from invar_rag_lib.machine import REFERENCE_GFLOPS, matmul_gflops, normalised_minutes
from invar_rag_lib.paths import repo_root

SUITES = {  # the Makefile's `unit` and `nbval` targets
    "unit tests": ["tests"],
    "nbval (every notebook, smoke profile)": ["--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                                              "notebooks"],
}


def junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / errors / skipped, summed over the test suites of a JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def run_suite(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *args, f"--junitxml={xml}"],
                              cwd=repo_root(), env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t0
        if not xml.exists():
            raise SystemExit(f"pytest {' '.join(args)} wrote no report (exit {proc.returncode})")
        return {**junit_counts(xml), "wall_s": round(wall, 1), "exit": proc.returncode}


def table(result: dict) -> str:
    speed = result["gflops"]
    lines = [f"`make test` as measured by `benchmarks/test_suite.py` on {result['date']} ({result['cores']} cores, "
             f"fp32 matmul {speed:.0f} GFLOP/s; normalised to {REFERENCE_GFLOPS:.0f} GFLOP/s)", "",
             "| suite | passed | skipped | failed | wall min | normalised min |", "|---|---|---|---|---|---|"]
    for name, s in result["suites"].items():
        lines.append(f"| {name} | {s['passed']} | {s['skipped']} | {s['failed'] + s['errors']} | "
                     f"{s['wall_s'] / 60:.1f} | {normalised_minutes(s['wall_s'], speed):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    g0 = matmul_gflops()
    suites = {name: run_suite(args) for name, args in SUITES.items()}
    g1 = matmul_gflops()
    result = {"date": date.today().isoformat(), "cores": os.cpu_count(), "gflops": round((g0 + g1) / 2, 1),
              "gflops_start": round(g0, 1), "gflops_end": round(g1, 1), "suites": suites}
    root = repo_root() / "reports"
    atomic_write_json(root / "results" / "benchmarks" / "test_suite.json", result)
    text = table(result)
    atomic_write_text(root / "tables" / "test_suite.md", text)
    print(text)
    if any(s["exit"] for s in suites.values()):
        raise SystemExit("a suite failed: the table records it; fix the failures before quoting the counts")


if __name__ == "__main__":
    main()
