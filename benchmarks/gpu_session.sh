#!/usr/bin/env bash
# One device session (<= 9.5 min on an H100/H200): the README's training command on the GPU,
# GPU checks and timings, then the cart-pole
# figure's quick preset on the GPU, with this repository's test suite run on the machine's
# CPU (its jax, Python) in the background. Results under $OUT (default /tmp/gpu_out):
#   env.txt, gpu.json + gpu_check.txt (benchmarks/gpu_check.py), gpu_quick.json + quick.txt
#   (benchmarks/bench_paper.py --quick-only), tests_cpu.txt.
# Needs pydantic (not in the GPU image): wheels in .whl/ (see docs/performance.md).
#   GPU_CHECK_ARGS="--allow-cpu" QUICK_TIMEOUT=30 bash benchmarks/gpu_session.sh   # dry run here
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
# the suite on this machine's CPU (other jax/Python than CI), 4 workers, niced, in the background
XDIST=""; $PY -c "import xdist" 2>/dev/null && XDIST="-n ${TEST_WORKERS:-4}"
( JAX_PLATFORMS=cpu XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" STABLEBPTT_FIXTURES=${STABLEBPTT_FIXTURES:-$PWD/.fixtures} STABLEBPTT_NO_CACHE=1 \
  timeout "${TESTS_TIMEOUT:-420}" nice -n 10 $PY -m pytest -q -p no:cacheprovider $XDIST \
  -W ignore tests > "$OUT/tests_cpu.txt" 2>&1; echo "rc=$?" >> "$OUT/tests_cpu.txt" ) &
TESTS=$!
# the README's main command, on the GPU
( cd /tmp && timeout "${CLI_TIMEOUT:-45}" $PY -c "from stablebptt.cli import app; app()" train cartpole ) 2>&1 | tail -8
timeout "${CHECK_TIMEOUT:-280}" $PY benchmarks/gpu_check.py ${GPU_CHECK_ARGS:-} --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu_check.txt"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${QUICK_TIMEOUT:-200}" $PY benchmarks/bench_paper.py --quick-only \
  --workers "${QUICK_WORKERS:-8}" --json "$OUT/gpu_quick.json" 2>&1 | tee "$OUT/quick.txt"
echo "quick rc=${PIPESTATUS[0]}"
wait $TESTS
tail -15 "$OUT/tests_cpu.txt"
