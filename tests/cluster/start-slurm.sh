#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (Debian 12 packages, Slurm 22.05), for the tests
# that run the workflow through Snakemake's Slurm executor. Idempotent: a running cluster is kept.
# Needs root; installs slurmctld, slurmd, slurm-client and munge with apt-get when missing.
set -euo pipefail

STATE=${SEQVIT_SLURM_STATE:-/var/tmp/seqvit-slurm}

if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
  echo "slurm: cluster already up ($(sinfo -h -o '%P %D %t' | head -1))"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "slurm: starting the test cluster needs root (apt-get and daemons); run make test as root" >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm: installing slurmctld slurmd slurm-client munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

# munge: the key and the socket folder belong to the munge user
install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  su -s /bin/sh munge -c munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

host=$(hostname -s)
cpus=$(nproc)
# leave 1 GiB to the system; Slurm refuses a node that reports less memory than configured
mem_mb=$(( $(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo) - 1024 ))
mkdir -p "$STATE"/{spool,state,log}
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=seqvit-test
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
# finished jobs stay visible to squeue, which is how the executor learns their state without
# an accounting database
MinJobAge=3600
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 0.5
slurmctld
slurmd
for _ in $(seq 100); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "slurm: up ($(sinfo -h -o '%P %D %c CPUs %m MB %t' | head -1))"
    exit 0
  fi
  sleep 0.2
done
echo "slurm: the node did not come up; see $STATE/log/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
