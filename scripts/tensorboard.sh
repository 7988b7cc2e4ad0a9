#!/usr/bin/env bash
# TensorBoard (with the profile plugin) on a workdir, local or gs://.
#   scripts/tensorboard.sh WORKDIR [PORT]
source "$(dirname "$0")/env.sh"
[ $# -ge 1 ] || { echo "usage: scripts/tensorboard.sh WORKDIR|gs://... [PORT]" >&2; exit 2; }
exec tensorboard --logdir "$1" --port "${2:-6006}" --bind_all
