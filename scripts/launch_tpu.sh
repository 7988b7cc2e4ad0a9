#!/usr/bin/env bash
# Launch a training job on a Cloud TPU VM (single host or pod slice), stream
# its log, and delete the VM when asked.
#
#   scripts/launch_tpu.sh --name=my-tpu --zone=us-central2-b --accelerator=v4-8 \
#     --config=configs/resnet50.py --workdir=gs://my-bucket/runs/r1 \
#     [--data_dir=gs://my-bucket/imagenet] [--runtime=tpu-vm-tf-2.16.1-pjrt] \
#     [--project=P] [--spot] [--no_create] [--delete_after] [--dry_run] \
#     [-- --config.epochs=10 ...]
#   scripts/launch_tpu.sh --name=my-tpu --zone=us-central2-b --delete
#
# --dry_run prints every gcloud command instead of running it.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"

name="" zone="" accelerator="v4-8" runtime="" project="" config="" workdir="" data_dir=""
spot=0 dry_run=0 create=1 delete_only=0 delete_after=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --runtime=*) runtime="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --data_dir=*) data_dir="${1#*=}" ;;
    --spot) spot=1 ;;
    --no_create) create=0 ;;
    --delete) delete_only=1 ;;
    --delete_after) delete_after=1 ;;
    --dry_run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "error: $*" >&2; exit 2; }
[ -n "$name" ] || die "--name=TPU_NAME is required."
[ -n "$zone" ] || die "--zone=ZONE is required (e.g. us-central2-b); keep the bucket in its region."

run() {  # print (arguments with spaces in single quotes), and run unless --dry_run
  local out="+" a
  for a in "$@"; do [[ "$a" == *" "* ]] && out+=" '$a'" || out+=" $a"; done
  echo "$out"
  [ "$dry_run" = 1 ] || "$@"
}
gc=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")

if [ "$delete_only" = 1 ]; then
  run "${gc[@]}" delete "$name" "${where[@]}" --quiet
  exit 0
fi
[ -n "$config" ] || die "--config=configs/X.py is required."
[ -f "$REPO/${config%%:*}" ] || die "--config=$config: no such file in the repo."
case "$workdir" in gs://*) ;; *) die "--workdir must be gs://BUCKET/PATH: TPU VMs keep nothing after deletion." ;; esac

# Hosts in the slice: v2/v3/v4/v5p-N have N/8 hosts, v5e/v6e (litepod) N/4 past 8 chips.
size="${accelerator##*-}"
[[ "$size" =~ ^[0-9]+$ ]] || die "--accelerator=$accelerator: expected TYPE-SIZE such as v4-8."
case "$accelerator" in
  v5litepod-*|v6e-*) hosts=$(( size > 8 ? size / 4 : 1 )) ;;
  *) hosts=$(( size > 8 ? size / 8 : 1 )) ;;
esac
if [ -z "$runtime" ]; then
  runtime="tpu-vm-tf-2.16.1-pjrt"
  [ "$hosts" -gt 1 ] && runtime="tpu-vm-tf-2.16.1-pod-pjrt"
fi
if [ "$hosts" -gt 1 ] && [[ "$runtime" != *-pod* ]]; then
  die "--accelerator=$accelerator has $hosts hosts: use a -pod runtime (e.g. tpu-vm-tf-2.16.1-pod-pjrt)."
fi

if [ "$create" = 1 ]; then
  create_cmd=("${gc[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" --version="$runtime")
  [ "$spot" = 1 ] && create_cmd+=(--spot)
  run "${create_cmd[@]}"
fi

# The package, as committed, onto every host; the image's TensorFlow stays.
tarball="${TMPDIR:-/tmp}/tpu_trainer-$name.tar.gz"
run git -C "$REPO" archive --format=tar.gz --prefix=tpu_trainer/ -o "$tarball" HEAD
run "${gc[@]}" scp "$tarball" "$name:tpu_trainer.tar.gz" "${where[@]}" --worker=all
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "rm -rf tpu_trainer && tar xzf tpu_trainer.tar.gz && pip install -q -e ./tpu_trainer"

# One TensorFlow client drives the slice: worker 0, with one input pipeline
# per host. A single host talks to its own chips (tpu=local).
tpu_arg="local" env_prefix=""
if [ "$hosts" -gt 1 ]; then tpu_arg="$name"; env_prefix="TPU_LOAD_LIBRARY=0 "; fi
train=(tpu-trainer-train "--config=$config" "--workdir=$workdir" --config.strategy=tpu
       "--config.tpu=$tpu_arg")
[ -n "$data_dir" ] && train+=("--config.data_dir=$data_dir")
train+=("${extra[@]}")
train_line=""
for a in "${train[@]}"; do train_line+=" $(printf '%q' "$a")"; done
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=0 --command \
  "cd tpu_trainer && ${env_prefix}nohup${train_line} > ~/train.log 2>&1 &"

echo "Training on $name ($accelerator, $hosts host(s)). TensorBoard: scripts/tensorboard.sh $workdir"
# Streams until training ends (tail exits with it); Ctrl-C detaches, training goes on.
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=0 --command \
  "tail --pid=\$(pgrep -f '[t]pu-trainer-train' | head -1) -n +1 -f ~/train.log"
if [ "$delete_after" = 1 ]; then
  run "${gc[@]}" delete "$name" "${where[@]}" --quiet
fi
