#!/usr/bin/env bash
# Runs the benchmark and prints the time to train from the MLPerf log (like NVIDIA's v0.7 submission's run_and_time.sh).
#
#   source scripts/launch/config_DGXA100.sh
#   DATADIR=/data/coco LOGDIR=/results scripts/launch/run_and_time.sh [trainer flags]
#
# The run's settings come from $SYSTEM_CONFIG (--config); trainer flags given here apply on top of it.
# LAUNCH=deepspeed (default): one DeepSpeed launcher for this node's $DGXNGPU GPUs (Docker, a single node).
# LAUNCH=direct: this process is one rank; RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT come from the caller
# (run.sub sets them from Slurm's variables).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${DATADIR:?set DATADIR to the COCO directory}"
: "${LOGDIR:?set LOGDIR to where run directories go}"
: "${SYSTEM_CONFIG:?source a scripts/launch/config_<SYSTEM>.sh first}"
RUN_ID=${RUN_ID:-${SLURM_JOB_ID:-$(date +%y%m%d%H%M%S)}}
RUN_DIR=${LOGDIR}/ssd_${DGXSYSTEM:-local}_${RUN_ID}
PYTHON=${PYTHON:-python3}
ARGS=(--config "$SYSTEM_CONFIG" --data "$DATADIR" --run_dir "$RUN_DIR" --seed "${SEED:-$RANDOM}")

case "${LAUNCH:-deepspeed}" in
  deepspeed) deepspeed --num_gpus "${DGXNGPU:-1}" --module ssd_ds.train "${ARGS[@]}" "$@" ;;
  direct) "$PYTHON" -m ssd_ds.train "${ARGS[@]}" "$@" ;;
  *) echo "run_and_time.sh: LAUNCH must be deepspeed or direct, got '${LAUNCH}'" >&2; exit 2 ;;
esac

if [ "${RANK:-0}" = 0 ]; then
  "$PYTHON" -m ssd_ds.mlperf_log "$RUN_DIR/mlperf.log"
fi
