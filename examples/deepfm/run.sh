#!/usr/bin/env bash
# Train the deepfm example under torchrun: WORLD_SIZE=2 bash examples/deepfm/run.sh [extra flags]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY=${PY:-$REPO/.venv/bin/python}
DATA=${DATA:-$HERE/data}
if ! ls "$DATA"/part-*.orc >/dev/null 2>&1; then
  "$PY" "$HERE/make_data.py" --out "$DATA" --files 8 --rows 10000
fi
export PYTHONPATH="$HERE:$REPO:$REPO/adapters${PYTHONPATH:+:$PYTHONPATH}"
exec "$(dirname "$PY")/torchrun" --nproc_per_node="${WORLD_SIZE:-1}" --master_port="${MASTER_PORT:-12455}" \
  "$HERE/runner.py" --data_paths="$DATA" --batch_size=1000 --thread_num=1 --prefetch=1 \
  --drop_remainder=true --gradient_accumulation_steps=4 --output_dir="${OUTPUT_DIR:-./ckpt}" \
  --log_steps=10 --save_steps=2000 "$@"
