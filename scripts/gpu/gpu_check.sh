#!/usr/bin/env bash
# The one prepared GPU run, for a machine with one NVIDIA H100 or H200 and no network: the trainer as users run it,
# then what its logs cannot show. Step limits sum to at most 450 s (printed first as the plan); a step that would
# outrun what is left of the budget is cut to it, and one that cannot start is skipped and said so.
#
#   scripts/gpu/gpu_check.sh [--compile-cache FILE]   on the GPU machine (carry .whl/ from scripts/gpu/gpu_wheels.sh)
#   scripts/gpu/gpu_check.sh --dry-run                the same steps on CPU at tiny sizes (Triton's interpreter, gloo);
#                                                     tested in CI (tests/tooling/test_gpu_check.py)
#
# Riskiest and most valuable first:
#   data   synthetic COCO-layout data with COCO-sized JPEGs (480-640 px a side), every 4th progressive;
#   train  the trainer, one process, at the shipped H200 configuration (ds_configs/h200_1x912_bf16.json: micro-batch
#          456, accumulation 2, bf16), 8 workers under `ulimit -n 1024`, --input device, --compile on, Triton
#          kernels, 3 short epochs with evaluations after epochs 2 and 3 in the background (COCOeval), the MLPerf log
#          parsed; steady-state img/s from epoch 2 on, warm-up seconds, recompiles and graph breaks (TORCH_LOGS),
#          peak memory, which decode path the images took; torch.compile's cache artifacts kept for the next run;
#   phases per micro-batch: host time waiting, preparing and launching; CUDA-event time of the side-stream
#          preparation and of the step; synchronising calls; decode img/s of 456 images batched and image by image;
#   race   the drain before nvJPEG proven: prepared batches equal a drained reference bit for bit;
#   loader the device input path's loader alone at 456 with 8 workers: img/s, most file descriptors held;
#   tests  the kernel tests (-x, in parallel) and the CUDA-only tests outside tests/kernels.
# Results in $OUT if set, else results/gpu_check: summary.md (also printed, last), steps.tsv, gpu_check.tar.gz (every
# log and the trainer's run directory, no data or checkpoints) and, when it fits in 16 MiB, compile_cache.bin: give
# it back with --compile-cache on a later run of the same torch and GPU to skip the cold compiles.
set -uo pipefail
cd "$(dirname "$0")/../.."

DRY_RUN=0 CACHE_IN=""
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --compile-cache) CACHE_IN="${2:?--compile-cache needs a file}"; shift ;;
    *) echo "usage: $0 [--dry-run] [--compile-cache FILE]" >&2; exit 2 ;;
  esac
  shift
done
RESULTS="${OUT:-results/gpu_check}"
# name:limit (seconds on the GPU); the plan, in order. A dry run scales the limits (2 CPU cores, the interpreter).
PLAN=(data:40 train:210 phases:75 race:25 loader:25 tests:60)
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
LIMIT_SCALE=1
if ((DRY_RUN)); then BUDGET_S="${GPU_CHECK_BUDGET_S:-1500}" LIMIT_SCALE=5; fi
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # logs gather here and are packed into $RESULTS at the end
mkdir -p "$RESULTS"
: > "$WORK/steps.tsv"
CACHE_MAX_BYTES=$((16 * 1024 * 1024))  # a larger cache stays out of $RESULTS, to keep the results small

total=0
for entry in "${PLAN[@]}"; do total=$((total + ${entry#*:})); done
echo "plan (limits on the GPU, s): ${PLAN[*]} = $total of $((DRY_RUN ? 450 : BUDGET_S))"

finish() {  # whatever happened: pack everything, then print the summary table last
  "$PY" scripts/gpu/gpu_summary.py "$WORK" > /dev/null 2>&1 || echo "gpu_summary.py failed" > "$WORK/summary.md"
  cp "$WORK/summary.md" "$WORK/steps.tsv" "$RESULTS/"
  if [[ -s "$WORK/compile_cache.bin" ]] && (($(stat -c %s "$WORK/compile_cache.bin") <= CACHE_MAX_BYTES)); then
    cp "$WORK/compile_cache.bin" "$RESULTS/"
  fi
  tar -czf "$RESULTS/gpu_check.tar.gz" -C "$WORK" --exclude=./synthetic --exclude=./torch_extensions \
    --exclude=./train/checkpoints --exclude=./compile_cache.bin .
  rm -rf "$WORK"
  echo
  cat "$RESULTS/summary.md"
}
trap finish EXIT

# step NAME CMD...: CMD's output in $WORK/NAME.log and its `probe `/result lines in NAME.result, within the plan's
# limit for NAME and what is left of the budget. CMD may be a function of this script (exported, run by bash).
step() {
  local name=$1 limit entry
  shift
  for entry in "${PLAN[@]}"; do [[ ${entry%%:*} == "$name" ]] && limit=$((${entry#*:} * LIMIT_SCALE)); done
  local left=$((BUDGET_S - SECONDS))
  if ((left < 15)); then
    printf '%s\tskipped(budget)\t0\t-\n' "$name" >> "$WORK/steps.tsv"
    echo "[$name] skipped: out of the time budget"
    return 1
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS rc status
  if declare -F "$1" > /dev/null; then set -- bash -c '"$@"' bash "$@"; fi  # an exported function, args kept
  timeout -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  grep -E '^(probe|result)[ :]' "$WORK/$name.log" >> "$WORK/$name.result" 2>/dev/null
  case $rc in
    0) status=ok ;;
    124) status="timeout(${limit}s)" ;;
    *) status="failed(rc=$rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s.log\n' "$name" "$status" "$((SECONDS - t0))" "$name" >> "$WORK/steps.tsv"
  echo "[$name] $status in $((SECONDS - t0)) s"
  return $rc
}

# --- environment and carried wheels --------------------------------------------------------------------------
if ((DRY_RUN)); then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu
  MODEL=cpu_small TRAIN_IMAGES=48 VAL_IMAGES=10 MIN_SIZE=48 MAX_SIZE=64 WORKERS=1 COMPILE=off EVAL_BATCH=4
  printf '{"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
           "torch_autocast": {"enabled": true, "dtype": "bfloat16"}}\n' > "$WORK/ds.json"
  DS_CONFIG="$WORK/ds.json" MICRO=4 PROBE_ITERS=2 RACE_BATCH=4 RACE_ITERS=2 LOADER_BATCHES=3
  TESTS="tests/kernels/test_decode.py" XDIST=""
else
  unset TRITON_INTERPRET  # the kernels must run compiled on the GPU, not in the interpreter
  # 4 iterations of 912 an epoch once ~3% of images without boxes are dropped; 500 val images leave a partial
  # evaluation batch (500 % 128 = 116), which a compiled evaluation pads
  MODEL=mlperf TRAIN_IMAGES=3900 VAL_IMAGES=500 MIN_SIZE=480 MAX_SIZE=640 WORKERS=8 COMPILE=on EVAL_BATCH=128
  DS_CONFIG=ds_configs/h200_1x912_bf16.json MICRO=456 PROBE_ITERS=8 RACE_BATCH=64 RACE_ITERS=20 LOADER_BATCHES=6
  TESTS="tests/kernels --ignore=tests/kernels/test_compile_check.py" XDIST="-n 8"
  if compgen -G ".whl/*.whl" > /dev/null; then
    echo "installing the carried wheels from .whl/ into /tmp/site"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl; then
      echo "error: installing .whl/*.whl failed (make them with scripts/gpu/gpu_wheels.sh on a machine with pip)" >&2
      exit 1
    fi
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}" PATH="/tmp/site/bin:$PATH"
  fi
fi
# every test that needs CUDA outside tests/kernels (skipped in a dry run)
CUDA_TESTS="tests/unit/data/test_device_input.py::test_cuda_decode_falls_back_per_image"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PY WORK MODEL TRAIN_IMAGES VAL_IMAGES MIN_SIZE MAX_SIZE
export WORKERS COMPILE EVAL_BATCH DS_CONFIG MICRO PROBE_ITERS RACE_BATCH RACE_ITERS LOADER_BATCHES
# On the GPU machine a fresh directory for JIT-built ops (no lock file left by anyone else); a dry run keeps the
# environment's, where `make` built DeepSpeed's CPU op once (a rebuild costs a minute of CPU).
if ! ((DRY_RUN)) || [[ -z "${TORCH_EXTENSIONS_DIR:-}" ]]; then export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"; fi
if [[ -n "$CACHE_IN" ]]; then cp "$CACHE_IN" "$WORK/compile_cache.bin" || exit 1; fi

if ! "$PY" - > "$WORK/env.txt" 2>&1 <<'PY'
import torch, torchvision, triton, deepspeed, pycocotools, faster_coco_eval, mlperf_logging  # noqa: F401
import torch.utils.tensorboard  # noqa: F401
gpu = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})" if torch.cuda.is_available() else "no CUDA GPU"
print(f"{gpu} | torch {torch.__version__} | torchvision {torchvision.__version__} | triton {triton.__version__} | "
      f"deepspeed {deepspeed.__version__}")
PY
then
  cat "$WORK/env.txt" >&2
  echo "error: a package the check needs does not import (carry it: scripts/gpu/gpu_wheels.sh)" >&2
  exit 1
fi
command -v nvidia-smi > /dev/null && nvidia-smi >> "$WORK/env.txt" 2>&1
head -1 "$WORK/env.txt"

# --- data --------------------------------------------------------------------------------------------------------
data() {
  "$PY" -m ssd_ds.data.synthetic "$WORK/synthetic" --train "$TRAIN_IMAGES" --val "$VAL_IMAGES" \
    --min-size "$MIN_SIZE" --max-size "$MAX_SIZE" || return
  "$PY" scripts/gpu/gpu_probe.py progressive "$WORK/synthetic" --every 4
}
export -f data
step data data || exit 1  # nothing after it has data to read

# --- the trainer, end to end, as users run it ----------------------------------------------------------------
train() {
  ulimit -n 1024  # a common default on GPU nodes and under Slurm
  TORCH_LOGS="recompiles,graph_breaks" "$PY" -m ssd_ds.train --preset mlperf --model "$MODEL" \
    --backbone_weights none --data "$WORK/synthetic" --synthetic false --run_dir "$WORK/train" \
    --deepspeed_config "$DS_CONFIG" --epochs 3 --eval_epochs 2 --target_map 1.0 --division open \
    --compile "$COMPILE" --kernels triton --input device --encode_on_device on --workers "$WORKERS" \
    --eval_batch "$EVAL_BATCH" --log_every 1 --progress false --loader_timeout 60 \
    --compile_cache "$WORK/compile_cache.bin" --submission_platform gpu_check || return
  "$PY" scripts/gpu/gpu_summary.py --smoke "$WORK/train" "$WORK/train.log"
}
export -f train
step train train

# --- what the trainer's logs cannot show -------------------------------------------------------------------------
phases() {
  ulimit -n 1024
  "$PY" scripts/gpu/gpu_probe.py phases --data "$WORK/synthetic" --deepspeed_config "$DS_CONFIG" --model "$MODEL" \
    --compile "$COMPILE" --workers "$WORKERS" --iters "$PROBE_ITERS" --eval_batch "$EVAL_BATCH"
}
export -f phases
step phases phases
step race "$PY" scripts/gpu/gpu_probe.py race --data "$WORK/synthetic" --batch "$RACE_BATCH" --iters "$RACE_ITERS"
loader() {
  ulimit -n 1024
  "$PY" scripts/gpu/gpu_probe.py loader --data "$WORK/synthetic" --batch "$MICRO" --workers "$WORKERS" \
    --batches "$LOADER_BATCHES"
}
export -f loader
step loader loader

# --- tests on CUDA -------------------------------------------------------------------------------------------
# shellcheck disable=SC2086  # TESTS and XDIST are word lists
step tests "$PY" -m pytest -q -x $XDIST -p no:cacheprovider $TESTS $CUDA_TESTS --junitxml="$WORK/tests.xml"
exit 0
