#!/usr/bin/env bash
# A single-node Slurm on this machine, for trying scripts/launch/run.sub for real (tests/e2e/test_slurm.py; CI):
# Debian's slurmctld, slurmd and munge, run as root, on loopback, with a small slurm.conf in $SLURM_DIR.
#
#   scripts/slurm/local_slurm.sh install      # apt-get install slurmctld slurmd munge slurm-client (root)
#   scripts/slurm/local_slurm.sh start [CPUS]  # writes $SLURM_DIR/slurm.conf, starts munged, slurmctld, slurmd
#   export SLURM_CONF=$SLURM_DIR/slurm.conf    # then sbatch, squeue, scontrol use it
#   scripts/slurm/local_slurm.sh stop
#
# SLURM_DIR defaults to /tmp/ssd_ds_slurm. `start` stops a Slurm it started before (and waits until it is gone),
# begins with an empty job state and waits until the node is idle; it exits non-zero, saying why, when it cannot get
# there (no root, a daemon that does not start).
set -euo pipefail

SLURM_DIR=${SLURM_DIR:-/tmp/ssd_ds_slurm}
CONF=$SLURM_DIR/slurm.conf

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

install() {
  [ "$(id -u)" = 0 ] || die "installing needs root"
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd munge slurm-client >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd munge \
         slurm-client >/dev/null; } || die "apt-get install slurmctld slurmd munge slurm-client failed"
}

start() {
  local cpus=${1:-2} host
  [ "$(id -u)" = 0 ] || die "the daemons run as root here; not root"
  for cmd in slurmctld slurmd munged sbatch; do
    command -v $cmd >/dev/null || die "$cmd not installed ($0 install)"
  done
  host=$(hostname -s)
  stop 2>/dev/null || true
  # A fresh cluster each start: jobs left in the saved state by an earlier run would be recovered and take the node.
  rm -rf "$SLURM_DIR"/{state,spool}
  mkdir -p "$SLURM_DIR"/{state,spool,log} /run/munge
  cat > "$CONF" <<CONF
ClusterName=ssdds
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
MpiDefault=none
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
KillWait=10
MinJobAge=300
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  chown munge:munge /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- munged || munged --force || die "munged did not start"
  fi
  slurmctld -f "$CONF" || die "slurmctld did not start: $(tail -n 5 "$SLURM_DIR/log/slurmctld.log" 2>/dev/null)"
  slurmd -f "$CONF" || die "slurmd did not start: $(tail -n 5 "$SLURM_DIR/log/slurmd.log" 2>/dev/null)"
  export SLURM_CONF=$CONF
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
      echo "Slurm up: export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.5
  done
  die "the node did not become idle in 30 s: $(sinfo -h 2>&1 | head -n 3); $(tail -n 5 "$SLURM_DIR/log/slurmd.log" 2>/dev/null)"
}

alive() {  # those of the given pids that still run (zombies do not: nothing may reap a daemon here)
  local pid
  for pid; do
    [[ $(ps -o stat= -p "$pid" 2>/dev/null) == [^Z]* ]] && echo "$pid"
  done
  return 0
}

steps() {  # this Slurm's job steps: slurmstepd processes started by its slurmd (their directory is in $SLURM_DIR)
  local pid
  for pid in $(pgrep -x slurmstepd); do
    [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$SLURM_DIR"* ]] && echo "$pid"
  done
  return 0
}

with_children() {  # the given pids and all their descendants
  local pid
  for pid; do
    echo "$pid"
    # shellcheck disable=SC2046
    with_children $(pgrep -P "$pid")
  done
}

gone_within() {  # gone_within SECONDS COMMAND...: wait until COMMAND prints nothing; fails after SECONDS
  local tries=$(($1 * 2))
  shift
  for _ in $(seq "$tries"); do
    [ -z "$("$@")" ] && return 0
    sleep 0.5
  done
  return 1
}

stop() {
  local pids
  # Cancel the jobs first and let their steps end: a step left behind outlives slurmd, and a later Slurm that
  # hands out its job id again cannot launch that job.
  # (Only with its controller up: scancel waits about 18 s for one that is not.)
  if pgrep -x -f "slurmctld -f $CONF" >/dev/null && SLURM_CONF=$CONF scancel --user "$(id -un)" 2>/dev/null; then
    gone_within 20 steps || true
  fi
  # The daemons started with this slurm.conf (their pid files can name a newer one that failed to start). Wait until
  # they are gone: a daemon still shutting down holds its port, and a start right after would fail ("Address already
  # in use") or leave two of them.
  pids=$(pgrep -x -f "slurm(ctld|d) -f $CONF" || true)
  # shellcheck disable=SC2086  # $pids: one pid a word
  if [ -n "$pids" ]; then
    kill $pids 2>/dev/null || true
    gone_within 30 alive $pids || true
  fi
  rm -f "$SLURM_DIR/slurmd.pid" "$SLURM_DIR/slurmctld.pid"
  # What is left: a daemon that would not stop, and steps whose slurmd died, with the job processes under them.
  # shellcheck disable=SC2046
  kill -9 $(alive $pids) $(with_children $(steps)) 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 install | start [CPUS] | stop" >&2; exit 2 ;;
esac
