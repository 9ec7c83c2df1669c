"""The reader's targets (issue 22), read from the saved results of a `make reproduce`: printed, never
asserted in a test.

  * the generation stage helps: `invar-rag` EM − `invar-retrieval` EM ≥ +8 on NQ and TriviaQA, each
    with p < 0.05 (stretch: ≥ +12);
  * the reader reads: the extraction rate of `invar-rag` (EM where the shown windows hold an
    answer) ≥ 40% on NQ and TriviaQA;
  * `invar-rag` EM ≥ `minilm-rag` EM on every dataset (and `minilm-rag+generator`, reported as it is);
  * time: notebooks 05 + 06 ≤ 22 normalised minutes (up to 15 more allowed for a reader that learns),
    the whole study ≤ 60 (+ the same 15), minutes normalised to a 150 GFLOP/s machine.

Usage: .venv/bin/python benchmarks/reader_targets.py [--profile cpu]
"""
from __future__ import annotations

import argparse
import json

from invar_rag_lib.config import load_profile
from invar_rag_lib.paths import reports_dir
from invar_rag_lib.results import generation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args()
    root = reports_dir(load_profile(args.profile).reports_dir) / "results"
    r = json.loads((root / "06_generation" / "generation.json").read_text())
    rows, p = generation(r), r["paired_pvalues"]
    lines, ok = [], []

    def check(label: str, passed: bool, detail: str) -> None:
        ok.append(passed)
        lines.append(f"[{'met' if passed else 'NOT met'}] {label}: {detail}")

    for ds in ("nq", "triviaqa"):
        a, b = rows["invar-rag"][ds].metric("em").mean, rows["invar-retrieval"][ds].metric("em").mean
        pv = p[f"invar-rag_vs_invar-retrieval/{ds}"]["em"]
        delta = 100 * (a - b)
        check(f"{ds}: invar-rag − invar-retrieval EM ≥ +8 with p < 0.05", delta >= 8 and pv < 0.05,
              f"{100 * a:.0f} − {100 * b:.0f} = {delta:+.0f}, p {pv:.3f}" + (" (stretch ≥ +12 met)" if delta >= 12 else ""))
        ext = rows["invar-rag"][ds].metric("extraction").mean
        base_ext = rows["invar-retrieval"][ds].metric("extraction").mean
        check(f"{ds}: invar-rag extraction rate ≥ 40%", ext >= 0.40,
              f"{100 * ext:.0f}% (invar-retrieval {100 * base_ext:.0f}%)")
    for ds in rows["invar-rag"]:
        a, m = rows["invar-rag"][ds].metric("em").mean, rows["minilm-rag"][ds].metric("em").mean
        g = rows.get("minilm-rag+generator", {}).get(ds)
        check(f"{ds}: invar-rag EM ≥ minilm-rag EM", a >= m,
              f"{100 * a:.0f} vs {100 * m:.0f}" + (f"; minilm-rag+generator {100 * g.metric('em').mean:.0f}" if g else ""))
    timings = json.loads((root / "timings.json").read_text())
    norm = {k: v.get("normalised_min") for k, v in timings.items()}
    if all(v is not None for v in norm.values()):
        reader = sum(v for k, v in norm.items() if k[:2] in ("05", "06"))
        total = sum(norm.values())
        check("notebooks 05 + 06 ≤ 22 normalised min (≤ 37 with the reader's 15)", reader <= 37,
              f"{reader:.1f} normalised min ({'within 22' if reader <= 22 else 'over 22, within the 15 more' if reader <= 37 else 'over 37'})")
        check("whole study ≤ 60 normalised min (≤ 75 with the reader's 15)", total <= 75,
              f"{total:.1f} normalised min, {sum(v['wall_s'] for v in timings.values()) / 60:.1f} wall min")
    else:
        lines.append("(timings.json has no normalised minutes: rerun `make reproduce`)")
    print("\n".join(lines))
    print(f"{sum(ok)} of {len(ok)} targets met")


if __name__ == "__main__":
    main()
