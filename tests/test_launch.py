"""scripts/launch_tpu.sh --dry_run prints the gcloud commands it would run."""
import os
import subprocess

from conftest import REPO


def _launch(*args):
  return subprocess.run(["bash", os.path.join(REPO, "scripts", "launch_tpu.sh"), "--dry_run",
                         *args], capture_output=True, text=True, timeout=60)


def _commands(result):
  assert result.returncode == 0, result.stderr
  return [l[2:] for l in result.stdout.splitlines() if l.startswith("+ ")]


def test_single_host():
  cmds = _commands(_launch("--name=tpu1", "--zone=us-central2-b", "--accelerator=v4-8",
                           "--config=configs/cnn.py", "--workdir=gs://bkt/run1", "--spot",
                           "--data_dir=gs://bkt/digits", "--", "--config.epochs=3"))
  assert cmds[0] == ("gcloud compute tpus tpu-vm create tpu1 --zone=us-central2-b "
                     "--accelerator-type=v4-8 --version=tpu-vm-tf-2.16.1-pjrt --spot")
  assert any(c.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in c for c in cmds)
  install = next(c for c in cmds if "pip install" in c)
  assert "--worker=all" in install and "tensorflow" not in install  # keep the image's TF
  train = next(c for c in cmds if "tpu-trainer-train" in c and "nohup" in c)
  assert "--worker=0" in train
  for flag in ("--config=configs/cnn.py", "--workdir=gs://bkt/run1", "--config.strategy=tpu",
               "--config.tpu=local", "--config.data_dir=gs://bkt/digits", "--config.epochs=3"):
    assert flag in train
  assert "TPU_LOAD_LIBRARY" not in train
  assert not any(" delete " in c for c in cmds)


def test_multi_host_slice():
  cmds = _commands(_launch("--name=pod", "--zone=us-central2-b", "--accelerator=v4-32",
                           "--config=configs/resnet50.py", "--workdir=gs://bkt/r",
                           "--project=proj", "--delete_after"))
  assert "--version=tpu-vm-tf-2.16.1-pod-pjrt" in cmds[0] and "--project=proj" in cmds[0]
  train = next(c for c in cmds if "nohup" in c)
  assert "--config.tpu=pod" in train and "TPU_LOAD_LIBRARY=0" in train
  assert cmds[-1] == "gcloud compute tpus tpu-vm delete pod --zone=us-central2-b --project=proj --quiet"


def test_bad_launches_fail_before_any_command():
  for args, message in ((["--zone=z", "--config=configs/cnn.py", "--workdir=gs://b/r"], "--name"),
                        (["--name=t", "--zone=z", "--config=configs/cnn.py", "--workdir=/tmp/r"],
                         "gs://"),
                        (["--name=t", "--zone=z", "--accelerator=v4-32",
                          "--runtime=tpu-vm-tf-2.16.1-pjrt", "--config=configs/cnn.py",
                          "--workdir=gs://b/r"], "-pod runtime")):
    result = _launch(*args)
    assert result.returncode == 2 and message in result.stderr
    assert "+ gcloud" not in result.stdout


def test_delete():
  cmds = _commands(_launch("--name=tpu1", "--zone=z", "--delete"))
  assert cmds == ["gcloud compute tpus tpu-vm delete tpu1 --zone=z --quiet"]
