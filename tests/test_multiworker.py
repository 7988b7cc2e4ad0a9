"""MultiWorkerMirroredStrategy for real: two worker processes on localhost
ports train the seed CNN together, end with the same weights, and stop, save
and resume together when one of them gets SIGTERM."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import REPO

pytestmark = pytest.mark.core


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _start_workers(digits_dir, workdirs, steps, tmp_path, *extra):
  """Worker i trains into workdirs[i], its stderr in a file, its TMPDIR its own."""
  workers = [f"localhost:{p}" for p in _free_ports(2)]
  procs = []
  for index, workdir in enumerate(workdirs):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    tmpdir = tmp_path / f"tmp{index}"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2",
           "TMPDIR": str(tmpdir)}
    stderr = open(tmp_path / f"worker{index}.log", "w")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tpu_trainer.cli.train", "--config=configs/cnn.py",
         f"--workdir={workdir}", f"--config.data_dir={digits_dir}",
         "--config.strategy=multiworker", "--config.batch_size=64", f"--config.steps={steps}",
         "--config.steps_per_execution=5", "--config.base_lr=0.002", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True))
    stderr.close()
  return procs


def _wait(procs, tmp_path, timeout=300):
  """[(exit status, stdout, stderr)] of each worker, each to its own end."""
  try:
    outs = [proc.communicate(timeout=timeout)[0] for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return [(proc.returncode, out, (tmp_path / f"worker{i}.log").read_text())
          for i, (proc, out) in enumerate(zip(procs, outs))]


def _training_workers(digits_dir, workdir, tmp_path, watch: int):
  """Two workers on a long run, returned once worker `watch` logs a trained step."""
  procs = _start_workers(digits_dir, [workdir, workdir], 5000, tmp_path,
                         "--config.log_every_steps=5")
  log = tmp_path / f"worker{watch}.log"
  deadline = time.time() + 240
  while not re.search(r"step [1-9]\d*/5000", log.read_text()):
    assert time.time() < deadline and all(p.poll() is None for p in procs), (
        log.read_text()[-3000:])
    time.sleep(0.1)
  return procs


def _train_together(digits_dir, workdirs, steps, tmp_path, *extra):
  results = []
  for code, out, err in _wait(_start_workers(digits_dir, workdirs, steps, tmp_path, *extra),
                              tmp_path):
    assert code == 0, err[-3000:]
    assert "MultiWorkerMirroredStrategy" in err
    results.append((json.loads(out.splitlines()[0]), err))
  return results


def test_two_workers_agree_on_weights_and_resume_together(digits_dir, tmp_path):
  workdir, other = str(tmp_path / "w"), str(tmp_path / "w1")
  # Worker 1 is given a workdir of its own: it must write nothing there.
  results = [r for r, _ in _train_together(digits_dir, [workdir, other], 30, tmp_path)]
  assert [r["replicas"] for r in results] == [2, 2]
  assert [r["step"] for r in results] == [30, 30]
  assert results[0]["weights_fingerprint"] == results[1]["weights_fingerprint"]
  # Both pipelines together evaluated every test example once.
  assert results[0]["eval_examples"] == 360 == results[1]["eval_examples"]
  assert not os.path.exists(other)
  assert os.listdir(tmp_path / "tmp1") == []  # its own checkpoints (temp) are gone too
  assert json.loads((tmp_path / "w" / "metrics.json").read_text())["step"] == 30
  assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-30")

  # Started again for longer, both workers resume from the chief's checkpoint.
  again = _train_together(digits_dir, [workdir, workdir], 40, tmp_path)
  for result, err in again:
    assert "Resumed from" in err and "ckpt-30" in err
    assert result["step"] == 40
  assert again[0][0]["weights_fingerprint"] == again[1][0]["weights_fingerprint"]


def test_sigterm_to_one_worker_makes_both_save_the_same_step_and_resume(digits_dir, tmp_path):
  workdir = str(tmp_path / "w")
  procs = _training_workers(digits_dir, workdir, tmp_path, watch=1)
  procs[1].send_signal(signal.SIGTERM)  # worker 1, not the chief
  (code0, _, err0), (code1, _, err1) = _wait(procs, tmp_path, timeout=120)
  assert (code0, code1) == (143, 143), err0[-2000:] + err1[-2000:]
  here = re.search(r"SIGTERM here at step (\d+)/5000", err1)
  there = re.search(r"SIGTERM on another worker at step (\d+)/5000", err0)
  assert here and there and here.group(1) == there.group(1), err0[-1500:] + err1[-1500:]
  step = int(here.group(1))
  assert step < 5000
  latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  assert latest.endswith(f"ckpt-{step}")
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))

  # Both rerun: both resume from that step, and finish with the same weights.
  again = _train_together(digits_dir, [workdir, workdir], step + 10, tmp_path)
  for result, err in again:
    assert f"Resumed from {latest}" in err
    assert result["step"] == step + 10
  assert again[0][0]["weights_fingerprint"] == again[1][0]["weights_fingerprint"]


def test_a_lost_worker_is_one_line_saying_what_to_do(digits_dir, tmp_path):
  """kill -9 of a worker (a lost VM): the other says so in one line, not a traceback."""
  procs = _training_workers(digits_dir, str(tmp_path / "w"), tmp_path, watch=0)
  procs[1].kill()
  (code0, _, err0), _ = _wait(procs, tmp_path, timeout=180)
  assert code0 == 75 and "Traceback" not in err0, err0[-3000:]  # try again: GKE restarts
  errors = [line for line in err0.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "A worker of this job was lost" in errors[0], err0[-2000:]
  assert "Start every worker again with the same command" in errors[0]


def test_workers_started_with_different_settings_are_refused_naming_the_key(digits_dir,
                                                                            tmp_path):
  workdir = str(tmp_path / "w")
  workers = [f"localhost:{p}" for p in _free_ports(2)]
  procs = []
  for index, lr in enumerate(("0.002", "0.02")):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tpu_trainer.cli.train", "--config=configs/mlp.py",
         f"--workdir={workdir}", f"--config.data_dir={digits_dir}",
         "--config.strategy=multiworker", "--config.steps=20", f"--config.base_lr={lr}"],
        cwd=REPO, env={**os.environ, "TF_CONFIG": json.dumps(tf_config),
                       "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for proc in procs:
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, err[-3000:]
    assert "error: The workers of this job disagree on base_lr" in err
  assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_two_workers_train_a_users_model_together(digits_dir, tmp_path):
  """Every worker imports the user's builder from the same file (a registered
  custom layer, logits out) and the job trains as one."""
  (tmp_path / "my_models.py").write_text(
      "import keras\n"
      "@keras.saving.register_keras_serializable(package='my_models')\n"
      "class Scale(keras.layers.Layer):\n"
      "  def call(self, x):\n"
      "    return x / 255.0\n"
      "def build(input_shape, num_classes, config):\n"
      "  inputs = keras.Input(input_shape)\n"
      "  x = keras.layers.Conv2D(16, 3, padding='same', activation='relu')(Scale()(inputs))\n"
      "  return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(x)))\n")
  workdir = str(tmp_path / "w")
  results = _train_together(digits_dir, [workdir, workdir], 40, tmp_path,
                            f"--config.model={tmp_path / 'my_models.py'}:build")
  (first, err), (second, _) = results
  assert first["step"] == second["step"] == 40 and first["replicas"] == 2
  assert first["weights_fingerprint"] == second["weights_fingerprint"]
  assert first["accuracy"] > 0.5 and "logits out" in err
  assert os.path.exists(os.path.join(workdir, "saved_model", "saved_model.pb"))
