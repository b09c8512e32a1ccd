#!/usr/bin/env bash
# Train the shipped priors' *_gpu configs side by side on one GPU within a wall-clock budget.
#
#   OUT=out/gpu BUDGET_S=330 bash experiments/gpu_train.sh
#   (on a lent device: through experiments/gpu_session.sh train, which sets up the packages)
#
# For each config: a short probe run measures the step rate (after compilation), the
# cosine schedule's length is set to what the budget allows (num_steps = rate x budget x
# 0.9), the real run trains that many steps (stopping early, checkpointed, if the budget
# runs out) and exports its EMA weights as $OUT/<name>.safetensors + .json, the format of
# checkpoints/. Logs, metrics and the final sample grids go to $OUT/train_logs.tar.gz.
# Both configs share the GPU (each process takes at most MEM_FRACTION of its memory).
set -u
OUT=${OUT:-out/gpu}
BUDGET_S=${BUDGET_S:-330}
PROBE_STEPS=${PROBE_STEPS:-150}  # a multiple of 50 (log interval)
CONFIGS=${CONFIGS:-"mnist32_gpu natural64_gpu"}
RUNS=${RUNS:-/tmp/jaxir_gpu_runs}
EXTRA=${EXTRA:-}  # extra train_prior.py flags for both runs (e.g. "--batch-size 4" to smoke-test)
PY=${PYTHON:-python3}  # the interpreter with jax (a device image's python3; a venv's python here)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.4} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
here=$(cd "$(dirname "$0")" && pwd)

train_one() {
  local cfg=$1 name=${1%_gpu}
  local probe=$RUNS/probe_$cfg run=$RUNS/$cfg
  "$PY" "$here/train_prior.py" --config "$cfg" --workdir "$probe" --steps "$PROBE_STEPS" \
      --num-steps "$PROBE_STEPS" --log-every 50 --sample-every 0 $EXTRA || return 1
  local rate
  rate=$("$PY" - "$probe/metrics.jsonl" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(recs[-1]["steps_per_sec"])  # the last interval: after compilation
EOF
)
  local steps
  steps=$("$PY" -c "print(max(500, int($rate * $BUDGET_S * 0.9)))")
  echo "$cfg: probe $rate steps/s -> $steps steps in ${BUDGET_S}s" >&2
  "$PY" "$here/train_prior.py" --config "$cfg" --workdir "$run" --steps "$steps" \
      --num-steps "$steps" --time-budget-min "$("$PY" -c "print($BUDGET_S / 60 + 0.5)")" \
      --export "$OUT" --export-name "$name" --export-now $EXTRA
}

pids=()
for cfg in $CONFIGS; do
  train_one "$cfg" > "$RUNS/$cfg.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
(cd "$RUNS" && tar czf "$OUT/train_logs.tar.gz" --exclude='checkpoints' --exclude='probe_*' .)
for cfg in $CONFIGS; do tail -n 3 "$RUNS/$cfg.log"; done
exit $rc
