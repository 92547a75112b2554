#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the sweep's SLURM tests:
#   tests/slurm_cluster.sh start DIR    install (Debian slurm-wlm + munge) if missing, start munged,
#                                       slurmctld and slurmd with state under DIR; prints "ready"
#   tests/slurm_cluster.sh stop DIR     stop the daemons started by `start DIR`
# Controller and compute node are this host; no cgroups (proctrack/linuxproc, task/none) and no
# accounting database (squeue/scontrol, not sacct). Needs root. Exit 3 (with the reason on stderr)
# when the cluster cannot be had here, so that the tests are skipped with that reason.
set -euo pipefail
cmd="${1:?start|stop}"
dir="$(mkdir -p "${2:?state folder}" && cd "$2" && pwd)"

if [ "$cmd" = stop ]; then
    for p in slurmd slurmctld munged; do
        [ -f "$dir/$p.pid" ] && kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
    done
    exit 0
fi

if [ "$(id -u)" != 0 ]; then echo "SLURM test cluster needs root (to run slurmd)" >&2; exit 3; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if ! command -v apt-get >/dev/null; then echo "no slurmctld/munged and no apt-get to install them" >&2; exit 3; fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >"$dir/apt.log" 2>&1 \
        || { echo "could not install slurm-wlm and munge (see $dir/apt.log)" >&2; exit 3; }
fi

host="$(hostname -s)"
mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/munge" /run/munge
# munge: a key of our own, its socket under DIR (so several clusters never meet). cred_expire=10:
# a requeued job may start again after 10 s instead of SLURM's default 120 s
dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"

cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
port=$(( 20000 + RANDOM % 20000 ))
cat >"$dir/slurm.conf" <<EOF
ClusterName=egoscale-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket,cred_expire=10
CredType=cred/munge
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then echo ready; exit 0; fi
    sleep 0.5
done
echo "the SLURM test cluster did not come up: $(tail -n 3 "$dir/slurmctld.log" "$dir/slurmd.log" 2>/dev/null | tr '\n' ' ')" >&2
exit 3
