#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine for the tests (munged, slurmctld, slurmd), idempotently.
#
#   bash tests/slurm/start.sh        # prints the SLURM_CONF to export; exit 0 when the node takes jobs
#
# Installs Debian's slurm-wlm + munge when missing (apt). There is no systemd here, so the daemons are started
# by hand; everything lives under $LSKD_SLURM_DIR (default /tmp/lskd-slurm). Accounting is off: lskd-bench reads
# job states from squeue itself. Slurm's ports 6817/6818 are fixed: if another program holds them, this script
# refuses (exit 4) instead of disturbing it. Exit 3: Slurm cannot be installed or started here.
set -uo pipefail
DIR=${LSKD_SLURM_DIR:-/tmp/lskd-slurm}
CONF=$DIR/slurm.conf
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"

say() { echo "slurm: $*" >&2; }

if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null && \
   SLURM_CONF=$CONF timeout 5 sinfo -h -o %T 2>/dev/null | grep -Eq "idle|mixed|alloc"; then
  echo "$CONF"; exit 0   # already running (ours)
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  say "installing slurm-wlm and munge (apt-get)..."
  if ! (apt-get install -y --no-install-recommends slurm-wlm munge >"$DIR/log/apt.log" 2>&1 || \
        (apt-get update >>"$DIR/log/apt.log" 2>&1 && apt-get install -y --no-install-recommends slurm-wlm munge >>"$DIR/log/apt.log" 2>&1)); then
    say "cannot install slurm-wlm/munge (see $DIR/log/apt.log)"; exit 3
  fi
fi

for port in 6817 6818; do
  if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
    if ! pgrep -f "slurm(ctl)?d .*-f $CONF" >/dev/null; then
      say "port $port is in use by another program: not starting a test Slurm on top of it"; exit 4
    fi
  fi
done

host=$(hostname -s)
cpus=$(nproc)
cat > "$CONF" <<CONF
ClusterName=lskd
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=5
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF

# munge: a key and a socket directory owned by the munge user
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  (command -v mungekey >/dev/null && mungekey --create --force >/dev/null 2>&1) || \
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null
if ! pgrep -x munged >/dev/null; then
  (runuser -u munge -- /usr/sbin/munged 2>>"$DIR/log/munged.log" || /usr/sbin/munged --force 2>>"$DIR/log/munged.log") || {
    say "munged did not start (see $DIR/log/munged.log)"; exit 3; }
fi

pkill -f "slurmctld .*-f $CONF" 2>/dev/null; pkill -f "slurmd .*-f $CONF" 2>/dev/null; sleep 0.5
export SLURM_CONF=$CONF
/usr/sbin/slurmctld -f "$CONF" -i >>"$DIR/log/slurmctld.out" 2>&1 || { say "slurmctld did not start (see $DIR/log)"; exit 3; }
/usr/sbin/slurmd -f "$CONF" -N "$host" >>"$DIR/log/slurmd.out" 2>&1 || { say "slurmd did not start (see $DIR/log)"; exit 3; }

for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -Eq "idle|mixed|alloc"; then echo "$CONF"; exit 0; fi
  scontrol update nodename="$host" state=resume >/dev/null 2>&1
  sleep 0.5
done
say "the node did not come up (see $DIR/log/slurmctld.log)"; exit 3
