#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for tests/slurm (Debian 12 packages:
# munge, slurmctld, slurmd, slurm-client 22.05). Idempotent: installs the packages only
# when missing and starts only the daemons that are not already running. Needs root.
# Stop it with tests/slurm/down.sh.
#
#   SCVAE_SLURM_STATE   state, logs and PID files (default /var/tmp/scvae-slurm)
#   SCVAE_SLURM_MEM_MB  RealMemory of the node in MB (default 20000)
set -euo pipefail

STATE=${SCVAE_SLURM_STATE:-/var/tmp/scvae-slurm}
MEM_MB=${SCVAE_SLURM_MEM_MB:-20000}
CONF=/etc/slurm/slurm.conf
MARKER="# Written by scvae tests/slurm/up.sh"
HOST=$(hostname -s)
CPUS=$(nproc)

log() { echo "slurm up: $*"; }
die() {
    echo "slurm up: error: $*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"

alive() { # alive PIDFILE: the process named in PIDFILE is running
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# --- packages ------------------------------------------------------------------------
missing=()
for cmd in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || missing+=("${cmd##*:}")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    # Keep the packages' init scripts from starting daemons with their default config.
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client \
        >/dev/null
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
fi

# --- configuration -------------------------------------------------------------------
mkdir -p "$STATE"/{ctld,spool} /etc/slurm
if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching a real cluster"
fi
new_conf=$(
    cat <<EOF
$MARKER: a one-node test cluster.
ClusterName=scvae-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
# Finished jobs stay visible to squeue for MinJobAge seconds: the executor plugin reads
# their state from squeue, as there is no slurmdbd (sacct) here.
MinJobAge=600
SchedulerParameters=sched_interval=1
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
if [[ ! -e $CONF ]] || [[ $(cat "$CONF") != "$new_conf" ]]; then
    if alive "$STATE/slurmctld.pid" || alive "$STATE/slurmd.pid"; then
        log "the configuration changed: restarting the cluster"
        bash "$(dirname "$0")/down.sh"
    fi
    printf '%s\n' "$new_conf" >"$CONF"
    log "wrote $CONF (node $HOST, $CPUS CPUs, ${MEM_MB} MB)"
fi

# --- munge ---------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if alive "$STATE/munged.pid"; then
    :
elif munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running (not started by this script)"
else
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 50); do
        [[ -s /run/munge/munged.pid ]] && break
        sleep 0.1
    done
    cp /run/munge/munged.pid "$STATE/munged.pid"
    log "started munged (pid $(cat "$STATE/munged.pid"))"
fi

# --- slurmctld, slurmd ---------------------------------------------------------------
if ! alive "$STATE/slurmctld.pid"; then
    # -c: start from a clean job state (a test cluster keeps no jobs across restarts).
    /usr/sbin/slurmctld -c
    log "started slurmctld"
fi
for _ in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q "UP" && break
    sleep 0.2
done
scontrol ping | grep -q "UP" || die "slurmctld does not answer; see $STATE/slurmctld.log"

if ! alive "$STATE/slurmd.pid"; then
    /usr/sbin/slurmd
    log "started slurmd"
fi

# Wait for the node to register; resume it if an earlier run left it down or drained.
state=""
for _ in $(seq 150); do
    state=$(sinfo -h -n "$HOST" -o "%T" 2>/dev/null | head -1)
    case $state in
    idle | mixed | allocated | completing) break ;;
    down* | drain* | fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case $state in
idle | mixed | allocated | completing) ;;
*) die "node $HOST is '$state'; see $STATE/slurmd.log and $STATE/slurmctld.log" ;;
esac

# A job must run end to end.
out=$(timeout 60 srun -N1 -n1 -t 1 --mem=100 hostname) || die "srun test job failed"
[[ $out == "$HOST"* ]] || die "srun test job printed '$out', expected $HOST"
log "cluster up: node $HOST ($state), partition debug"
