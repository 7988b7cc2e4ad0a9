"""scripts/launch_tpu.sh: the exact commands it runs (printed by --dry_run, quoted
so that pasting them runs the same), checks before any command, and what it
tells the user when training stops."""
import json
import os
import shlex
import stat
import subprocess

from conftest import REPO

LAUNCH = os.path.join(REPO, "scripts", "launch_tpu.sh")
PJRT_ENV = "NEXT_PLUGGABLE_DEVICE_USE_C_API=true TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so"


def _launch(*args, env=None):
  return subprocess.run(["bash", LAUNCH, "--dry_run", *args], capture_output=True, text=True,
                        timeout=60, env={**os.environ, **(env or {})})


def _commands(result):
  assert result.returncode == 0, result.stderr
  return [l[2:] for l in result.stdout.splitlines() if l.startswith("+ ")]


def _remote(cmd):
  """The --command of a gcloud ssh line, as the remote shell will read it."""
  words = shlex.split(cmd)
  return words[words.index("--command") + 1]


def test_single_host():
  cmds = _commands(_launch("--name=tpu1", "--zone=us-central2-b", "--accelerator=v4-8",
                           "--config=configs/cnn.py", "--workdir=gs://bkt/run1", "--spot",
                           "--data_dir=gs://bkt/digits", "--", "--config.epochs=3"))
  assert cmds[0] == ("gcloud compute tpus tpu-vm create tpu1 --zone=us-central2-b "
                     "--accelerator-type=v4-8 --version=tpu-vm-tf-2.16.1-pjrt --spot")
  tarball = os.path.join(os.environ.get("TMPDIR", "/tmp"), "tpu_trainer-tpu1.tar.gz")
  assert cmds[2] == (f"gcloud compute tpus tpu-vm scp {tarball} "
                     "tpu1:tpu_trainer.tar.gz --zone=us-central2-b --worker=all")
  # Installed over the image's TensorFlow, which stays (pip constraints).
  assert cmds[3].endswith("--worker=all --command 'rm -rf tpu_trainer && tar xzf "
                          "tpu_trainer.tar.gz && bash tpu_trainer/scripts/install_on_image.sh'")
  # Run as python3 -m (pip installs per user; ~/.local/bin is not on ssh's PATH), with
  # the PJRT variables, detached, its pid and exit status in files.
  assert "--worker=0" in cmds[4]
  assert _remote(cmds[4]) == (
      f"cd tpu_trainer && bash scripts/tpu_job.sh env {PJRT_ENV} python3 -m "
      "tpu_trainer.cli.train --config=configs/cnn.py --workdir=gs://bkt/run1 "
      "--config.strategy=tpu --config.tpu=local --config.data_dir=gs://bkt/digits "
      "--config.epochs=3")
  assert _remote(cmds[5]) == ("tail --pid=$(cat ~/train.pid) -n +1 -f ~/train.log; "
                              "exit $(cat ~/train.status 2>/dev/null || echo 255)")
  assert "--worker=0" in cmds[5]  # the job's log and status are worker 0's
  assert not any(" delete " in c for c in cmds)


def test_a_stream_executor_runtime_gets_no_pjrt_variables():
  cmds = _commands(_launch("--name=t", "--zone=z", "--runtime=tpu-vm-tf-2.16.1-se",
                           "--config=configs/cnn.py", "--workdir=gs://b/r"))
  job = _remote(next(c for c in cmds if "tpu_job.sh" in c))
  assert "NEXT_PLUGGABLE_DEVICE" not in job and "tpu_job.sh python3 -m" in job


def test_pod_slice():
  cmds = _commands(_launch("--name=pod", "--zone=us-central2-b", "--accelerator=v4-32",
                           "--config=configs/resnet50.py", "--workdir=gs://bkt/r",
                           "--project=proj", "--delete_after", "--",
                           "--config.data_dir=gs://bkt/imagenet"))
  assert cmds[0] == ("gcloud compute tpus tpu-vm create pod --zone=us-central2-b "
                     "--project=proj --accelerator-type=v4-32 "
                     "--version=tpu-vm-tf-2.16.1-pod-pjrt")
  assert "--worker=all" in cmds[3]
  assert _remote(next(c for c in cmds if "tpu_job.sh" in c)) == (
      f"cd tpu_trainer && bash scripts/tpu_job.sh env TPU_LOAD_LIBRARY=0 {PJRT_ENV} "
      "python3 -m tpu_trainer.cli.train --config=configs/resnet50.py --workdir=gs://bkt/r "
      "--config.strategy=tpu --config.tpu=pod --config.data_dir=gs://bkt/imagenet")
  assert cmds[-1] == ("gcloud compute tpus tpu-vm delete pod --zone=us-central2-b "
                      "--project=proj --quiet")


def test_queued_spot():
  cmds = _commands(_launch("--name=q1", "--zone=us-central2-b", "--accelerator=v4-8",
                           "--queued", "--spot", "--config=configs/cnn.py",
                           "--workdir=gs://b/r", "--delete_after"))
  assert cmds[0] == ("gcloud compute tpus queued-resources create q1 --node-id=q1 "
                     "--zone=us-central2-b --accelerator-type=v4-8 "
                     "--runtime-version=tpu-vm-tf-2.16.1-pjrt --spot")
  assert cmds[1] == ("gcloud compute tpus queued-resources describe q1 --zone=us-central2-b "
                     "'--format=value(state.state)'")
  assert not any("tpu-vm create" in c for c in cmds)
  assert cmds[-1] == ("gcloud compute tpus queued-resources delete q1 --zone=us-central2-b "
                      "--force --quiet")


def test_printed_commands_run_exactly_what_the_script_runs(tmp_path):
  """A zone or flag with quotes and spaces, pasted, gives gcloud the same arguments."""
  cmds = _commands(_launch("--name=t", "--zone=z'; echo pwned; '", "--config=configs/cnn.py",
                           "--workdir=gs://b/r", "--", "--config.note=it's a b"))
  create = cmds[0]
  stub = 'gcloud() { python3 -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"; }; '
  argv = json.loads(subprocess.run(["bash", "-c", stub + create], capture_output=True,
                                   text=True, check=True).stdout)
  assert argv[:6] == ["compute", "tpus", "tpu-vm", "create", "t", "--zone=z'; echo pwned; '"]
  job = _remote(next(c for c in cmds if "tpu_job.sh" in c))
  assert shlex.split(job)[-1] == "--config.note=it's a b"


def test_bad_launches_fail_before_any_command():
  for args, message in (
      (["--zone=z", "--config=configs/cnn.py", "--workdir=gs://b/r"], "--name"),
      (["--name=t", "--zone=z", "--config=configs/cnn.py", "--workdir=/tmp/r"], "gs://"),
      (["--name=t", "--zone=z", "--accelerator=v4-32", "--runtime=tpu-vm-tf-2.16.1-pjrt",
        "--config=configs/cnn.py", "--workdir=gs://b/r", "--data_dir=gs://b/d"], "-pod runtime"),
      (["--name=t", "--zone=z", "--accelerator=v4-32", "--config=configs/cnn.py",
        "--workdir=gs://b/r", "--data_dir=/data/imagenet"], "cannot read a local data_dir"),
      (["--name=t", "--zone=z", "--accelerator=v4-32", "--config=configs/cnn.py",
        "--workdir=gs://b/r", "--", "--config.data_dir=/data/imagenet"],
       "cannot read a local data_dir"),
      (["--name=t", "--zone=z", "--accelerator=v4-32", "--config=configs/cnn.py",
        "--workdir=gs://b/r"], "cannot read a local data_dir")):
    result = _launch(*args)
    assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert "+ gcloud" not in result.stdout


def test_delete():
  assert _commands(_launch("--name=tpu1", "--zone=z", "--delete")) == [
      "gcloud compute tpus tpu-vm delete tpu1 --zone=z --quiet"]
  assert _commands(_launch("--name=tpu1", "--zone=z", "--queued", "--delete")) == [
      "gcloud compute tpus queued-resources delete tpu1 --zone=z --force --quiet"]


def _fake_gcloud(tmp_path, tail_status):
  """A gcloud on PATH that records its calls and ends the log stream with tail_status."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(f'#!/usr/bin/env bash\necho "$*" >> {tmp_path}/calls\n'
                    f'case "$*" in *"tail --pid"*) exit {tail_status} ;; esac\n')
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}


def test_after_a_preemption_it_says_delete_and_relaunch(tmp_path):
  args = ["--name=spot1", "--zone=us-central2-b", "--spot", "--config=configs/cnn.py",
          "--workdir=gs://b/r", "--delete_after"]
  result = subprocess.run(["bash", LAUNCH, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **_fake_gcloud(tmp_path, 143)})
  assert result.returncode == 143
  lines = result.stderr.splitlines()
  assert any(l.strip() == f"{LAUNCH} --name=spot1 --zone=us-central2-b --delete"
             for l in lines), result.stderr
  assert any(l.strip() == " ".join([LAUNCH, *args]) for l in lines)
  assert "delete" not in (tmp_path / "calls").read_text()  # --delete_after only on success


def test_a_failed_job_returns_its_status(tmp_path):
  result = subprocess.run(
      ["bash", LAUNCH, "--name=t", "--zone=z", "--config=configs/cnn.py", "--workdir=gs://b/r"],
      capture_output=True, text=True, timeout=60, env={**os.environ, **_fake_gcloud(tmp_path, 1)})
  assert result.returncode == 1 and "training exited with status 1" in result.stderr


def test_tpu_job_detaches_and_records_pid_and_status(tmp_path):
  env = {**os.environ, "HOME": str(tmp_path)}
  subprocess.run(["bash", os.path.join(REPO, "scripts", "tpu_job.sh"), "python3", "-c",
                  "import sys; print('working'); sys.exit(3)"], env=env, check=True, timeout=30)
  # The launcher's stream command, run where the job runs, ends with the job's status.
  stream = subprocess.run(["bash", "-c", "tail --pid=$(cat ~/train.pid) -n +1 -f ~/train.log; "
                           "exit $(cat ~/train.status 2>/dev/null || echo 255)"],
                          env=env, capture_output=True, text=True, timeout=30)
  assert stream.returncode == 3 and "working" in stream.stdout


def test_jax_backend_uses_the_generation_s_jax_image_and_runs_on_every_host():
  cmds = _commands(_launch("--name=v6", "--zone=us-east5-b", "--accelerator=v6e-16",
                           "--backend=jax", "--config=configs/cnn.py", "--workdir=gs://b/r",
                           "--data_dir=gs://b/d"))
  assert cmds[0] == ("gcloud compute tpus tpu-vm create v6 --zone=us-east5-b "
                     "--accelerator-type=v6e-16 --version=v2-alpha-tpuv6e")
  # No TensorFlow on a JAX image: jax[tpu] and a CPU TensorFlow for tf.data.
  assert _remote(cmds[3]).endswith(
      "python3 -m pip install -q -U 'jax[tpu]' 'tensorflow-cpu==2.21.*' orbax-checkpoint && "
      "python3 -m pip install -q -e tpu_trainer")
  job = next(c for c in cmds if "tpu_job.sh" in c)
  assert "--worker=all" in job  # JAX: every host runs the program
  assert _remote(job) == (
      "cd tpu_trainer && bash scripts/tpu_job.sh python3 -m tpu_trainer.cli.train "
      "--config=configs/cnn.py --workdir=gs://b/r --config.backend=jax "
      "--config.strategy=tpu --config.data_dir=gs://b/d")


def test_images_come_from_the_support_table():
  from tpu_trainer import tpus  # pylint: disable=g-import-not-at-top
  for accelerator in ("v2-8", "v3-32", "v4-8", "v5litepod-8", "v5p-16", "v6e-8"):
    for backend in ("tensorflow", "jax"):
      cmds = _commands(_launch("--name=t", "--zone=z", f"--accelerator={accelerator}",
                               f"--backend={backend}", "--config=configs/cnn.py",
                               "--workdir=gs://b/r", "--data_dir=gs://b/d"))
      image = tpus.runtime(tpus.parse_accelerator(accelerator), backend)
      assert cmds[0].endswith(f"--version={image}"), (accelerator, backend, cmds[0])


def test_tensorflow_on_tpu7x_is_refused_naming_the_jax_backend():
  result = _launch("--name=t", "--zone=z", "--accelerator=tpu7x-8", "--config=configs/cnn.py",
                   "--workdir=gs://b/r")
  assert result.returncode == 2 and "+ gcloud" not in result.stdout
  assert [l for l in result.stderr.strip().splitlines() if not l.startswith("warning:")] == [
      'error: TensorFlow does not run on tpu7x (Cloud TPU: "TensorFlow is not supported"): '
      "use --backend=jax."]
  result = _launch("--name=t", "--zone=z", "--accelerator=tpu7x-8", "--backend=jax",
                   "--config=configs/cnn.py", "--workdir=gs://b/r")
  assert result.returncode == 2 and "GKE" in result.stderr


def test_help():
  result = subprocess.run(["bash", LAUNCH, "--help"], capture_output=True, text=True,
                          timeout=30)
  assert result.returncode == 0 and "--backend=tensorflow|jax" in result.stdout
  assert not result.stdout.startswith("#")


def test_data_service_workers_beside_the_tpu():
  cmds = _commands(_launch("--name=t1", "--zone=us-central2-b", "--config=configs/resnet50.py",
                           "--workdir=gs://b/r", "--data_dir=gs://b/imagenet",
                           "--data_service_workers=2", "--data_service_machine_type=n2-highcpu-32",
                           "--delete_after"))
  create = next(c for c in cmds if c.startswith("gcloud compute instances create"))
  assert create.startswith("gcloud compute instances create t1-data-0 t1-data-1 "
                           "--zone=us-central2-b --machine-type=n2-highcpu-32")
  starts = [_remote(c) for c in cmds if c.startswith("gcloud compute ssh")]
  assert len(starts) == 2
  # The TPU image's TensorFlow on the workers; the dispatcher (journal in the
  # workdir) on the first VM; a worker on each.
  assert all("tensorflow-cpu==2.16.1" in s for s in starts)
  assert "--role=dispatcher --port=5050 --work_dir=gs://b/r/data_service" in starts[0]
  assert all("--role=worker --dispatcher=grpc://t1-data-0:5050" in s for s in starts)
  train = _remote(next(c for c in cmds if "tpu_job.sh" in c))
  assert "--config.input.service=grpc://t1-data-0:5050" in train
  assert cmds.index(create) < cmds.index(next(c for c in cmds if "tpu_job.sh" in c))
  # Deleted with the TPU.
  assert _commands(_launch("--name=t1", "--zone=z", "--data_service_workers=2", "--delete")) == [
      "gcloud compute tpus tpu-vm delete t1 --zone=z --quiet",
      "gcloud compute instances delete t1-data-0 t1-data-1 --zone=z --quiet"]


def test_data_service_needs_data_the_workers_can_read():
  result = _launch("--name=t", "--zone=z", "--config=configs/cnn.py", "--workdir=gs://b/r",
                   "--data_dir=/local/digits", "--data_service_workers=1")
  assert result.returncode == 2 and "--data_dir=gs://" in result.stderr
  result = _launch("--name=t", "--zone=z", "--config=configs/cnn.py", "--workdir=gs://b/r",
                   "--data_service_workers=many")
  assert result.returncode == 2 and "must be a number" in result.stderr


def test_vm_counts_are_decimal():
  """bash arithmetic read 010 as octal (8 VMs) and 08 as an error (the launch went
  on without the service)."""
  for given, vms in (("010", 10), ("08", 8)):
    cmds = _commands(_launch("--name=t1", "--zone=z", "--config=configs/cnn.py",
                             "--workdir=gs://b/r", "--data_dir=gs://b/d",
                             f"--data_service_workers={given}"))
    create = next(c for c in cmds if c.startswith("gcloud compute instances create"))
    assert create.split()[4:4 + vms + 1] == [f"t1-data-{i}" for i in range(vms)] + ["--zone=z"]


def test_a_config_file_not_committed_is_refused_before_any_command(tmp_path):
  """The TPU VM gets `git archive HEAD`: an untracked config file was missing
  there, after the TPU VM had been created; a modified one would run as committed."""
  clone = tmp_path / "clone"
  subprocess.run(["git", "clone", "-q", REPO, str(clone)], check=True, timeout=120)
  # This checkout's launcher, committed there (the clone has the last commit's).
  (clone / "scripts" / "launch_tpu.sh").write_text(open(LAUNCH).read())
  subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t",
                  "commit", "-qam", "launcher", "--allow-empty"], check=True)
  (clone / "configs" / "mine.py").write_text("from configs.cnn import get_config\n")
  launch = str(clone / "scripts" / "launch_tpu.sh")
  common = ["--dry_run", "--name=t", "--zone=z", "--workdir=gs://b/r"]
  result = subprocess.run(["bash", launch, *common, "--config=configs/mine.py"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "+ gcloud" not in result.stdout, result.stdout
  assert "--config=configs/mine.py is not committed" in result.stderr
  with open(clone / "configs" / "cnn.py", "a") as f:
    f.write("# edited\n")
  result = subprocess.run(["bash", launch, *common, "--config=configs/cnn.py:smoke"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "+ gcloud" not in result.stdout, result.stdout
  assert "--config=configs/cnn.py:smoke has changes not committed" in result.stderr
  subprocess.run(["git", "-C", str(clone), "checkout", "configs/cnn.py"], check=True)
  with open(clone / "tpu_trainer" / "training.py", "a") as f:
    f.write("# edited\n")
  result = subprocess.run(["bash", launch, *common, "--config=configs/cnn.py"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert "1 file(s) under tpu_trainer/, configs/ or scripts/ have changes not committed" \
      in result.stderr


def test_a_failed_describe_while_queued_is_tried_again(tmp_path):
  """One failed `describe` (a network blip) abandoned the queued launch."""
  env = _fake_gcloud(tmp_path, 0)
  gcloud = tmp_path / "bin" / "gcloud"
  gcloud.write_text(gcloud.read_text().replace(
      'case "$*" in', f'case "$*" in *"queued-resources describe"*) '
      f'n=$(cat {tmp_path}/describes 2>/dev/null || echo 0); echo $((n + 1)) > '
      f'{tmp_path}/describes; [ "$n" = 0 ] && exit 1; echo ACTIVE; exit 0 ;; ', 1))
  result = subprocess.run(
      ["bash", LAUNCH, "--name=q", "--zone=z", "--queued", "--config=configs/cnn.py",
       "--workdir=gs://b/r"], capture_output=True, text=True, timeout=60,
      env={**os.environ, **env, "TPU_TRAINER_QUEUED_POLL_S": "0"})
  assert result.returncode == 0, result.stderr
  assert "describe failed (1 in a row); trying again in 0 s." in result.stderr
  assert (tmp_path / "describes").read_text().strip() == "2"
  assert "tpu_job.sh" in (tmp_path / "calls").read_text()
