#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the sweep's SLURM tests:
#   tests/slurm_cluster.sh start DIR [N]  install (Debian slurm-wlm + munge) if missing, start munged,
#                                         slurmctld and N slurmd (nodes n1..nN, default 1) with state
#                                         under DIR; prints "ready" once all N nodes are idle
#   tests/slurm_cluster.sh stop DIR       stop the daemons started by `start DIR`
# Controller and compute nodes are this host: each node is a slurmd of its own (`slurmd -N nI`)
# with its own port, spool folder and pid file, all reached at 127.0.0.1, so jobs that span nodes
# (srun -N2, a multi-node torchrun rendezvous) run as they would across machines. No cgroups
# (proctrack/linuxproc, task/none) and no accounting database (squeue/scontrol, not sacct). Needs
# root. Exit 3 (with the reason on stderr) when the cluster cannot be had here, so that the tests
# are skipped with that reason.
set -euo pipefail
cmd="${1:?start|stop}"
dir="$(mkdir -p "${2:?state folder}" && cd "$2" && pwd)"
nodes="${3:-1}"

if [ "$cmd" = stop ]; then
    for f in "$dir"/slurmd-*.pid "$dir/slurmctld.pid" "$dir/munged.pid"; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
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
mkdir -p "$dir/spool/ctld" "$dir/munge" /run/munge
for i in $(seq "$nodes"); do mkdir -p "$dir/spool/n$i"; done
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
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
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
EOF
for i in $(seq "$nodes"); do
    echo "NodeName=n$i NodeAddr=127.0.0.1 NodeHostname=$host Port=$((port + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
done >>"$dir/slurm.conf"
echo "PartitionName=test Nodes=n[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES" >>"$dir/slurm.conf"
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
for i in $(seq "$nodes"); do slurmd -f "$SLURM_CONF" -N "n$i"; done
for _ in $(seq 60); do
    if [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cx idle)" = "$nodes" ]; then echo ready; exit 0; fi
    sleep 0.5
done
echo "the SLURM test cluster did not come up: $(tail -n 3 "$dir/slurmctld.log" "$dir"/slurmd-*.log 2>/dev/null | tr '\n' ' ')" >&2
exit 3
