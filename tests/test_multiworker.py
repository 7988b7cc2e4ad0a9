"""MultiWorkerMirroredStrategy for real: two worker processes on localhost
ports train the seed CNN together and end with the same weights."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _train_together(digits_dir, workdir, steps):
  workers = [f"localhost:{p}" for p in _free_ports(2)]
  procs = []
  for index in range(2):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tpu_trainer.cli.train", "--config=configs/cnn.py",
         f"--workdir={workdir}", f"--config.data_dir={digits_dir}",
         "--config.strategy=multiworker", "--config.batch_size=64", f"--config.steps={steps}",
         "--config.steps_per_execution=5", "--config.base_lr=0.002"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for proc in procs:  # each worker to its own end; a chief may finish first
      outputs.append(proc.communicate(timeout=300))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  results = []
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
    assert "MultiWorkerMirroredStrategy" in err
    results.append((json.loads(out.splitlines()[0]), err))
  return results


@pytest.mark.core
def test_two_workers_agree_on_weights_and_resume_together(digits_dir, tmp_path):
  workdir = str(tmp_path / "w")
  results = [r for r, _ in _train_together(digits_dir, workdir, 30)]
  assert [r["replicas"] for r in results] == [2, 2]
  assert [r["step"] for r in results] == [30, 30]
  assert results[0]["weights_fingerprint"] == results[1]["weights_fingerprint"]
  # Both pipelines together evaluated every test example once.
  assert results[0]["eval_examples"] == 360 == results[1]["eval_examples"]
  # Only the chief (worker 0) wrote the workdir.
  assert os.path.exists(os.path.join(workdir, "metrics.json"))
  checkpoints = os.listdir(os.path.join(workdir, "checkpoints"))
  assert "checkpoint" in checkpoints

  # Started again for longer, both workers resume from the chief's checkpoint.
  again = _train_together(digits_dir, workdir, 40)
  for result, err in again:
    assert "Resumed from" in err and "ckpt-30" in err
    assert result["step"] == 40
  assert again[0][0]["weights_fingerprint"] == again[1][0]["weights_fingerprint"]
