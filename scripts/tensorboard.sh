#!/usr/bin/env bash
# TensorBoard (with the profile plugin) on a workdir, local or gs://, served on
# this machine only (http://localhost:PORT); --bind_all shows it to the network.
#   scripts/tensorboard.sh WORKDIR [PORT] [--bind_all]
source "$(dirname "$0")/env.sh"
[ $# -ge 1 ] || { echo "usage: scripts/tensorboard.sh WORKDIR|gs://... [PORT] [--bind_all]" >&2; exit 2; }
logdir="$1" port="${2:-6006}" bind=(--host localhost)
[ "${3:-}" = "--bind_all" ] && bind=(--bind_all)
case "$logdir" in gs://*|/*) ;; *) logdir="$PWD/$logdir" ;; esac
[[ "$logdir" == gs://* ]] || [ -d "$logdir" ] || { echo "error: no directory $logdir" >&2; exit 2; }
exec tensorboard --logdir "$logdir" --port "$port" "${bind[@]}"
