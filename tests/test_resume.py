"""A training run killed (SIGTERM as on preemption, or SIGKILL) and started
again with the same command continues from its last checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import REPO
from conftest import run_cli
from conftest import start_cli
from conftest import wait_for


def _train_cmd(data, workdir):
  return [sys.executable, "-m", "tpu_trainer.cli.train", "--config=configs/cnn.py",
          f"--workdir={workdir}", f"--config.data_dir={data}", "--config.cpu_devices=2",
          "--config.batch_size=64", "--config.steps=800", "--config.steps_per_execution=10",
          "--config.checkpoint_every_steps=40", "--config.base_lr=0.002"]


def _wait_for_checkpoint(proc, workdir, timeout=120):
  index = os.path.join(workdir, "checkpoints", "checkpoint")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(index):
      return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def _latest_step(workdir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  return int(path.rsplit("-", 1)[1])


def _checkpoint_weights(workdir):
  """The model's weights in the latest checkpoint: (shape, sum) of each, sorted."""
  from test_exact_resume import tf_checkpoint  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return sorted((v.shape, round(float(np.sum(v)), 4))
                for path, v in tf_checkpoint(os.path.join(workdir, "checkpoints")).items()
                if not path.startswith("adam/"))


def _exported_weights(workdir):
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  model = keras.models.load_model(os.path.join(workdir, "model.keras"))
  return sorted((tuple(w.shape), round(float(np.sum(w)), 4)) for w in model.get_weights())


@pytest.mark.core
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_final_step(digits_dir, tmp_path, sig):
  workdir = str(tmp_path / "w")
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  cmd = _train_cmd(digits_dir, workdir)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(proc, workdir)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  if sig in (signal.SIGTERM, signal.SIGINT):  # saved: 143, or 130 for Ctrl-C
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert f"preempted: {sig.name} here at step" in stderr and "Traceback" not in stderr
  else:
    assert proc.returncode == -signal.SIGKILL
  stopped_at = _latest_step(workdir)
  assert 0 < stopped_at < 800
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))

  # Resumed with nothing left to train, the run exports exactly the checkpoint's weights.
  upto = subprocess.run(cmd + [f"--config.steps={stopped_at}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert upto.returncode == 0, upto.stderr[-3000:]
  assert f"step {stopped_at}/" not in upto.stderr  # no execution ran
  assert _exported_weights(workdir) == _checkpoint_weights(workdir)
  os.remove(os.path.join(workdir, "metrics.json"))

  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resumed from {os.path.join(workdir, 'checkpoints', 'ckpt')}" in again.stderr
  metrics = json.loads(again.stdout.splitlines()[0])
  assert metrics["step"] == 800 and metrics["accuracy"] > 0.9
  assert _latest_step(workdir) == 800


@pytest.mark.core
def test_sigterm_during_export_exits_143_and_the_rerun_finishes_the_export(digits_dir,
                                                                           tmp_path):
  workdir = tmp_path / "w"
  args = ["--config=configs/mlp.py", f"--workdir={workdir}", f"--config.data_dir={digits_dir}",
          "--config.steps=20", "--config.batch_size=64", "--config.steps_per_execution=10"]
  log = tmp_path / "stderr.log"
  proc = start_cli("train", *args, log=log)
  wait_for(lambda: "Exporting model.keras" in log.read_text(), proc, log, timeout=120)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 143, log.read_text()[-3000:]
  assert "preempted: SIGTERM during the export" in log.read_text()
  # Nothing half-written: no metrics.json, no temp files, no partial model.
  assert not (workdir / "metrics.json").exists()
  assert not [n for n in os.listdir(workdir) if ".tmp-" in n]
  if (workdir / "model.keras").exists():
    assert zipfile.is_zipfile(workdir / "model.keras")

  again = run_cli("train", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "ckpt-20" in again.stderr and "step 20/20" not in again.stderr  # no more training
  assert json.loads((workdir / "metrics.json").read_text())["step"] == 20
  assert zipfile.is_zipfile(workdir / "model.keras")
  assert (workdir / "saved_model" / "saved_model.pb").exists()


def test_a_sigterm_during_setup_is_kept_and_acted_on_at_the_first_safe_point(digits_dir,
                                                                              tmp_path):
  """Recorded from the start of the process: a signal that comes while the run
  still sets up (before any step) stops it after its first execution, saved."""
  workdir = str(tmp_path / "w")
  proc = subprocess.Popen(_train_cmd(digits_dir, workdir), cwd=REPO,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  first_line = proc.stderr.readline()  # the versions line: flags parsed, setup begins
  assert "TensorFlow" in first_line, first_line
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 143, stderr[-3000:]
  assert "preempted: SIGTERM here at step 10/800" in stderr  # the first execution's end
  assert _latest_step(workdir) == 10
