#!/usr/bin/env bash
# Run one example runner N times under torchrun with tiny settings and count the runs that exit
# with rc != 0 (issue 13 item 1: SIGABRT at interpreter shutdown after "done at global step N").
#
#   tools/abort_soak.sh EXAMPLE RUNS [WORLD]      EXAMPLE: deepfm | deepctr | seq2seq | tables
#   e.g.  nice -n 10 tools/abort_soak.sh deepfm 100 1
#
# "tables" is the control without any dataset: tests/distributed/workers/train_tables.py (sharded
# HashTables + TorchRec EmbeddingBagCollection, gloo, random ids, no recis_compat.io import) —
# an abort there is not caused by the IO threads.
#
# Data is generated once per example under $SOAK_DIR (default /tmp/recis_abort_soak); every run
# gets a fresh checkpoint directory and a free master port. The stderr tail of every failed run is
# kept in $SOAK_DIR/<example>-w<world>/fail-<i>.log, and "<i> <rc>" of every run is appended to
# $SOAK_DIR/<example>-w<world>/progress. Prefetch stays on (the run.sh default,
# --prefetch=1). Extra runner flags can be passed in $SOAK_FLAGS.
# SOAK_NO_TORCHRUN=1 (WORLD 1 only) starts the runner exactly as run.sh does, but through a shim in
# place of torchrun's agent (RANK=0 WORLD_SIZE=1 MASTER_ADDR/PORT set, then exec python): the
# runner process and its exit path are the same, one torch import per run is saved. The last line printed is
#   SOAK example=<ex> world=<w> runs=<n> failures=<k> rc_counts=<rc:count,...>
# and the exit status is 0 only if every run succeeded.
set -uo pipefail
EXAMPLE=${1:?usage: abort_soak.sh deepfm|deepctr|seq2seq|tables RUNS [WORLD]}
RUNS=${2:?usage: abort_soak.sh deepfm|deepctr|seq2seq|tables RUNS [WORLD]}
WORLD=${3:-1}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PY:-$REPO/.venv/bin/python}
SOAK_DIR=${SOAK_DIR:-/tmp/recis_abort_soak}
EX="$REPO/examples/$EXAMPLE"
DATA="$SOAK_DIR/data-$EXAMPLE"
OUT="$SOAK_DIR/$EXAMPLE-w$WORLD"
mkdir -p "$OUT"
: >"$OUT/progress"
export OMP_NUM_THREADS=1 PY
unset RANK LOCAL_RANK WORLD_SIZE

case "$EXAMPLE" in
  deepfm)
    [ -e "$DATA/part-0.orc" ] || "$PY" "$EX/make_data.py" --out "$DATA" --files 2 --rows 400 --seed 4 >/dev/null
    FLAGS=(--batch_size=50 --train_steps=3 --log_steps=1 --gradient_accumulation_steps=1) ;;
  deepctr)
    ls "$DATA"/*.orc >/dev/null 2>&1 || "$PY" "$EX/make_orc_data.py" --out "$DATA" --files 2 --rows 96 --seed 1 >/dev/null
    FLAGS=(--batch_size=16 --train_steps=3 --log_steps=1) ;;
  seq2seq)
    ls "$DATA"/*.orc >/dev/null 2>&1 || "$PY" "$EX/make_data.py" --out "$DATA" --files 2 --rows 64 --max_len 48 --seed 1 >/dev/null
    FLAGS=(--batch_size=8 --train_steps=3 --log_steps=1 --seq_len=32 --emb_size=64 --hidden_size=64
           --num_layers=1 --nhead=2 --dim_feedforward=128) ;;
  tables) ;;
  *) echo "unknown example $EXAMPLE (deepfm|deepctr|seq2seq|tables)" >&2; exit 2 ;;
esac

RUN_PY=$PY
if [ "${SOAK_NO_TORCHRUN:-0}" = 1 ] && [ "$EXAMPLE" != tables ]; then
  [ "$WORLD" = 1 ] || { echo "SOAK_NO_TORCHRUN=1 needs WORLD=1" >&2; exit 2; }
  shim="$SOAK_DIR/shim"; mkdir -p "$shim"
  cat >"$shim/torchrun" <<SHIM
#!/usr/bin/env bash
# torchrun stand-in for one local process: drop the launcher flags, run the script directly
while [ \$# -gt 0 ]; do case "\$1" in --master_port=*) export MASTER_PORT="\${1#*=}"; shift ;;
  --nproc_per_node=*|--rdzv_backend=*|--rdzv_endpoint=*) shift ;; *) break ;; esac; done
export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1
exec "$PY" -u "\$@"
SHIM
  chmod +x "$shim/torchrun"
  RUN_PY="$shim/python"  # run.sh only takes dirname of PY (data exists, make_data is skipped)
fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

fail=0
declare -A rcs=()
for ((i = 1; i <= RUNS; i++)); do
  ck="$OUT/ckpt"; rm -rf "$ck"
  log="$OUT/run.log"
  if [ "$EXAMPLE" = tables ]; then
    (cd "$OUT" && PYTHONPATH="$REPO:$REPO/adapters" timeout 600 "$(dirname "$PY")/torchrun" \
       --nproc_per_node "$WORLD" --rdzv_backend c10d --rdzv_endpoint localhost:0 \
       "$REPO/tests/distributed/workers/train_tables.py" --out "$ck" --steps 4 ${SOAK_FLAGS:-} >"$log" 2>&1)
  else
    (cd "$OUT" && WORLD_SIZE=$WORLD DATA="$DATA" OUTPUT_DIR="$ck" MASTER_PORT=$(free_port) PY="$RUN_PY" \
       timeout 600 bash "$EX/run.sh" "${FLAGS[@]}" ${SOAK_FLAGS:-} >"$log" 2>&1)
  fi
  rc=$?
  echo "$i $rc" >>"$OUT/progress"   # one line per finished run: index, exit status
  rcs[$rc]=$(( ${rcs[$rc]:-0} + 1 ))
  if [ "$rc" != 0 ]; then
    fail=$((fail + 1))
    tail -n 60 "$log" >"$OUT/fail-$i.log"
    echo "run $i: rc=$rc (log tail in $OUT/fail-$i.log)"
  fi
done
summary=""
for k in "${!rcs[@]}"; do summary+="$k:${rcs[$k]},"; done
echo "SOAK example=$EXAMPLE world=$WORLD runs=$RUNS failures=$fail rc_counts=${summary%,}"
[ "$fail" = 0 ]
