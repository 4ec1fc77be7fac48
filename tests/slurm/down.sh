#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by tests/slurm/up.sh: cancels its jobs, then
# stops slurmd, slurmctld and (when up.sh started it) munged by their PID files.
# Idempotent: does nothing for daemons that are not running.
set -uo pipefail

STATE=${SCVAE_SLURM_STATE:-/var/tmp/scvae-slurm}

log() { echo "slurm down: $*"; }

alive() { # alive PIDFILE
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop() { # stop NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    if ! alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null
        log "killed $name (pid $pid)"
    else
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

if alive "$STATE/slurmctld.pid" && command -v scancel >/dev/null; then
    # Cancel every job of the test cluster, and wait (briefly) for them to end.
    timeout 10 scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do
        [[ -z $(timeout 5 squeue -h -t RUNNING,COMPLETING,PENDING -o %i 2>/dev/null) ]] && break
        sleep 0.2
    done
fi

stop slurmd "$STATE/slurmd.pid"
stop slurmctld "$STATE/slurmctld.pid"
stop munged "$STATE/munged.pid"
exit 0
