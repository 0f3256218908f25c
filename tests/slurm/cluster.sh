#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on localhost, for tests/test_slurm.py.
#
#   tests/slurm/cluster.sh install   # apt-get the Debian packages (munge, slurm 22.05)
#   tests/slurm/cluster.sh start     # munged, slurmctld, slurmd; returns once the node is idle
#   tests/slurm/cluster.sh status    # exit 0 if the cluster answers and the node is usable
#   tests/slurm/cluster.sh stop      # stops only the daemons this script started
#
# Needs root (it writes /etc/slurm/slurm.conf and runs munged as the munge user)
# and no systemd: daemons run in the foreground under setsid, their PIDs go to
# the state directory ($CCDFLOW_SLURM_STATE, default /tmp/ccdflow-slurm), and a
# PID file there means "this script started it". `start` does not install
# packages on its own, so a test can tell "no SLURM here" from "cluster down".
set -euo pipefail

STATE=${CCDFLOW_SLURM_STATE:-/tmp/ccdflow-slurm}
CONF=/etc/slurm/slurm.conf  # where Debian's slurm looks; it has no SLURM_CONF default
MARK="# ccdflow-test-cluster: written by tests/slurm/cluster.sh"
PARTITION=debug

die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*"; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (writes $CONF, starts munged as the munge user)"; }

# Is the PID recorded in $STATE/$1.pid alive and still that program?
ours_alive() {
    local pid
    pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$1" ]
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
ctld_ok() { scontrol ping 2>/dev/null | grep -q "is UP"; }
node_state() { sinfo -h -N -n localhost -o %t 2>/dev/null | head -n1; }
node_ok() { case "$(node_state)" in idle* | mix* | alloc* | comp*) return 0 ;; *) return 1 ;; esac; }

# Start "$@" detached, in the foreground mode of the daemon, and record its PID.
launch() {
    local name=$1; shift
    setsid "$@" >"$STATE/$name.out" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 5))); do "$@" && return 0; sleep 0.2; done
    die "$what not ready after ${limit}s; see $STATE/*.out and $STATE/*.log"
}

write_conf() {
    if [ -e "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
        die "$CONF exists and was not written by this script; not touching a real SLURM setup"
    fi
    local cpus mem
    cpus=$(nproc)
    # ~90 % of RAM: slurmd drains a node that reports less memory than configured
    mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/spool"
    cat >"$CONF" <<EOF
$MARK
# State, logs and PIDs live in $STATE. Safe to delete with the cluster stopped.
ClusterName=ccdflow
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pidfile
SlurmdPidFile=$STATE/slurmd.pidfile
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no cgroups in a container: track processes through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# no slurmdbd, so sacct cannot work: the snakemake profile polls squeue, which
# only sees a finished job for MinJobAge seconds. The plugin falls back to sacct
# (and then waits forever) unless MinJobAge >= 3 x its first status-check delay,
# and it polls at most every 180 s, so keep MinJobAge well above both.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
ReturnToService=2
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

cmd_install() {
    need_root
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        say "packages already installed"; return 0
    fi
    apt-get update -qq  # fresh images ship without package lists
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        munge slurmctld slurmd slurm-client
}

cmd_start() {
    need_root
    for bin in munged slurmctld slurmd sinfo; do
        command -v $bin >/dev/null || die "$bin not found; run: $0 install"
    done
    if munge_ok && ctld_ok && node_ok; then
        say "already running"; return 0
    fi
    mkdir -p "$STATE"
    write_conf

    if ! munge_ok; then
        # Debian's postinst makes the key; create one if it is missing
        if [ ! -s /etc/munge/munge.key ]; then
            mungekey --create --keyfile=/etc/munge/munge.key
            chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        fi
        mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
        launch munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
        wait_for 10 munged munge_ok
    fi
    if ! ctld_ok; then
        # -c: forget jobs of an earlier run of this throwaway cluster
        launch slurmctld slurmctld -D -c
        wait_for 20 slurmctld ctld_ok
    fi
    if ! ours_alive slurmd && ! pidof slurmd >/dev/null; then
        launch slurmd slurmd -D -N localhost
    fi
    wait_for 30 "node localhost" node_ok
    say "up: partition $PARTITION, node localhost $(node_state), $(nproc) CPUs"
}

cmd_stop() {
    need_root
    # Jobs die with the node anyway; cancel them so slurmstepd does not linger.
    if ctld_ok && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
        say "cancelling jobs still queued or running"
        squeue -h -o %i | xargs -r scancel 2>/dev/null || true
        sleep 2
    fi
    local stopped=0
    for name in slurmd slurmctld munged; do  # reverse start order
        if ours_alive "$name"; then
            local pid; pid=$(cat "$STATE/$name.pid")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            say "stopped $name ($pid)"; stopped=1
        fi
        rm -f "$STATE/$name.pid"
    done
    [ $stopped = 1 ] || say "nothing of ours was running"
}

cmd_status() {
    for name in munged slurmctld slurmd; do
        if ours_alive "$name"; then echo "$name: running, pid $(cat "$STATE/$name.pid") (started by cluster.sh)"
        elif pidof "$name" >/dev/null; then echo "$name: running (not started by cluster.sh)"
        else echo "$name: not running"; fi
    done
    if munge_ok && ctld_ok && node_ok; then
        sinfo; return 0
    fi
    echo "cluster: down"; return 1
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|start|stop|status   (state in \$CCDFLOW_SLURM_STATE, default /tmp/ccdflow-slurm)" >&2; exit 2 ;;
esac
