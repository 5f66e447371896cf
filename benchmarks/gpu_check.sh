#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, in under 8 minutes,
#   1. the test suite on CUDA with real Triton kernels (not the interpreter),
#   2. the benchmark tables (run_all.py --quick: eager vs torch.compile vs ours),
#   3. optionally (NUMERICS=1, up to 90 s more) the numerics report on CUDA,
# writing everything to the folder given as $1 and printing a short table last.
#
#   bash benchmarks/gpu_check.sh OUT            # then, here:
#   python benchmarks/run_all.py --record OUT   # puts OUT/summary.md into BENCHMARKS.md
#
# OUT receives at most 8 files: gpu_check.log (everything printed), report.md
# (all tables), summary.md (the short table, the BENCHMARKS.md entry),
# results.json, pointwise.png, gating.png, and with NUMERICS=1 NUMERICS-cuda.md
# and numerics-cuda.png. Time limits (seconds): TESTS_S (default 120) for
# pytest, then run_all's own per-script limits (about 330 in all).
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0 TRITON_DEFAULT_FP_FUSION=1
LOG="$OUT/gpu_check.log"
TESTS_LOG=$(mktemp /tmp/gpu-check-tests.XXXXXX)
START=$(date +%s)

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| Triton', triton.__version__, '| GPU', torch.cuda.is_available() and torch.cuda.get_device_name())"
} 2>&1 | tee "$LOG"

echo "== tests on CUDA (limit ${TESTS_S:-120} s) ==" | tee -a "$LOG"
FUSION_TEST_DEVICE=cuda timeout "${TESTS_S:-120}" "$PY" -m pytest -q -p no:cacheprovider tests \
  > "$TESTS_LOG" 2>&1
echo "pytest exit status $? after $(( $(date +%s) - START )) s (124: stopped by the time limit)" >> "$TESTS_LOG"
tail -n 15 "$TESTS_LOG" | tee -a "$LOG"

echo "== benchmarks (each script's tables go to the log and report.md) ==" | tee -a "$LOG"
"$PY" benchmarks/run_all.py --quick --out "$OUT" --tests-log "$TESTS_LOG" 2>&1 | tee -a "$LOG" | grep "^===="

if [ "${NUMERICS:-0}" = 1 ]; then
  echo "== numerics on CUDA ==" | tee -a "$LOG"
  timeout 90 "$PY" benchmarks/numerics.py --device cuda --out "$OUT" 2>&1 | tail -n 5 | tee -a "$LOG"
fi

{ echo; echo "== full pytest output =="; cat "$TESTS_LOG"; } >> "$LOG"
rm -f "$TESTS_LOG"

echo
echo "== GPU check done in $(( $(date +%s) - START )) s; full output in $OUT =="
cat "$OUT/summary.md"
