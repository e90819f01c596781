#!/usr/bin/env bash
# `make demo`: generate demo data (once), train the deepfm example (RecIS API: dynamic tables,
# SparseAdamW, Trainer), print eval AUC + samples/s, plot loss and AUC per step.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=examples/deepfm/data
if ! ls "$DATA"/part-*.orc >/dev/null 2>&1; then
  "$PY" examples/deepfm/make_data.py --out "$DATA" --files 8 --rows 10000
fi
PYTHONPATH="$PWD:$PWD/adapters${PYTHONPATH:+:$PYTHONPATH}" "$PY" examples/deepfm/demo.py --data "$DATA" --plot examples/deepfm/demo.png "$@"
