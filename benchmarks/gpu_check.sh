#!/usr/bin/env bash
# The GPU check, in under 8 minutes on a machine with a CUDA GPU: the test suite on CUDA (real
# Triton kernels), then the benchmark tables, and a short table last.
#
#   bash benchmarks/gpu_check.sh OUT          # NUMERICS=1: then the CUDA numerics report, in the time left
#   SMOKE=1 bash benchmarks/gpu_check.sh OUT  # no GPU: the same steps at --smoke sizes, without the tests
#
# OUT gets gpu_check.log (all output), pytest.log, tables.tar.gz (each table's CSV and plot),
# summary.md (the short table, for BENCHMARKS.md), with NUMERICS=1 also NUMERICS-cuda.md and
# numerics-cuda.png. Limits, seconds: tests 120, pointwise 70, gating 95, matmul_recompute 30,
# compile_latency 95, overhead 40; each is cut to what is left of 460 s from the start.
# The scripts need pandas and matplotlib (triton.testing.perf_report's tables and plots).
set -u
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3} START=$(date +%s) SMOKE_ARG=""
if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  [ "${SMOKE:-0}" = 1 ] || { echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False):" \
    "nothing run. SMOKE=1 runs the same steps at smoke sizes on a CPU."; exit 1; }
  SMOKE_ARG=--smoke
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) && WORK=$(mktemp -d) && mkdir "$WORK/tables"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG=$OUT/gpu_check.log ROWS="| step | status | s | headline |\n|---|---|---|---|\n"

step() {  # step NAME SECONDS COMMAND...: run under a time limit, output to the log, a row to the table
  local name=$1 limit=$2 left=$((START + 460 - $(date +%s))) t=$(date +%s) status line
  shift 2
  [ "$limit" -gt "$left" ] && limit=$left
  [ "$limit" -lt 10 ] && { ROWS+="| $name | skipped: out of time | 0 | |\n"; return; }
  echo "== $name (limit $limit s) ==" | tee -a "$LOG"
  timeout -k 5 "$limit" "$@" > "$WORK/$name.txt" 2>&1
  case $? in 0) status=ok ;; 124 | 137) status="stopped at $limit s" ;; *) status="exit $?" ;; esac
  cat "$WORK/$name.txt" >> "$LOG"
  line=$(grep -hE '^headline: |^=* ?[0-9]+ (passed|failed|error).* in [0-9.]+s' "$WORK/$name.txt" |
         sed -E 's/^headline: //; s/^=+ | =+$//g; s/\|/\//g' | paste -sd '#' - | sed 's/#/; /g')
  echo "   $status: $line"
  ROWS+="| $name | $status | $(($(date +%s) - t)) | $line |\n"
}

{ echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; } | tee "$LOG"
if [ -z "$SMOKE_ARG" ]; then
  FUSION_TEST_DEVICE=cuda TRITON_INTERPRET=0 step tests 120 "$PY" -m pytest -q -p no:cacheprovider tests
  cp "$WORK/tests.txt" "$OUT/pytest.log"
fi
for s in pointwise:70 gating:95 matmul_recompute:30; do
  step "${s%:*}" "${s#*:}" "$PY" "benchmarks/${s%:*}.py" $SMOKE_ARG --out "$WORK/tables/${s%:*}"
done
step compile_latency 95 "$PY" benchmarks/compile_latency.py --reps 1 --out "$WORK/tables/compile_latency"
step overhead 40 "$PY" benchmarks/overhead.py --out "$WORK/tables/overhead"
[ "${NUMERICS:-0}" = 1 ] && [ -z "$SMOKE_ARG" ] &&
  step numerics 300 "$PY" benchmarks/numerics.py --device cuda --out "$OUT"
tar czf "$OUT/tables.tar.gz" -C "$WORK" tables && rm -rf "$WORK"

{ echo "### $(date -u '+%Y-%m-%d'), commit $(git rev-parse --short HEAD 2>/dev/null): $("$PY" benchmarks/common.py)"
  echo; printf '%b' "$ROWS"; echo
  echo "GPU check ${SMOKE_ARG:+(SMOKE on a CPU: no GPU figures) }done in $(($(date +%s) - START)) s."
} > "$OUT/summary.md"
echo; tee -a "$LOG" < "$OUT/summary.md"
