#!/usr/bin/env bash
# Runs a command in the background on a TPU VM, detached from the ssh session
# that started it: output to ~/train.log, pid to ~/train.pid, exit status to
# ~/train.status when it ends. scripts/launch_tpu.sh streams the log and
# returns that status.
#   bash scripts/tpu_job.sh COMMAND [ARGS...]
rm -f ~/train.status
# The log exists before this script returns, so a stream started right after
# never races the job's first write (tail would give up on a missing file).
: > ~/train.log
nohup bash -c '"$@" >> ~/train.log 2>&1; echo $? > ~/train.status' tpu_job "$@" > /dev/null 2>&1 &
echo $! > ~/train.pid
