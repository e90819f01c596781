#!/usr/bin/env bash
# Train the deepctr example under torchrun: WORLD_SIZE=2 bash examples/deepctr/run.sh [extra flags]
# Env: WORLD_SIZE (processes, default 1), DATA (default <this dir>/fake_data, generated when it
# holds no ORC file), OUTPUT_DIR (default ./ckpt/), MASTER_PORT (default 12455; 0 = any free
# port), PY (python). Runs on the CPU (gloo) by default; pass --device=cuda for GPUs.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY=${PY:-$REPO/.venv/bin/python}
DATA=${DATA:-$HERE/fake_data}
if ! ls "$DATA"/*.orc >/dev/null 2>&1; then
  "$PY" "$HERE/make_orc_data.py" --out "$DATA"
fi
export PYTHONPATH="$HERE:$REPO:$REPO/adapters${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MASTER_PORT=${MASTER_PORT:-12455}
if [ "$MASTER_PORT" = 0 ]; then
  RDZV=(--rdzv_backend=c10d --rdzv_endpoint=localhost:0)
else
  RDZV=(--master_port="$MASTER_PORT")
fi
exec "$(dirname "$PY")/torchrun" --nproc_per_node="${WORLD_SIZE:-1}" "${RDZV[@]}" \
  "$HERE/deepctr.py" --data_paths="$DATA" --batch_size=64 --thread_num=1 --prefetch=1 \
  --drop_remainder=true --output_dir="${OUTPUT_DIR:-./ckpt/}" --log_steps=10 --train_steps=100 \
  --save_steps=1000 "$@"
