#!/usr/bin/env bash
# The one prepared GPU run, for a machine with one NVIDIA GPU and no network; under 8 minutes with cold compiles.
#
#   scripts/gpu_check.sh            on the GPU machine (carry .whl/ from scripts/gpu_wheels.sh for what it lacks)
#   scripts/gpu_check.sh --dry-run  the same steps on CPU at tiny sizes (Triton's interpreter, gloo); tested in CI
#
# Riskiest first, each step under a timeout within one overall budget:
#   1. environment (GPU, driver, torch, triton, DeepSpeed) and the carried wheels (failing loudly);
#   2. train_smoke: the trainer itself, launched by DeepSpeed (NCCL) on the `mlperf` model at 300x300 on generated
#      data: bf16 autocast, torch.compile, Triton kernels, images decoded and augmented and boxes encoded on the
#      device, ~30 iterations, one evaluation through the background COCOeval; its MLPerf log parsed;
#   3. train_throughput: `ssd_ds.bench train` at micro-batch 128 and 256 (the trainer's own engine and step), with
#      model FLOPs per image and the fraction of the bf16 peak;
#   4. data_throughput: `ssd_ds.bench data`: the CPU input path per core, the device path at micro-batch 256;
#   5. kernel_tests on CUDA, then the kernel microbenchmarks (rows written as they are measured).
# Results in $OUT if set, else results/gpu_check: summary.md (also printed, last), steps.tsv and gpu_check.tar.gz
# (every log, CSV and the smoke run's directory): three files.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
RESULTS="${OUT:-results/gpu_check}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"  # the steps; start-up, wheels and packing take the rest of the 8 minutes
LIMIT_SCALE=1  # step limits are set for the GPU; the interpreter on 2 CPU cores needs more time per step
if ((DRY_RUN)); then BUDGET_S="${GPU_CHECK_BUDGET_S:-1200}" LIMIT_SCALE=4; fi
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # logs gather here and are packed into $RESULTS at the end
mkdir -p "$RESULTS"
: > "$WORK/steps.tsv"

finish() {  # whatever happened: pack everything, then print the summary table last
  "$PY" scripts/gpu_summary.py "$WORK" > /dev/null 2>&1 || echo "gpu_summary.py failed" > "$WORK/summary.md"
  cp "$WORK/summary.md" "$WORK/steps.tsv" "$RESULTS/"
  tar -czf "$RESULTS/gpu_check.tar.gz" -C "$WORK" --exclude=./synthetic --exclude=./torch_extensions \
    --exclude=./train_smoke/checkpoints .
  rm -rf "$WORK"
  echo
  cat "$RESULTS/summary.md"
}
trap finish EXIT

# step NAME LIMIT_S CMD...: CMD's output in $WORK/NAME.log, within LIMIT_S and what is left of the budget. CMD may
# be a function of this script (exported, run by bash under timeout).
step() {
  local name=$1 limit=$(($2 * LIMIT_SCALE))
  shift 2
  local left=$((BUDGET_S - SECONDS))
  if ((left < 20)); then
    printf '%s\tskipped(budget)\t0\t-\n' "$name" >> "$WORK/steps.tsv"
    echo "[$name] skipped: out of the time budget"
    return 1
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS rc status
  if declare -F "$1" > /dev/null; then set -- bash -c '"$@"' bash "$@"; fi  # an exported function, args kept
  timeout -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124) status="timeout(${limit}s)" ;;
    *) status="failed(rc=$rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s.log\n' "$name" "$status" "$((SECONDS - t0))" "$name" >> "$WORK/steps.tsv"
  echo "[$name] $status in $((SECONDS - t0)) s"
  return $rc
}

# --- 1. environment and carried wheels -----------------------------------------------------------------------
if ((DRY_RUN)); then
  export TRITON_INTERPRET=1 KERNEL_BENCH_DRY_RUN=1 CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu
  MODEL=cpu_small NUM_CLASSES=7 MICRO=4 TRAIN_IMAGES=48 VAL_IMAGES=8 WORKERS=1 COMPILE=off
  KERNEL_TESTS="tests/kernels/test_decode.py" KERNEL_BATCHES="2" BENCH_BATCHES=2 BENCH_STEPS=1 DATA_BATCH=4
  DATA_SECONDS=1
else
  unset TRITON_INTERPRET  # the kernels must run compiled on the GPU, not in the interpreter
  # 30 iterations of micro-batch 128 (the first throughput batch, so the bench finds the compiled graph cached)
  MODEL=mlperf NUM_CLASSES=81 MICRO=128 TRAIN_IMAGES=4000 VAL_IMAGES=300 WORKERS=12 COMPILE=on
  KERNEL_TESTS="tests/kernels --ignore=tests/kernels/test_compile_check.py" KERNEL_BATCHES="32 256"
  BENCH_BATCHES=128,256 BENCH_STEPS=10 DATA_BATCH=256 DATA_SECONDS=5
  if compgen -G ".whl/*.whl" > /dev/null; then
    echo "installing the carried wheels from .whl/ into /tmp/site"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl; then
      echo "error: installing .whl/*.whl failed (make them with scripts/gpu_wheels.sh on a machine with pip)" >&2
      exit 1
    fi
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}" PATH="/tmp/site/bin:$PATH"
  fi
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PY WORK MODEL NUM_CLASSES MICRO TRAIN_IMAGES VAL_IMAGES
export WORKERS COMPILE BENCH_BATCHES BENCH_STEPS DATA_BATCH DATA_SECONDS
# On the GPU machine a fresh directory for JIT-built ops (no lock file left by anyone else); a dry run keeps the
# environment's, where `make` built DeepSpeed's CPU op once (a rebuild costs a minute of CPU).
if ! ((DRY_RUN)) || [[ -z "${TORCH_EXTENSIONS_DIR:-}" ]]; then export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"; fi

if ! "$PY" - > "$WORK/env.txt" 2>&1 <<'PY'
import torch, triton, deepspeed, pycocotools, faster_coco_eval, mlperf_logging, torch.utils.tensorboard  # noqa: F401
gpu = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})" if torch.cuda.is_available() else "no CUDA GPU"
print(f"{gpu} | torch {torch.__version__} | triton {triton.__version__} | deepspeed {deepspeed.__version__}")
PY
then
  cat "$WORK/env.txt" >&2
  echo "error: a package the check needs does not import (carry it: scripts/gpu_wheels.sh)" >&2
  exit 1
fi
command -v nvidia-smi > /dev/null && nvidia-smi >> "$WORK/env.txt" 2>&1
head -1 "$WORK/env.txt"

# --- 2. the trainer, end to end ------------------------------------------------------------------------------
smoke() {
  "$PY" -m ssd_ds.data.synthetic "$WORK/synthetic" --train "$TRAIN_IMAGES" --val "$VAL_IMAGES" || return
  printf '{"train_micro_batch_size_per_gpu": %d, "gradient_accumulation_steps": 1,
           "torch_autocast": {"enabled": true, "dtype": "bfloat16"}}\n' "$MICRO" > "$WORK/ds_smoke.json"
  local port
  port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  deepspeed --num_gpus 1 --master_port "$port" --module ssd_ds.train --preset mlperf --model "$MODEL" \
    --backbone_weights none --data "$WORK/synthetic" --synthetic false --run_dir "$WORK/train_smoke" \
    --deepspeed_config "$WORK/ds_smoke.json" --epochs 1 --eval_epochs 1 --target_map 1.0 --division open \
    --compile "$COMPILE" --kernels triton --encode_on_device on --workers "$WORKERS" --eval_batch 64 \
    --log_every 5 --warmup_iters 10 --progress false --submission_platform gpu_check || return
  "$PY" scripts/gpu_summary.py --smoke "$WORK/train_smoke" > "$WORK/train_smoke.result"
}
export -f smoke
step train_smoke 180 smoke

# bench_rows NAME PATTERN CMD...: CMD's output, and its lines matching PATTERN in NAME.result as they are printed,
# so that a step cut by its limit keeps the rows it measured.
bench_rows() {
  local name=$1 pattern=$2
  shift 2
  "$@" | tee >(grep --line-buffered -E "$pattern" > "$WORK/$name.result")
  return "${PIPESTATUS[0]}"
}
export -f bench_rows

# --- 3. training-step throughput of the trainer's configuration ----------------------------------------------
step train_throughput 150 bench_rows train_throughput "^training step|^  batch" "$PY" -m ssd_ds.bench train \
  --model "$MODEL" --num_classes "$NUM_CLASSES" --batch "$BENCH_BATCHES" --steps "$BENCH_STEPS"

# --- 4. the input pipeline: the CPU path per core, the device path (decode and augment on the GPU) ------------
step data_throughput 90 bench_rows data_throughput "img/s|cores per" "$PY" -m ssd_ds.bench data \
  --data "$WORK/synthetic" --model "$MODEL" --batch "$DATA_BATCH" --seconds "$DATA_SECONDS"

# --- 5. kernels: tests on CUDA, then microbenchmarks ---------------------------------------------------------
# shellcheck disable=SC2086  # KERNEL_TESTS and KERNEL_BATCHES are word lists
step kernel_tests 90 "$PY" -m pytest -q -p no:cacheprovider $KERNEL_TESTS --junitxml="$WORK/kernel_tests.xml"
for op in loss decode encode; do
  # shellcheck disable=SC2086
  step "bench_$op" 30 "$PY" -m triton_kernels.benchmarks.bench_$op --batches $KERNEL_BATCHES --out "$WORK/bench_$op.csv"
done
exit 0
