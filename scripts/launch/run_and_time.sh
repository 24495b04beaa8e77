#!/usr/bin/env bash
# Runs the benchmark and prints the time to train from the MLPerf log (like NVIDIA's v0.7 submission's run_and_time.sh).
#
#   source scripts/launch/config_DGXA100.sh
#   DATADIR=/data/coco LOGDIR=/results scripts/launch/run_and_time.sh [trainer flags]
#
# The run's settings come from $SYSTEM_CONFIG (--config); trainer flags given here apply on top of it. At its end the
# trainer (rank 0) prints the MLPerf compliance checker's verdict and the RESULT line.
# LAUNCH=deepspeed (default): one DeepSpeed launcher for this node's $DGXNGPU GPUs (Docker, a single node).
# LAUNCH=direct: this process is one rank; RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT come from the caller
# (run.sub sets them from Slurm's variables).
#
# Stop signals (SIGTERM, SIGUSR1: docker stop, Slurm's warning before a time limit) are passed on to the trainer's
# ranks, which save a checkpoint and exit with 75, this script's exit code then: resume with `--resume auto` (run.sub
# requeues the job). The script itself keeps running until they are done.
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
  deepspeed) deepspeed --num_gpus "${DGXNGPU:-1}" --module ssd_ds.train "${ARGS[@]}" "$@" & ;;
  direct) "$PYTHON" -m ssd_ds.train "${ARGS[@]}" "$@" & ;;
  *) echo "run_and_time.sh: LAUNCH must be deepspeed or direct, got '${LAUNCH}'" >&2; exit 2 ;;
esac
TRAINER=$!

# The ranks: the trainer itself, or the children of DeepSpeed's per-node launcher (its runner's child), whose own
# SIGTERM handler would kill them after 30 s instead of letting them save.
ranks() {
  if [ "${LAUNCH:-deepspeed}" = direct ]; then
    echo "$TRAINER"
  else
    local launcher
    for launcher in $(pgrep -P "$TRAINER"); do pgrep -P "$launcher"; done
  fi
}
forward() {
  interrupted=1
  echo "run_and_time.sh: $1 received, passed on to the trainer's ranks" >&2
  kill -s "$1" $(ranks) 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

while true; do  # a trapped signal interrupts `wait`; the trainer goes on, to be waited for again
  interrupted=0 status=0
  wait "$TRAINER" || status=$?
  [ "$interrupted" = 1 ] || break
done
exit "$status"
