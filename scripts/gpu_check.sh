#!/usr/bin/env bash
# GPU check: one command for a machine lent with a GPU for a few minutes (no installs, no network).
#
#   bash scripts/gpu_check.sh                       # on the GPU machine, from anywhere
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh  # dry run of the same stages on CPU (tests/test_gpu_check.py)
#
# Stages, each with a time limit; a failed stage does not stop the next ones:
#   environment    python, torch, CUDA and the device as model.device describes it
#   nvidia-smi     when present
#   pytest-model   every test under tests/model, CPU ones too, with KRONOS_REQUIRE_CUDA=1 so the CUDA
#                  tests fail rather than skip; --confcutdir keeps out tests/conftest.py, which needs
#                  SQLAlchemy and pydantic-settings (tests/model uses none of its fixtures)
#   bench-predict  bench/predict.py on the GPU, float32 and bfloat16, each eager and with CUDA graphs,
#                  with the oracle at batch 1 and 64
#
# Everything goes to ${OUT:-/tmp/gpu-check}: gpu_check.log (all output), <stage>.log, pytest-model.xml,
# bench-predict.json (the bench's JSON line) and summary.txt. Exits 1 when any stage failed.
#
# Environment: PYTHON (default python3); GPU_CHECK_DEVICE (cuda | cpu: CPU dry run, tiny bench, no
# KRONOS_REQUIRE_CUDA); GPU_CHECK_TESTS (pytest paths, default tests/model).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-/tmp/gpu-check}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
read -r -a TESTS <<< "${GPU_CHECK_TESTS:-tests/model}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"

case "$DEVICE" in
    cuda)
        REQUIRE_CUDA=1
        BENCH_ARGS=(--device cuda --threads 4 --lookbacks 392,400,512 --batches 1,64,256
                    --full-window-batches 1,64 --oracle-batches 1,64 --pandas-batch 0 --dtypes fp32,bf16
                    --cuda-graphs) ;;
    cpu)
        REQUIRE_CUDA=0
        BENCH_ARGS=(--device cpu --threads 1 --lookbacks 12,20 --batches 1,2 --full-window-batches 1
                    --oracle-batches 1 --pred-len 4 --max-context 16 --pandas-batch 0 --dtypes fp32) ;;
    *)
        echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'" >&2
        exit 2 ;;
esac

SUMMARY=()
FAILED=0

# stage NAME SECONDS COMMAND...: run with a time limit, output to the log, the stage log and stdout.
stage() {
    local name=$1 limit=$2 start=$SECONDS rc status
    shift 2
    echo "=== $name: $*" | tee -a "$LOG"
    local limiter=(timeout --kill-after=10 "$limit")
    command -v timeout >/dev/null 2>&1 || limiter=()  # coreutils' timeout, where there is one
    "${limiter[@]}" "$@" 2>&1 | tee "$OUT_DIR/$name.log" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [[ $rc -eq 0 ]]; then
        status="ok"
    else
        status="FAILED rc=$rc"
        [[ $rc -eq 124 || $rc -eq 137 ]] && status="FAILED (timed out after ${limit}s)"
        FAILED=$((FAILED + 1))
    fi
    echo "=== $name: $status in $((SECONDS - start))s" | tee -a "$LOG"
    SUMMARY+=("$(printf '%-14s %s, %ss' "$name" "$status" "$((SECONDS - start))")")
}

# --- environment -----------------------------------------------------------------------------------
stage environment 45 "$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch
from model.device import device_info, resolve_device
device, warning = resolve_device(sys.argv[1])
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}")
print(device_info(device))
sys.exit(f"device {sys.argv[1]!r}: {warning}" if warning else 0)
EOF

# --- nvidia-smi ------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    stage nvidia-smi 30 nvidia-smi
else
    echo "=== nvidia-smi: not installed, skipped" | tee -a "$LOG"
    SUMMARY+=("$(printf '%-14s %s' nvidia-smi 'skipped (not installed)')")
fi

# --- pytest-model ----------------------------------------------------------------------------------
PYTEST_ARGS=(-q -p no:cacheprovider --confcutdir tests/model -rfEs --junitxml "$OUT_DIR/pytest-model.xml")
if "$PYTHON" -c "import xdist" >/dev/null 2>&1; then
    PYTEST_ARGS+=(-n 4)
fi
stage pytest-model 120 env KRONOS_REQUIRE_CUDA="$REQUIRE_CUDA" "$PYTHON" -m pytest "${PYTEST_ARGS[@]}" "${TESTS[@]}"

# --- bench-predict ---------------------------------------------------------------------------------
stage bench-predict 210 env PYTHONUNBUFFERED=1 "$PYTHON" bench/predict.py "${BENCH_ARGS[@]}"
tail -n 1 "$OUT_DIR/bench-predict.log" > "$OUT_DIR/bench-predict.json"

# --- summary ---------------------------------------------------------------------------------------
{
    echo "=== summary (device $DEVICE, output in $OUT_DIR)"
    printf '%s\n' "${SUMMARY[@]}"
    "$PYTHON" - "$OUT_DIR/bench-predict.json" 2>/dev/null <<'EOF' || echo "bench-predict: no JSON line"
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print("bench-predict rows (lookback batch dtype: seconds, identical to the oracle, close vs fp32):")
for r in rows:
    same = "-" if r["identical"] is None else r["identical"]
    err = "" if r["close_err_pct"] is None else f", {r['close_err_pct']:.3f}% / {r['close_err_sd']:.3f} sd"
    print(f"  {r['lookback']} {r['batch']} {r['dtype']}: {r['ours_s']:.3f}s, {same}{err}")
EOF
    if [[ $FAILED -eq 0 ]]; then
        echo "gpu_check: all stages passed"
    else
        echo "gpu_check: $FAILED stage(s) failed"
    fi
} | tee -a "$LOG" | tee "$OUT_DIR/summary.txt"
[[ $FAILED -eq 0 ]]
