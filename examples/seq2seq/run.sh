#!/usr/bin/env bash
# Train the seq2seq example under torchrun: WORLD_SIZE=2 bash examples/seq2seq/run.sh [extra flags]
# Env: WORLD_SIZE (processes, default 1), DATA (default <this dir>/data, generated when it holds
# no ORC file), OUTPUT_DIR (default ./ckpt), MASTER_PORT (default 12455; 0 = any free port),
# PY (python). Runs on the CPU (gloo) with a small model by default; RecIS's size is
# --seq_len=1024 --emb_size=512 --hidden_size=1024 --num_layers=8 --nhead=8
# --dim_feedforward=1024 (with --device=cuda on GPUs).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY=${PY:-$REPO/.venv/bin/python}
DATA=${DATA:-$HERE/data}
if ! ls "$DATA"/*.orc >/dev/null 2>&1; then
  "$PY" "$HERE/make_data.py" --out "$DATA"
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
  "$HERE/runner.py" --data_paths="$DATA" --batch_size=16 --thread_num=1 --prefetch=1 \
  --drop_remainder=true --output_dir="${OUTPUT_DIR:-./ckpt}" --log_steps=10 --save_steps=2000 \
  --seq_len=64 --emb_size=128 --hidden_size=128 --num_layers=2 --nhead=4 --dim_feedforward=256 "$@"
