#!/usr/bin/env bash
# One prepared device call (<= 9.5 min on an H100/H200; run it with timeout_s 600, carry .whl).
# Three plans (PLAN=figure is the default):
#
#   PLAN=figure  bench_lanes.py (a cart-pole panel's runs as lanes of one program vs one
#                program per config with its seeds vmapped; LANES_SEEDS, LANES_MODES,
#                LANES_CLIPS), then the cart-pole figure (full, or QUICK=1 the quick sweep)
#                with every pole count's runs as lanes of one program (`experiments/paper/reproduce.py
#                cartpole --vmap-configs`, FIGURE_WORKERS worker processes): its wall time,
#                SUMMARY.md, figure, acceptance claims, and the run folders (without weights)
#                as runs.tar.gz. FIGURE_TIMEOUT (480 s) stops it; a pole count's runs are
#                written only when all its lanes finish, and a later call resumes from a
#                carried copy of runs.tar.gz (RESUME_TAR=path).
#   PLAN=checks  benchmarks/gpu_check.py part by part (5-seed epochs, throughput, precision),
#                then (QUICK=1) the quick cart-pole figure on the GPU (bench_paper.py
#                --quick-only), and the README's `stablebptt train cartpole`.
#   PLAN=paper   benchmarks/gpu_paper.py: the full-scale figures (FIGURES, default cart-pole,
#                guidance and quantum target 5 with 3 seeds), every lane group in its own
#                process, all at once, stopped PAPER_DEADLINE (470) s after the start; the run
#                folders (without weights) come back as paper_runs.tar.gz, the log as paper.txt.
#
# In every plan this repository's test suite runs on the machine's CPU in the background
# (TESTS=0: skip). Results under $OUT (default /tmp/gpu_out), at most 8 files. The GPU image
# lacks pydantic: its wheels (and its dependencies') travel in .whl/ and are installed here.
# Dry runs on a CPU (about two minutes each):
#   PLAN=checks GPU_CHECK_ARGS="--allow-cpu" TESTS=0 OUT=/tmp/gs bash benchmarks/gpu_session.sh
#   PLAN=figure QUICK=1 FIGURE_WORKERS=1 FIGURE_TIMEOUT=40 LANES_SEEDS=1 LANES_MODES=R,C TESTS=0 \
#     OUT=/tmp/gs bash benchmarks/gpu_session.sh
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
  ( JAX_PLATFORMS=cpu XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" STABLEBPTT_NO_CACHE=1 \
    timeout "${TESTS_TIMEOUT:-300}" nice -n "${TESTS_NICE:-10}" $PY -m pytest -q -p no:cacheprovider $XDIST \
    -W ignore tests > "$OUT/tests_cpu.txt" 2>&1; echo "rc=$?" >> "$OUT/tests_cpu.txt" ) &
  TESTS_PID=$!
fi
# the README's main command, on the GPU (in the figure plan only with README_CMD=1)
if [ "${PLAN:-figure}" = checks ] || [ "${README_CMD:-0}" = 1 ]; then
  ( cd /tmp && timeout "${CLI_TIMEOUT:-45}" $PY -c "from stablebptt.cli import app; app()" train cartpole ) 2>&1 | tail -8
fi
run_check() {  # part, limit, extra args; appends to gpu_check.txt, one JSON per part
  timeout "$2" $PY benchmarks/gpu_check.py ${GPU_CHECK_ARGS:-} --parts "$1" "${@:3}" --json "$OUT/gpu_$1.json" \
    2>&1 | grep -v "Delay kernel" | tee -a "$OUT/gpu_check.txt"
}
if [ "${PLAN:-figure}" = paper ]; then
  P=/tmp/paper
  T0=$(date +%s)
  # shellcheck disable=SC2086
  FIGS=""; for f in ${FIGURES:-cartpole guidance quantum:target=5:seeds=3}; do FIGS="$FIGS --figure $f"; done
  ( XLA_PYTHON_CLIENT_PREALLOCATE=false $PY benchmarks/gpu_paper.py --out "$P" $FIGS \
      --deadline "${PAPER_DEADLINE:-470}" --log-every "${LOG_EVERY:-50}" ${PAPER_ARGS:-} ) 2>&1 \
    | grep -v -E "Delay kernel|UserWarning|warnings.warn" | tee "$OUT/paper.txt"
  echo "paper wall_s $(( $(date +%s) - T0 ))" | tee -a "$OUT/paper.txt"
  ( cd "$P" && tar --exclude='weights.npz' -czf "$OUT/paper_runs.tar.gz" . ) 2>/dev/null
  ls -la "$OUT"
elif [ "${PLAN:-figure}" = checks ]; then
  run_check epochs "${EPOCHS_TIMEOUT:-200}" --modes "${EPOCH_MODES:-R,C}"
  run_check throughput "${THROUGHPUT_TIMEOUT:-170}" --cases "${CASES:-quantum:C:1,64,512;cartpole:C:4096;cartpole:R:1,64,4096;guidance:C:1,64,512}"
  run_check precision "${PRECISION_TIMEOUT:-90}"
  if [ "${QUICK:-0}" = 1 ]; then
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${QUICK_TIMEOUT:-200}" $PY benchmarks/bench_paper.py --quick-only \
      --workers "${QUICK_WORKERS:-8}" --json "$OUT/gpu_quick.json" 2>&1 | grep -v "Delay kernel" | tee "$OUT/quick.txt"
  fi
else
  # 1. lanes vs one program per config with its seeds vmapped (default 4 modes x 5 seeds = 20 runs,
  #    cart-pole 1 pole, no clipping); first, so that a figure cut by its time limit still leaves
  #    the lanes' epoch time to estimate it from
  timeout "${LANES_TIMEOUT:-70}" $PY benchmarks/bench_lanes.py --seeds "${LANES_SEEDS:-5}" --per-config seeds \
    --modes "${LANES_MODES:-R,M,S,C}" --clips "${LANES_CLIPS:-none}" --rounds 1 --json "$OUT/gpu_lanes.json" 2>&1 | grep -v "Delay kernel" | tee -a "$OUT/figure.txt"
  # 2. the cart-pole figure, every pole count's runs as lanes of one program, one worker per pole count
  FIG=/tmp/cartpole-figure
  # resume a figure cut short by an earlier call: RESUME_TAR=<a carried copy of its runs.tar.gz>
  if [ -n "${RESUME_TAR:-}" ] && [ -f "$RESUME_TAR" ]; then mkdir -p "$FIG" && tar -xzf "$RESUME_TAR" -C "$FIG"; fi
  QFLAG=""; [ "${QUICK:-0}" = 1 ] && QFLAG="--quick"
  T0=$(date +%s)
  REPRODUCE=$PWD/experiments/paper/reproduce.py
  ( cd /tmp && XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${FIGURE_TIMEOUT:-480}" $PY "$REPRODUCE" \
      cartpole $QFLAG --vmap-configs --workers "${FIGURE_WORKERS:-4}" --out "$FIG" ) 2>&1 \
    | grep -v "Delay kernel" | tail -20 | tee -a "$OUT/figure.txt"
  T1=$(date +%s)
  echo "figure wall_s $((T1 - T0)) (quick=${QUICK:-0}, workers ${FIGURE_WORKERS:-4}, resumed from ${RESUME_TAR:-nothing})" | tee -a "$OUT/figure.txt"
  cp "$FIG/SUMMARY.md" "$OUT/" 2>/dev/null
  ls "$FIG"/figures/*.png 2>/dev/null | head -1 | xargs -r -I{} cp {} "$OUT/figure.png"
  $PY -c "
import sys
sys.path.insert(0, 'experiments/paper')
import claims
from stablebptt.analysis import results
for c in claims.cartpole_claims(results.collect('$FIG')): print(f'{c.key}: {c.verdict}')
" 2>&1 | tee -a "$OUT/figure.txt"
  ( cd "$FIG" && tar --exclude='weights.npz' -czf "$OUT/runs.tar.gz" . ) 2>/dev/null
fi
if [ -n "$TESTS_PID" ]; then
  wait "$TESTS_PID"
  tail -15 "$OUT/tests_cpu.txt"
fi
