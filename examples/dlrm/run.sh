#!/usr/bin/env bash
# Train OneFlow's DLRM with recis under torchrun: WORLD_SIZE=2 bash examples/dlrm/run.sh [extra OneFlow flags]
# Without DATA, a small synthetic Criteo set is made (make_data.py) and a small model trained on it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY=${PY:-$REPO/.venv/bin/python}
export PYTHONPATH="$HERE:$REPO:$REPO/adapters${PYTHONPATH:+:$PYTHONPATH}"
DATA=${DATA:-$HERE/data}
if ! ls "$DATA"/train/part-*.parquet >/dev/null 2>&1; then
  "$PY" "$HERE/make_data.py" --out "$DATA" --rows 16000 --heldout_rows 4000 --rows_per_file 2000
fi
exec "$(dirname "$PY")/torchrun" --nproc_per_node="${WORLD_SIZE:-1}" --master_port="${MASTER_PORT:-12465}" \
  "$HERE/dlrm_train_eval.py" --data_dir "$DATA" \
  --embedding_vec_size 16 --bottom_mlp 64,32,16 --top_mlp 64,32 \
  --train_batch_size 512 --eval_batch_size 1000 --eval_batches 2 --train_batches 60 --eval_interval 20 \
  --learning_rate 2 --warmup_batches 10 --decay_start 40 --decay_batches 20 --loss_print_interval 10 \
  --model_save_dir "${MODEL_SAVE_DIR:-$HERE/ckpt}" "$@"
