"""One live run per workdir: refused while the owner lives, taken over when it
died (same host: pid gone) or its lease expired; on gs:// with generation
preconditions against fake-gcs-server."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
from tpu_trainer import lock as lock_lib
from tpu_trainer import storage


def _write_owner(path, **owner):
  with open(path, "w") as f:
    json.dump({"host": socket.gethostname(), "pid": os.getpid(),
               "lease_until": time.time() + 600, **owner}, f)


def test_a_live_owner_blocks_a_dead_one_does_not(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_owner(tmp_path / ".lock", pid=sleeper.pid)
    with pytest.raises(ValueError, match=f"in use by pid {sleeper.pid}"):
      lock_lib.WorkdirLock(str(tmp_path)).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()
  held = lock_lib.WorkdirLock(str(tmp_path)).acquire()  # its pid is gone: taken over
  assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  held.release()
  assert not (tmp_path / ".lock").exists()


def test_another_hosts_lock_blocks_until_its_lease_expires(tmp_path):
  _write_owner(tmp_path / ".lock", host="tpu-vm-7", pid=1)
  with pytest.raises(ValueError, match="in use by pid 1 on tpu-vm-7"):
    lock_lib.WorkdirLock(str(tmp_path)).acquire()
  _write_owner(tmp_path / ".lock", host="tpu-vm-7", pid=1, lease_until=time.time() - 1)
  lock_lib.WorkdirLock(str(tmp_path)).acquire().release()


def test_gcs_lock_uses_generation_preconditions(gcs_bucket):
  workdir = f"gs://{gcs_bucket}/run"
  first = lock_lib.WorkdirLock(workdir).acquire()
  with pytest.raises(ValueError, match="in use by pid"):
    lock_lib.WorkdirLock(workdir).acquire()  # this very process: alive
  first.renew()
  blob = storage.gcs_client().bucket(gcs_bucket).blob("run/.lock")
  blob.upload_from_string(json.dumps({"host": "gone", "pid": 1, "lease_until": 0}))
  taker = lock_lib.WorkdirLock(workdir).acquire()  # expired lease: taken over
  assert json.loads(blob.download_as_text())["pid"] == os.getpid()
  # A writer holding an old generation loses: the lock is not silently overwritten.
  assert not first._write({"pid": -1}, first.generation)  # pylint: disable=protected-access
  taker.release()


def test_a_second_training_run_into_a_live_workdir_is_refused(digits_dir, tmp_path):
  workdir = tmp_path / "w"
  cmd = [sys.executable, "-m", "tpu_trainer.cli.train", "--config=configs/mlp.py",
         f"--workdir={workdir}", f"--config.data_dir={digits_dir}", "--config.steps=100000"]
  first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while not (workdir / "config.json").exists() and time.time() < deadline:
      time.sleep(0.1)
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    errors = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"in use by pid {first.pid}" in errors[0]
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
