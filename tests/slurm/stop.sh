#!/usr/bin/env bash
# Stop the test Slurm started by start.sh (its jobs are cancelled); munged keeps running (harmless).
DIR=${LSKD_SLURM_DIR:-/tmp/lskd-slurm}
CONF=$DIR/slurm.conf
[ -f "$CONF" ] || exit 0
SLURM_CONF=$CONF scancel --user="$(id -un)" >/dev/null 2>&1
pkill -f "slurmd .*-f $CONF" 2>/dev/null
pkill -f "slurmctld .*-f $CONF" 2>/dev/null
exit 0
