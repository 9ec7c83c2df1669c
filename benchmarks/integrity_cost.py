"""What content verification costs: re-hash every sealed artifact of a profile, as loads do.

Each cache load re-hashes what it reads (`invar_rag_lib/integrity.py`); this script times one
verification of every stored artifact kind under data/ and prints it beside the wall time of
notebooks 00-04 recorded in <reports>/results/timings.json. It measures, it asserts nothing.

Usage: .venv/bin/python benchmarks/integrity_cost.py [--profile cpu]
"""
from __future__ import annotations

import argparse
import json
import time

from invar_rag_lib.config import load_profile
from invar_rag_lib.integrity import MANIFEST, IntegrityError, check_dir, read_sealed
from invar_rag_lib.paths import data_dir, reports_dir

FILES = {"embeddings": "cache/embeddings/*.npz", "trunk states": "cache/trunk/*/shard-*.safetensors",
         "rewrites": "cache/rewrites/*.json", "LSR": "cache/lsr/*.json",
         "ridge map": "cache/projection/*.safetensors", "generations": "cache/generations/*.json",
         "generator trunk states": "cache/trunk-generator/*/shard-*.safetensors", "runs": "runs/{profile}/*.json"}
FOLDERS = {"BM25 indexes": "cache/indexes/bm25-*", "converted model": "cache/models/*",
           "benchmark": "processed/{profile}", "checkpoints": "checkpoints/{profile}/**/checkpoint-latest"}
FOLDER_KIND = {"BM25 indexes": "bm25", "converted model": "model", "benchmark": "benchmark", "checkpoints": "checkpoint"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    root = data_dir()
    rows, total_s, total_mb = [], 0.0, 0.0
    for kind, pattern in {**FILES, **FOLDERS}.items():
        paths = sorted(root.glob(pattern.format(profile=profile.name)))
        paths = [p for p in paths if not p.name.startswith(".") and ((p.is_dir() and (p / MANIFEST).exists())
                                                                  or (p.is_file() and not p.name.endswith(".sha256")))]
        t0, mb, bad = time.perf_counter(), 0.0, 0
        for p in paths:
            try:
                if p.is_dir():
                    check_dir(p, FOLDER_KIND[kind])
                    mb += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6
                else:
                    read_sealed(p)
                    mb += p.stat().st_size / 1e6
            except IntegrityError:
                bad += 1
        s = time.perf_counter() - t0
        total_s, total_mb = total_s + s, total_mb + mb
        rows.append(f"| {kind} | {len(paths)} | {mb:.0f} | {s:.2f} | {bad} |")
    timings = reports_dir(profile.reports_dir) / "results" / "timings.json"
    recorded = json.loads(timings.read_text()) if timings.exists() else {}
    run_s = sum(v["wall_s"] for k, v in recorded.items() if k[:2] in ("00", "01", "02", "03", "04"))
    print(f"Verification of every sealed artifact of profile {profile.name!r} under {root}, once:\n")
    print("| artifact | items | MB | verify s | damaged |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"| **all** | | {total_mb:.0f} | {total_s:.2f} | |")
    if run_s:
        print(f"\nnotebooks 00-04 last recorded at {run_s:.0f} s: one verification of everything is "
              f"{100 * total_s / run_s:.1f}% of it (a notebook verifies only what it loads; the trunk "
              "states, the largest item, are loaded once per notebook 02, 03, 04).")


if __name__ == "__main__":
    main()
