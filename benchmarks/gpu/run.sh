#!/usr/bin/env bash
# The whole GPU validation in one short run, for a lent H200 (or any CUDA machine):
#
#   bash benchmarks/gpu/run.sh OUTDIR            # on the GPU machine, from anywhere
#   bash benchmarks/gpu/run.sh OUTDIR --dry-run  # here, without a GPU: checks the tools
#                                                # and runs the CPU-side steps quickly
#
# Parts, each timed and capped so the whole stays under FASTGAN_GPU_BUDGET seconds
# (default 450 = 7.5 minutes; the device lease allows one rerun):
#   1. env     nvidia-smi, python, torch, triton, nvcc versions
#   2. build   the extension with CUDA kernels for sm_90 (FASTGAN_CUDA=1,
#              FASTGAN_CUDA_ARCH=9.0, MAX_JOBS=16, pip --no-build-isolation --no-deps -e .;
#              no network is needed)
#   3. info    python -m fastgan info (which backends run)
#   4. tests   the whole test suite on a machine with CUDA (CUDA-parametrised tests run)
#   5. bench   benchmarks/run.py --device cuda, float32 and bfloat16, ceilings (device copy,
#              bf16 matmul) in the same run; JSON + RESULTS.md into OUTDIR
#   6. static  (only with --static) benchmarks/gpu/static_check.py with the machine's nvcc
# Writes into OUTDIR (at most 8 files, so the device tool can bring them all back):
#   run.log (everything), cuda.json, RESULTS.md, bench.log, tests.xml, [static_check.json]
# and prints the benchmark summary, then a table of the parts, last.
# Plots are not drawn there (file-count limit): regenerate them here with
#   python benchmarks/report.py OUTDIR/cuda.json benchmarks/results/cpu.json
set -uo pipefail

OUT=""
DRY=0
STATIC=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --static) STATIC=1 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        -*) echo "run.sh: unknown option $arg" >&2; exit 2 ;;
        *) OUT="$arg" ;;
    esac
done
if [ -z "$OUT" ]; then
    echo "usage: bash benchmarks/gpu/run.sh OUTDIR [--dry-run] [--static]" >&2
    exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/run.log"
: > "$LOG"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
export PYTHONUNBUFFERED=1
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
unset TRITON_INTERPRET   # compiled Triton on the GPU, never the interpreter
BUDGET="${FASTGAN_GPU_BUDGET:-450}"
START=$(date +%s)
PARTS=()
FAILED=0

log() { echo "$@" | tee -a "$LOG"; }

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# part NAME CAP_SECONDS COMMAND...: run with a timeout of min(CAP, what is left of the
# budget minus a reserve for the later parts), log it, record status and seconds.
part() {
    local name="$1" cap="$2"; shift 2
    local left t0 rc secs
    left=$(( $(remaining) - ${RESERVE:-0} ))
    if [ "$left" -lt "$cap" ]; then cap="$left"; fi
    if [ "$cap" -le 5 ]; then
        log "== $name: skipped, the time budget (${BUDGET}s) is spent"
        PARTS+=("$name|skipped|0")
        FAILED=1
        return 0
    fi
    log "== $name (limit ${cap}s): $*"
    t0=$(date +%s)
    if declare -F "$1" >/dev/null; then set -- bash -c "$1"; fi   # a function of this script
    timeout --signal=INT --kill-after=20 "$cap" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    secs=$(( $(date +%s) - t0 ))
    local status="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="timeout"; FAILED=1
    elif [ "$rc" -ne 0 ]; then status="exit $rc"; FAILED=1; fi
    log "== $name: $status in ${secs}s"
    PARTS+=("$name|$status|$secs")
    return 0
}

env_part() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
    else
        echo "nvidia-smi: not found"
    fi
    "$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}  torch {torch.__version__} (CUDA {torch.version.cuda})  "
      f"cuda available: {torch.cuda.is_available()}"
      + (f"  device: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
try:
    import triton; print(f"triton {triton.__version__}")
except Exception as exc:
    print(f"triton: not importable ({exc})")
for mod in ("pytest", "pytest_benchmark", "ninja", "setuptools", "matplotlib"):
    try:
        m = __import__(mod); print(f"{mod} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"{mod}: MISSING ({exc})")
EOF
    NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
    command -v "$NVCC" >/dev/null 2>&1 || NVCC="$(command -v nvcc || true)"
    if [ -n "$NVCC" ]; then "$NVCC" --version | tail -2; else echo "nvcc: not found"; fi
    echo "cpus: $(nproc)"
}

build_part() {
    FASTGAN_CUDA=1 FASTGAN_CUDA_ARCH="${FASTGAN_CUDA_ARCH:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
        "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -25
    return "${PIPESTATUS[0]}"
}

export PY
export -f env_part build_part

if [ "$DRY" = 1 ]; then
    # Here (no GPU): the tools exist, the entry points parse, the suite collects, and the
    # benchmark runner + report work end to end on the CPU ceilings, quickly.
    log "run.sh --dry-run: CPU-side steps only (no build with CUDA, no timing of the suite)"
    part env 60 env_part
    part tools 30 bash -c "command -v timeout && command -v tee && '$PY' -c 'import pytest, pytest_benchmark, setuptools' && echo tools ok"
    part info 60 "$PY" -m fastgan info
    part collect 120 "$PY" -m pytest --collect-only -q tests -p no:cacheprovider
    part bench-help 30 "$PY" benchmarks/run.py --help
    part bench-cpu 240 "$PY" benchmarks/run.py --device cpu --quick --only ceiling --out "$OUT" --no-plots --timeout 200
    log "would run on the GPU:"
    log "  FASTGAN_CUDA=1 FASTGAN_CUDA_ARCH=9.0 MAX_JOBS=16 $PY -m pip install --no-build-isolation --no-deps --no-index -e ."
    log "  $PY -m pytest -q tests --junitxml=$OUT/tests.xml"
    log "  $PY benchmarks/run.py --device cuda --dtypes float32,bfloat16 --out $OUT --no-plots"
else
    # Reserve time for the later parts so that a slow build cannot starve the tests and
    # benchmarks. Caps and reserves are for the default 450 s budget, scaled to others.
    s() { echo $(( $1 * BUDGET / 450 )); }
    RESERVE=$(s 400) part env "$(s 30)" env_part
    RESERVE=$(s 260) part build "$(s 180)" build_part
    RESERVE=$(s 230) part info "$(s 40)" "$PY" -m fastgan info
    TIMEOUT_ARGS=()
    if "$PY" -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_ARGS=(--timeout=90); fi
    RESERVE=$(s 170) part tests "$(s 200)" "$PY" -m pytest -q tests -p no:cacheprovider -rfE --maxfail=25 \
        --junitxml="$OUT/tests.xml" "${TIMEOUT_ARGS[@]}"
    BENCH_CAP=$(( $(remaining) - 20 - STATIC * 60 ))
    BENCH_STOP=$(( BENCH_CAP - 30 )); [ "$BENCH_STOP" -ge 10 ] || BENCH_STOP=10
    RESERVE=$(( STATIC * 60 )) part bench "$BENCH_CAP" "$PY" benchmarks/run.py --device cuda \
        --dtypes float32,bfloat16 --out "$OUT" --no-plots --timeout "$BENCH_STOP" \
        -- --benchmark-max-time=0.1 --benchmark-min-rounds=5
    if [ "$STATIC" = 1 ]; then
        part static 60 "$PY" benchmarks/gpu/static_check.py --arch 90 --jobs "$(nproc)" --json "$OUT/static_check.json"
    fi
fi

if [ -f "$OUT/cuda.json" ] || [ -f "$OUT/cpu.json" ]; then
    echo
    echo "== benchmark summary (full tables in $OUT/RESULTS.md)"
    STATIC_ARG=()
    [ -f "$OUT/static_check.json" ] && STATIC_ARG=(--static "$OUT/static_check.json")
    "$PY" benchmarks/report.py "$OUT"/c*.json --out "$OUT/RESULTS.md" --plots none "${STATIC_ARG[@]}" 2>&1 \
        | tail -60 | tee -a "$LOG"
fi
echo | tee -a "$LOG"
log "== parts (budget ${BUDGET}s, total $(( $(date +%s) - START ))s)"
for p in "${PARTS[@]}"; do
    IFS='|' read -r name status secs <<< "$p"
    printf '%-12s %-10s %5ss\n' "$name" "$status" "$secs" | tee -a "$LOG"
done
log "outputs: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$FAILED"
