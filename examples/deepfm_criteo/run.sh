#!/usr/bin/env bash
# Train OneFlow's DeepFM on Criteo with recis under torchrun: WORLD_SIZE=2 bash examples/deepfm_criteo/run.sh [flags]
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
exec "$(dirname "$PY")/torchrun" --nproc_per_node="${WORLD_SIZE:-1}" --master_port="${MASTER_PORT:-12475}" \
  "$HERE/deepfm_train_eval.py" --data_dir "$DATA" \
  --embedding_vec_size 8 --dnn 64,32 --batch_size 1000 --train_batches 100 --loss_print_interval 10 \
  --learning_rate 0.001 --model_save_dir "${MODEL_SAVE_DIR:-$HERE/ckpt}" "$@"
