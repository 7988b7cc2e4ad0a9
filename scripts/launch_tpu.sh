#!/usr/bin/env bash
# Launch a training job on a Cloud TPU VM (single host or pod slice), stream
# its log, and delete the VM when asked.
#
#   scripts/launch_tpu.sh --name=my-tpu --zone=us-central2-b --accelerator=v4-8 \
#     --config=configs/resnet50.py --workdir=gs://my-bucket/runs/r1 \
#     [--data_dir=gs://my-bucket/imagenet] [--backend=tensorflow|jax] \
#     [--runtime=IMAGE] [--project=P] [--spot] [--queued] [--no_create] [--delete_after] \
#     [--data_service_workers=N [--data_service_machine_type=n2-standard-16]] \
#     [--dry_run] [-- --config.epochs=10 ...]
#   scripts/launch_tpu.sh --name=my-tpu --zone=us-central2-b [--queued] \
#     [--data_service_workers=N] --delete
#
# --backend=jax trains through Keras's JAX backend (v6e and newer: TensorFlow there is
# experimental or absent) on a JAX runtime image with jax[tpu] and a CPU TensorFlow
# for tf.data, every host running the job; the image per accelerator and backend
# comes from tpu_trainer/tpus.py (the README's support table).
# --data_service_workers=N creates N CPU VMs (NAME-data-0..N-1) beside the TPU, runs a
# tf.data service dispatcher on the first and a worker on each, and trains with
# --config.input.service pointing at them: input-bound jobs get more CPUs than the
# TPU hosts have. They are deleted with the TPU (--delete_after, --delete).
# --queued creates the slice through a queued resource (Google's advice when
# capacity is short) and waits for it to be ACTIVE. --dry_run prints every
# command, quoted so that pasting it runs exactly that, instead of running it.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
launch_args=("$@")

name="" zone="" accelerator="v4-8" runtime="" backend="tensorflow" project="" config="" workdir="" data_dir=""
spot=0 queued=0 dry_run=0 create=1 delete_only=0 delete_after=0 extra=()
data_workers=0 data_machine_type="n2-standard-16"
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
    --data_service_workers=*) data_workers="${1#*=}" ;;
    --data_service_machine_type=*) data_machine_type="${1#*=}" ;;
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
[[ "$data_workers" =~ ^[0-9]+$ ]] || die "--data_service_workers=$data_workers must be a number of VMs."
data_workers=$((10#$data_workers))  # decimal: bash reads 010 as 8 and 08 as an error
gc=(gcloud compute tpus tpu-vm)
qr=(gcloud compute tpus queued-resources)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")
delete_cmd=("${gc[@]}" delete "$name" "${where[@]}" --quiet)
# Deleting a queued resource with --force deletes its TPU VM too.
[ "$queued" = 1 ] && delete_cmd=("${qr[@]}" delete "$name" "${where[@]}" --force --quiet)

# The data service's CPU VMs, deleted with the TPU.
data_vms=()
for ((i = 0; i < data_workers; i++)); do data_vms+=("$name-data-$i"); done
gce=(gcloud compute)
delete_data_cmd=("${gce[@]}" instances delete "${data_vms[@]}" "${where[@]}" --quiet)
delete_all() {
  run "${delete_cmd[@]}"
  [ "$data_workers" = 0 ] || run "${delete_data_cmd[@]}"
}

if [ "$delete_only" = 1 ]; then
  delete_all
  exit 0
fi
[ -n "$config" ] || die "--config=configs/X.py is required."
[ -f "$REPO/${config%%:*}" ] || die "--config=$config: no such file in the repo."
# What ships is HEAD (git archive): a config file not committed as it is here
# would be missing, or another one, on the TPU VM.
if git -C "$REPO" rev-parse --git-dir > /dev/null 2>&1; then
  git -C "$REPO" ls-files --error-unmatch -- "${config%%:*}" > /dev/null 2>&1 \
    || die "--config=$config is not committed, and the TPU VM gets the repo's last commit (git archive HEAD): commit it first."
  git -C "$REPO" diff --quiet HEAD -- "${config%%:*}" \
    || die "--config=$config has changes not committed, and the TPU VM gets the repo's last commit (git archive HEAD): commit them first."
  changed="$(git -C "$REPO" status --porcelain --untracked-files=no -- tpu_trainer configs scripts | wc -l)"
  [ "$changed" = 0 ] || echo "warning: $changed file(s) under tpu_trainer/, configs/ or scripts/ have changes not committed: the TPU VM runs the last commit." >&2
fi
case "$workdir" in gs://*) ;; *) die "--workdir must be gs://BUCKET/PATH: TPU VMs keep nothing after deletion." ;; esac

case "$backend" in tensorflow|jax) ;; *) die "--backend=$backend: use tensorflow or jax." ;; esac
# Hosts in the slice and the runtime image for the backend (tpu_trainer/tpus.py).
slice_info="$(PYTHONPATH="$REPO" python3 -m tpu_trainer.tpus --accelerator="$accelerator" \
              --backend="$backend")" || exit 2
hosts="${slice_info%% *}"
[ -n "$runtime" ] || runtime="${slice_info#* }"
data_seen="$data_dir"
for a in "${extra[@]}"; do
  case "$a" in --config.data_dir=*) data_seen="${a#*=}" ;; esac
done
if [ "$hosts" -gt 1 ]; then
  [ "$backend" = jax ] || [[ "$runtime" == *-pod* ]] || die "--accelerator=$accelerator has $hosts hosts: use a -pod runtime (e.g. tpu-vm-tf-2.16.1-pod-pjrt)."
  case "$data_seen" in
    gs://*) ;;
    *) die "--accelerator=$accelerator has $hosts hosts, which cannot read a local data_dir: pass --data_dir=gs://BUCKET/PATH." ;;
  esac
fi
if [ "$data_workers" -gt 0 ]; then
  case "$data_seen" in
    gs://*) ;;
    *) die "--data_service_workers: the data service's VMs read the shards themselves; pass --data_dir=gs://BUCKET/PATH." ;;
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
    failures=0 poll_s="${TPU_TRAINER_QUEUED_POLL_S:-30}"  # seconds between describes
    while [ "$dry_run" = 0 ]; do
      # A describe that fails (a network blip, a quota on API calls) is tried again:
      # the request stays queued either way. Ten in a row end the wait.
      if ! state="$("${state_cmd[@]}")"; then
        failures=$((failures + 1))
        [ "$failures" -lt 10 ] || die "gcloud could not describe queued resource $name 10 times in a row; it stays queued: see $(quoted "${qr[@]}" describe "$name" "${where[@]}")"
        echo "describe failed ($failures in a row); trying again in $poll_s s." >&2
        sleep "$poll_s"
        continue
      fi
      failures=0
      case "$state" in
        ACTIVE) break ;;
        FAILED|SUSPENDED) die "queued resource $name is $state; see: $(quoted "${qr[@]}" describe "$name" "${where[@]}")" ;;
      esac
      sleep "$poll_s"
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
[ "$backend" = jax ] && install="python3 -m pip install -q -U 'jax[tpu]' 'tensorflow-cpu==2.21.*' orbax-checkpoint && python3 -m pip install -q -e tpu_trainer"
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

if [ "$data_workers" -gt 0 ]; then
  # The workers run the same pipeline graph the trainers would: the same TensorFlow
  # as the TPU image's (or the CPU one the JAX install adds), and read data_dir themselves.
  tf_version="2.21.*"
  [[ "$runtime" =~ ^tpu-vm-tf-([0-9]+[.][0-9]+[.][0-9]+) ]] && tf_version="${BASH_REMATCH[1]}"
  if [ "$create" = 1 ]; then
    run "${gce[@]}" instances create "${data_vms[@]}" "${where[@]}" \
      --machine-type="$data_machine_type" --image-family=ubuntu-2204-lts \
      --image-project=ubuntu-os-cloud --scopes=cloud-platform
  fi
  dispatcher="grpc://$name-data-0:5050"  # the zone's internal DNS names the VM
  for vm in "${data_vms[@]}"; do
    run "${gce[@]}" scp "$tarball" "$vm:tpu_trainer.tar.gz" "${where[@]}"
    serve="python3 -m tpu_trainer.cli.data_service"
    start=""
    [ "$vm" = "$name-data-0" ] && start="setsid nohup $serve --role=dispatcher --port=5050 $(quoted "--work_dir=$workdir/data_service") > ~/dispatcher.log 2>&1 < /dev/null & sleep 5; "
    run "${gce[@]}" ssh "$vm" "${where[@]}" --command \
      "sudo apt-get -qq update && sudo apt-get -qq install -y python3-pip > /dev/null && rm -rf tpu_trainer && tar xzf tpu_trainer.tar.gz && python3 -m pip install -q 'tensorflow-cpu==$tf_version' -e tpu_trainer && cd tpu_trainer && ${start}setsid nohup $serve --role=worker --dispatcher=$dispatcher > ~/worker.log 2>&1 < /dev/null &"
  done
  train+=("--config.input.service=$dispatcher")
fi
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
  [ "$delete_after" = 1 ] && delete_all
  exit 0
fi
if [ "$status" = 143 ] || [ "$status" = 255 ]; then
  # A preempted (spot) TPU VM cannot be restarted: it must be deleted and created again.
  cat >&2 <<MSG
Training stopped (status $status): the VM was preempted or went away. A checkpoint is in
$workdir. To resume, delete the VM and launch again with the same command:
  $(quoted "$0" --name="$name" --zone="$zone" ${project:+--project="$project"} $([ "$queued" = 1 ] && echo --queued) $([ "$data_workers" = 0 ] || echo --data_service_workers="$data_workers") --delete)
  $(quoted "$0" "${launch_args[@]}")
MSG
else
  echo "error: training exited with status $status; its log: $(quoted "${gc[@]}" ssh "$name" "${where[@]}" --worker=0 --command 'cat ~/train.log')" >&2
fi
exit "$status"
