#!/usr/bin/env bash
# TorchRec DLRM with recis_compat's dynamic EmbeddingBagCollection, under torchrun:
#   WORLD_SIZE=2 bash examples/torchrec_native/run.sh [--rows N --batch-size B --epochs E --metrics out.json]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY=${PY:-$REPO/.venv/bin/python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$(dirname "$PY")/torchrun" --nproc_per_node="${WORLD_SIZE:-1}" --master_port="${MASTER_PORT:-0}" \
  --rdzv_backend c10d --rdzv_endpoint "localhost:${MASTER_PORT:-0}" "$HERE/train.py" "$@"
