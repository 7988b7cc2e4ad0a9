#!/usr/bin/env bash
# Launch a training job on a Cloud TPU VM (single host or pod slice), stream
# its log, and delete the VM when asked.
#
#   scripts/launch_tpu.sh --name=my-tpu --zone=us-central2-b --accelerator=v4-8 \
#     --config=configs/resnet50.py --workdir=gs://my-bucket/runs/r1 \
#     [--data_dir=gs://my-bucket/imagenet] [--backend=tensorflow|jax] \
#     [--runtime=IMAGE] [--project=P] [--spot] [--queued] [--no_create] [--delete_after] \
#     [--dry_run] [-- --config.epochs=10 ...]
#   scripts/launch_tpu.sh --name=my-tpu --zone=us-central2-b [--queued] --delete
#
# --backend=jax trains through Keras's JAX backend (v6e and newer: TensorFlow there is
# experimental or absent) on a JAX runtime image with jax[tpu] and a CPU TensorFlow
# for tf.data, every host running the job; the image per accelerator and backend
# comes from tpu_trainer/tpus.py (the README's support table).
# --queued creates the slice through a queued resource (Google's advice when
# capacity is short) and waits for it to be ACTIVE. --dry_run prints every
# command, quoted so that pasting it runs exactly that, instead of running it.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
launch_args=("$@")

name="" zone="" accelerator="v4-8" runtime="" backend="tensorflow" project="" config="" workdir="" data_dir=""
spot=0 queued=0 dry_run=0 create=1 delete_only=0 delete_after=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --runtime=*) runtime="${1#*=}" ;;
    --backend=*) backend="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --data_dir=*) data_dir="${1#*=}" ;;
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    --no_create) create=0 ;;
    --delete) delete_only=1 ;;
    --delete_after) delete_after=1 ;;
    --dry_run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "error: $*" >&2; exit 2; }
[ -n "$name" ] || die "--name=TPU_NAME is required."
[ -n "$zone" ] || die "--zone=ZONE is required (e.g. us-central2-b); keep the bucket in its region."

quoted() {  # the arguments as one shell line that runs exactly them (bash 3.2 too)
  local out="" a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./=:,+@%^-]+$ ]]; then out+=" $a"
    else out+=" '${a//$q/$q\\$q$q}'"; fi
  done
  echo "${out# }"
}
run() {  # print the command, quoted; run it unless --dry_run
  echo "+ $(quoted "$@")"
  [ "$dry_run" = 1 ] || "$@"
}
gc=(gcloud compute tpus tpu-vm)
qr=(gcloud compute tpus queued-resources)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")
delete_cmd=("${gc[@]}" delete "$name" "${where[@]}" --quiet)
# Deleting a queued resource with --force deletes its TPU VM too.
[ "$queued" = 1 ] && delete_cmd=("${qr[@]}" delete "$name" "${where[@]}" --force --quiet)

if [ "$delete_only" = 1 ]; then
  run "${delete_cmd[@]}"
  exit 0
fi
[ -n "$config" ] || die "--config=configs/X.py is required."
[ -f "$REPO/${config%%:*}" ] || die "--config=$config: no such file in the repo."
case "$workdir" in gs://*) ;; *) die "--workdir must be gs://BUCKET/PATH: TPU VMs keep nothing after deletion." ;; esac

case "$backend" in tensorflow|jax) ;; *) die "--backend=$backend: use tensorflow or jax." ;; esac
# Hosts in the slice and the runtime image for the backend (tpu_trainer/tpus.py).
slice_info="$(PYTHONPATH="$REPO" python3 -m tpu_trainer.tpus --accelerator="$accelerator" \
              --backend="$backend")" || exit 2
hosts="${slice_info%% *}"
[ -n "$runtime" ] || runtime="${slice_info#* }"
if [ "$hosts" -gt 1 ]; then
  [ "$backend" = jax ] || [[ "$runtime" == *-pod* ]] || die "--accelerator=$accelerator has $hosts hosts: use a -pod runtime (e.g. tpu-vm-tf-2.16.1-pod-pjrt)."
  data_seen="$data_dir"
  for a in "${extra[@]}"; do
    case "$a" in --config.data_dir=*) data_seen="${a#*=}" ;; esac
  done
  case "$data_seen" in
    gs://*) ;;
    *) die "--accelerator=$accelerator has $hosts hosts, which cannot read a local data_dir: pass --data_dir=gs://BUCKET/PATH." ;;
  esac
fi

if [ "$create" = 1 ]; then
  if [ "$queued" = 1 ]; then
    create_cmd=("${qr[@]}" create "$name" --node-id="$name" "${where[@]}"
                --accelerator-type="$accelerator" --runtime-version="$runtime")
    [ "$spot" = 1 ] && create_cmd+=(--spot)
    run "${create_cmd[@]}"
    state_cmd=("${qr[@]}" describe "$name" "${where[@]}" --format="value(state.state)")
    echo "Waiting for queued resource $name to be ACTIVE (Ctrl-C stops waiting; the request stays queued)."
    echo "+ $(quoted "${state_cmd[@]}")"
    while [ "$dry_run" = 0 ]; do
      state="$("${state_cmd[@]}")"
      case "$state" in
        ACTIVE) break ;;
        FAILED|SUSPENDED) die "queued resource $name is $state; see: $(quoted "${qr[@]}" describe "$name" "${where[@]}")" ;;
      esac
      sleep 30
    done
  else
    create_cmd=("${gc[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" --version="$runtime")
    [ "$spot" = 1 ] && create_cmd+=(--spot)
    run "${create_cmd[@]}"
  fi
fi

# The package, as committed, onto every host; the image's TensorFlow stays.
# Commands run as `python3 -m`: pip installs per user on these images, and
# ~/.local/bin is not on a non-interactive ssh session's PATH.
tarball="${TMPDIR:-/tmp}/tpu_trainer-$name.tar.gz"
run git -C "$REPO" archive --format=tar.gz --prefix=tpu_trainer/ -o "$tarball" HEAD
run "${gc[@]}" scp "$tarball" "$name:tpu_trainer.tar.gz" "${where[@]}" --worker=all
install="bash tpu_trainer/scripts/install_on_image.sh"
# A JAX image has no TensorFlow: jax[tpu], and a CPU TensorFlow for tf.data.
[ "$backend" = jax ] && install="python3 -m pip install -q -U 'jax[tpu]' 'tensorflow-cpu==2.21.*' && python3 -m pip install -q -e tpu_trainer"
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "rm -rf tpu_trainer && tar xzf tpu_trainer.tar.gz && $install"

# TensorFlow: one client drives the slice, worker 0, with one input pipeline per
# host; a single host talks to its own chips (tpu=local). PJRT runtimes need
# TensorFlow's pluggable-device variables (Cloud TPU's TF PJRT guide). JAX: every
# host runs the same program; jax.distributed finds the others by itself.
tpu_arg="local" env_vars=() job_workers=0
if [ "$backend" = jax ]; then
  job_workers=all
  train=(python3 -m tpu_trainer.cli.train "--config=$config" "--workdir=$workdir"
         --config.backend=jax --config.strategy=tpu)
else
  if [ "$hosts" -gt 1 ]; then tpu_arg="$name"; env_vars+=(TPU_LOAD_LIBRARY=0); fi
  if [[ "$runtime" == *-pjrt* ]]; then
    env_vars+=(NEXT_PLUGGABLE_DEVICE_USE_C_API=true TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so)
  fi
  train=(python3 -m tpu_trainer.cli.train "--config=$config" "--workdir=$workdir"
         --config.strategy=tpu "--config.tpu=$tpu_arg")
fi
[ -n "$data_dir" ] && train+=("--config.data_dir=$data_dir")
train+=("${extra[@]}")
run "${gc[@]}" ssh "$name" "${where[@]}" --worker="$job_workers" --command \
  "cd tpu_trainer && bash scripts/tpu_job.sh ${env_vars[*]:+env ${env_vars[*]} }$(quoted "${train[@]}")"

echo "Training on $name ($accelerator, $hosts host(s), $runtime, $backend). TensorBoard: scripts/tensorboard.sh $workdir"
# Streams until training ends and exits with its status (255: the VM went away).
# Ctrl-C detaches; training goes on.
status=0
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=0 --command \
  "tail --pid=\$(cat ~/train.pid) -n +1 -f ~/train.log; exit \$(cat ~/train.status 2>/dev/null || echo 255)" || status=$?

if [ "$status" = 0 ]; then
  [ "$delete_after" = 1 ] && run "${delete_cmd[@]}"
  exit 0
fi
if [ "$status" = 143 ] || [ "$status" = 255 ]; then
  # A preempted (spot) TPU VM cannot be restarted: it must be deleted and created again.
  cat >&2 <<MSG
Training stopped (status $status): the VM was preempted or went away. A checkpoint is in
$workdir. To resume, delete the VM and launch again with the same command:
  $(quoted "$0" --name="$name" --zone="$zone" ${project:+--project="$project"} $([ "$queued" = 1 ] && echo --queued) --delete)
  $(quoted "$0" "${launch_args[@]}")
MSG
else
  echo "error: training exited with status $status; its log: $(quoted "${gc[@]}" ssh "$name" "${where[@]}" --worker=0 --command 'cat ~/train.log')" >&2
fi
exit "$status"
