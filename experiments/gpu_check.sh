#!/usr/bin/env bash
# One-shot GPU check (issue 10): the `gpu` tests, the benchmark of all six victims at batch 16 (256 px), and the CMUA
# end-to-end iteration (four victims, 256 px) at batch 16 and 64 in fp32 and on the fast path; results land in $OUT.
# Example (GPU machine, repository root): bash experiments/gpu_wheels.sh (where PyPI is) ; bash experiments/gpu_check.sh
# Example (the same entry points on the CPU at tiny sizes, minutes): bash experiments/gpu_check.sh --dry-run
#
# Installs nothing but the wheels in .whl/ (hydra-core, omegaconf, antlr4-python3-runtime; experiments/gpu_wheels.sh
# makes them), into /tmp/advwm_site, when Hydra is missing; advwm itself runs from this checkout (PYTHONPATH).
# Parts (each step has its own time limit, and every finished step's results are kept even if a later one is cut):
#   --part 1  quick gpu tests (no compile), bench without compile (6 victims, batch 16), CMUA end to end fp32 at
#             batch 16 and 64 (the 80 GB promise)                                    about 5 minutes on an H100
#   --part 2  CMUA end to end on the fast path (bf16 + channels_last + compile), bench's compiled plan, the gpu tests
#             that compile, fp32 vs bf16 on the fixtures when ./.fixtures/victims is there   about 8-12 minutes
#   (default: both). Outputs ($OUT, default outputs/gpu_check; at most 8 files, for the device tool): gpu_check.log
#   (every step's output), summary.md, bench.json, bench_compile.json, e2e_fp32.json, e2e_fast.json, precision.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=all DRY=0 FULL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --part) PART=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --full) FULL=1; shift ;;  # with --dry-run: also the tests that compile (13 minutes on 2 CPU cores)
    *) echo "usage: $0 [--part 1|2] [--dry-run [--full]]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
SCRATCH=$(mktemp -d /tmp/advwm_gpu_check.XXXXXX)
export WANDB_MODE=offline PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/advwm_site .whl/*.whl \
      >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/advwm_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "no Hydra and no .whl/: run experiments/gpu_wheels.sh where PyPI is and carry .whl" | tee -a "$LOG"
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$DRY" = 1 ]; then  # the CPU, tiny networks, one thread: the same Python entry points in minutes
  export ADVWM_GPU_DRY_RUN=1
  DEVICE=cpu SIZE=32 BATCH=2 ITER=1 E2E="2 4" EXTRA="--tiny --threads 1" COMPILE_VICTIMS="stargan"
  PRECISION_ARGS="--seeds 0 --iterations 3"
  [ "$FULL" = 1 ] || SKIP_COMPILE_TESTS=1
else
  DEVICE=cuda SIZE=256 BATCH=16 ITER=5 E2E="16 64" EXTRA="" COMPILE_VICTIMS=${COMPILE_VICTIMS:-"hisd ugatit stargan attgan stgan aggan"}
  PRECISION_ARGS="--seeds 0 1 2 --iterations 20"
fi
VICTIMS="stargan aggan attgan hisd stgan ugatit"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output appended to the log, status in the summary
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
  echo "- $name: exit $rc after $((SECONDS - start)) s" >>"$OUT/summary.md"
  return 0
}
keep() {  # keep RESULT_DIR NAME: bench.json -> $OUT/NAME.json, bench.md appended to the summary
  [ -f "$1/bench.json" ] && cp "$1/bench.json" "$OUT/$2.json" && { echo; cat "$1/bench.md"; } >>"$OUT/summary.md"
  return 0
}

{ echo "# advwm GPU check ($(date -u +%FT%TZ), part $PART, dry run $DRY)"; echo; } >>"$OUT/summary.md"
step environment 120 "$PY" -c "import torch, lightning, platform; print(platform.platform()); print('torch', torch.__version__, \
'lightning', lightning.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
command -v nvidia-smi >/dev/null && nvidia-smi >>"$LOG" 2>&1

if [ "$PART" = all ] || [ "$PART" = 1 ]; then
  step tests_quick 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -k "not compile and not pipeline" -rs
  step bench 420 "$PY" experiments/bench.py --device "$DEVICE" --size "$SIZE" --batch "$BATCH" --iterations "$ITER" \
    --victims $VICTIMS --no-compile $EXTRA --out "$SCRATCH/bench"
  keep "$SCRATCH/bench" bench
  step e2e_fp32 420 "$PY" experiments/bench.py --device "$DEVICE" --size "$SIZE" --victims --e2e-batches $E2E \
    --e2e-plans fp32 --e2e-steps 2 $EXTRA --out "$SCRATCH/e2e_fp32"
  keep "$SCRATCH/e2e_fp32" e2e_fp32
fi
if [ "$PART" = all ] || [ "$PART" = 2 ]; then
  step e2e_fast 480 "$PY" experiments/bench.py --device "$DEVICE" --size "$SIZE" --victims --e2e-batches $E2E \
    --e2e-plans gpu_fast --e2e-steps 2 --e2e-warmup 2 $EXTRA --out "$SCRATCH/e2e_fast"
  keep "$SCRATCH/e2e_fast" e2e_fast
  step bench_compile 600 "$PY" experiments/bench.py --device "$DEVICE" --size "$SIZE" --batch "$BATCH" --iterations "$ITER" \
    --victims $COMPILE_VICTIMS --plans compile --compile $EXTRA --out "$SCRATCH/bench_compile"
  keep "$SCRATCH/bench_compile" bench_compile
  if [ "${SKIP_COMPILE_TESTS:-0}" = 1 ]; then
    echo "- tests_compile: skipped in a dry run (add --full)" >>"$OUT/summary.md"
  else
    step tests_compile 480 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -k "compile or pipeline" -rs
  fi
  FIXTURES=${FIXTURES:-.fixtures/victims}
  [ -d "$FIXTURES" ] || FIXTURES=../shared/fixtures/victims
  if [ -d "$FIXTURES" ]; then
    step precision 300 "$PY" experiments/precision.py --device "$DEVICE" --fixtures "$FIXTURES" $PRECISION_ARGS \
      --out "$SCRATCH/precision"
    [ -f "$SCRATCH/precision/precision.json" ] && cp "$SCRATCH/precision/precision.json" "$OUT/" && \
      { echo; cat "$SCRATCH/precision/precision.md"; } >>"$OUT/summary.md"
  else
    echo "- precision: skipped (no fixtures: copy ../shared/fixtures/victims to .fixtures/victims and carry it)" \
      >>"$OUT/summary.md"
  fi
fi
rm -rf "$SCRATCH"
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
