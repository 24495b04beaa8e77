#!/usr/bin/env bash
# Single-node launch in Docker (NVIDIA's v0.7 submission's alternative to Slurm):
#
#   docker build -t ssd_ds .
#   source scripts/launch/config_DGXA100.sh
#   CONT=ssd_ds DATADIR=/data/coco LOGDIR=/results scripts/launch/run_with_docker.sh [trainer flags]
#
# Stopped with `docker stop -t 300` (SIGTERM), the trainer saves a checkpoint and the script exits with 75; run it
# again with the same RUN_ID and `--resume auto` to continue (docs/launching.md, "Preemption").
set -euo pipefail

: "${CONT:?set CONT to the image}" "${DATADIR:?set DATADIR to the COCO directory}" "${LOGDIR:?set LOGDIR}"
: "${DGXNGPU:?source a scripts/launch/config_<SYSTEM>.sh first}" "${SYSTEM_CONFIG:?}"
mkdir -p "$LOGDIR"
# --ipc=host: the loader workers pass batches through /dev/shm (about 2 GB at micro-batch 456; Docker gives 64 MB)
docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
  -v "$DATADIR:/data:ro" -v "$LOGDIR:/results" \
  -e DGXSYSTEM -e DGXNGPU -e SYSTEM_CONFIG -e SEED -e RUN_ID -e DATADIR=/data -e LOGDIR=/results -e LAUNCH=deepspeed \
  "$CONT" scripts/launch/run_and_time.sh "$@"
