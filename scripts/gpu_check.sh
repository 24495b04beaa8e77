#!/usr/bin/env bash
# One-GPU check for a machine with one NVIDIA GPU and no network; finishes in under 8 minutes.
#   scripts/gpu_check.sh            results in $OUT if set, else results/gpu_check
# Steps: the kernel tests on CUDA (real sizes included), then the kernel microbenchmarks. Each step runs under a
# timeout within one overall budget, logs to <results>/<step>.log and records its status in steps.tsv; the last thing
# printed is one summary table (also in summary.md). Packages missing here are installed from wheels carried in
# .whl/ (git-ignored). The last step times training steps of the MLPerf model (ssd_ds.bench train).
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS="${OUT:-results/gpu_check}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"  # 7.5 min for the steps; the summary takes a second
PY="${PYTHON:-python3}"
mkdir -p "$RESULTS"
: > "$RESULTS/steps.tsv"

if ! "$PY" -c "import torch, torchvision, triton, pytest, numpy" 2>/dev/null; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    echo "installing carried wheels from .whl/ into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  else
    echo "warning: packages are missing and .whl/ holds no wheels; the steps below will fail" >&2
  fi
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
unset TRITON_INTERPRET  # the kernels must run compiled on the GPU, not in the interpreter

# step NAME LIMIT_S CMD...: run CMD with its output in $RESULTS/NAME.log, within LIMIT_S and the remaining budget.
step() {
  local name=$1 limit=$2
  shift 2
  rm -f "$RESULTS/$name".{log,csv,xml}  # no stale results from an earlier run
  local left=$((BUDGET_S - SECONDS))
  if ((left < 30)); then
    printf '%s\tskipped(budget)\t0\t-\n' "$name" >> "$RESULTS/steps.tsv"
    echo "[$name] skipped: out of the time budget"
    return
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS rc status
  timeout -k 10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124) status="timeout(${limit}s)" ;;
    *) status="failed(rc=$rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s.log\n' "$name" "$status" "$((SECONDS - t0))" "$name" >> "$RESULTS/steps.tsv"
  echo "[$name] $status in $((SECONDS - t0)) s"
}

{
  "$PY" -c "import torch, triton; print(torch.cuda.get_device_name(), '| torch', torch.__version__, '| triton', triton.__version__)" \
    2> /dev/null || echo "torch sees no CUDA GPU"
  nvidia-smi
} > "$RESULTS/env.txt" 2>&1

# compile_check runs in CI (no GPU needed), so its test is left out of the GPU budget.
step kernel_tests 200 "$PY" -m pytest -q tests/kernels --ignore=tests/kernels/test_compile_check.py \
  --junitxml="$RESULTS/kernel_tests.xml"
for op in loss decode encode; do
  step "bench_$op" 100 "$PY" -m triton_kernels.benchmarks.bench_$op --out "$RESULTS/bench_$op.csv"
done
# Training-step throughput of the benchmark model: layouts, bf16 and the Triton loss against fp32 eager.
step train_throughput 150 "$PY" -m ssd_ds.bench train --model mlperf --batch 64 --steps 10

"$PY" scripts/gpu_summary.py "$RESULTS"
