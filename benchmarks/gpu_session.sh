#!/usr/bin/env bash
# One device call (<= 9.5 min on an H100/H200; run it with timeout_s 600, carry .whl and
# .fixtures): the README's training command on the GPU, then benchmarks/gpu_check.py, then
# (QUICK=1) the cart-pole figure's quick preset on the GPU, with this repository's test
# suite run on the machine's CPU (its jax and Python) in the background (TESTS=0: skip).
# Results under $OUT (default /tmp/gpu_out): env.txt, gpu.json + gpu_check.txt,
# gpu_quick.json + quick.txt, tests_cpu.txt. gpu_check rewrites its JSON after every
# measured row, so a part cut by its time limit keeps what it measured.
#
# Default plan (what the 2026-11-27 session, benchmarks/data/gpu-2026-11-27/, left to do):
# the 5-seed epochs first (quantum C with the one-column solve is untimed), then the
# throughput rows not reached, then the precision check. Each part gets its own limit.
# Needs pydantic (not in the GPU image): wheels in .whl/ (see docs/performance.md).
#   GPU_CHECK_ARGS="--allow-cpu" QUICK=1 QUICK_TIMEOUT=30 TESTS_TIMEOUT=30 bash benchmarks/gpu_session.sh  # dry run
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
{ date -u; nvidia-smi -L 2>&1; nproc
  $PY -c "import sys, jax, equinox, optax, pydantic; print(sys.version); print('jax', jax.__version__, 'equinox', equinox.__version__, 'optax', optax.__version__, 'pydantic', pydantic.__version__); print(jax.devices())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
TESTS_PID=""
if [ "${TESTS:-1}" = 1 ]; then
  # the suite on this machine's CPU (other jax/Python than CI), 4 workers, niced, in the background
  XDIST=""; $PY -c "import xdist" 2>/dev/null && XDIST="-n ${TEST_WORKERS:-4}"
  ( JAX_PLATFORMS=cpu XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" STABLEBPTT_FIXTURES=${STABLEBPTT_FIXTURES:-$PWD/.fixtures} STABLEBPTT_NO_CACHE=1 \
    timeout "${TESTS_TIMEOUT:-300}" nice -n 10 $PY -m pytest -q -p no:cacheprovider $XDIST \
    -W ignore tests > "$OUT/tests_cpu.txt" 2>&1; echo "rc=$?" >> "$OUT/tests_cpu.txt" ) &
  TESTS_PID=$!
fi
# the README's main command, on the GPU
( cd /tmp && timeout "${CLI_TIMEOUT:-45}" $PY -c "from stablebptt.cli import app; app()" train cartpole ) 2>&1 | tail -8
run_check() {  # part, limit, extra args; appends to gpu_check.txt, one JSON per part
  timeout "$2" $PY benchmarks/gpu_check.py ${GPU_CHECK_ARGS:-} --parts "$1" "${@:3}" --json "$OUT/gpu_$1.json" \
    2>&1 | grep -v "Delay kernel" | tee -a "$OUT/gpu_check.txt"
}
run_check epochs "${EPOCHS_TIMEOUT:-200}" --modes "${EPOCH_MODES:-R,C}"
run_check throughput "${THROUGHPUT_TIMEOUT:-170}" --cases "${CASES:-quantum:C:1,64,512;cartpole:C:4096;cartpole:R:1,64,4096;guidance:C:1,64,512}"
run_check precision "${PRECISION_TIMEOUT:-90}"
if [ "${QUICK:-0}" = 1 ]; then
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${QUICK_TIMEOUT:-200}" $PY benchmarks/bench_paper.py --quick-only \
    --workers "${QUICK_WORKERS:-8}" --json "$OUT/gpu_quick.json" 2>&1 | grep -v "Delay kernel" | tee "$OUT/quick.txt"
fi
if [ -n "$TESTS_PID" ]; then
  wait "$TESTS_PID"
  tail -15 "$OUT/tests_cpu.txt"
fi
