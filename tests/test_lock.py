"""One live run per workdir: refused while the owner lives, taken over when it
died (same host: pid gone) or its lease expired; on gs:// with generation
preconditions against fake-gcs-server."""
import fcntl
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
  first.renew()
  blob = storage.gcs_client().bucket(gcs_bucket).blob("run/.lock")
  live = {"host": "tpu-vm-7", "pid": 1, "lease_until": time.time() + 600}
  blob.upload_from_string(json.dumps(live))
  with pytest.raises(ValueError, match="in use by pid 1 on tpu-vm-7"):
    lock_lib.WorkdirLock(workdir).acquire()  # another host's, its lease running
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
    assert (workdir / "config.json").exists(), "the first run never took the workdir"
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    errors = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"in use by pid {first.pid}" in errors[0]
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()


def test_renew_extends_the_lease(tmp_path, monkeypatch):
  clock = [1000.0]
  monkeypatch.setattr(lock_lib.time, "time", lambda: clock[0])
  lock = lock_lib.WorkdirLock(str(tmp_path)).acquire()
  with open(tmp_path / lock_lib.LOCK_FILE) as f:
    first = json.load(f)["lease_until"]
  clock[0] += 600
  lock.renew()
  with open(tmp_path / lock_lib.LOCK_FILE) as f:
    assert json.load(f)["lease_until"] == first + 600
  lock.release()


def test_training_renews_its_lease(digits_dir, tmp_path, monkeypatch):
  """A run longer than the lease keeps its workdir: every progress line renews."""
  from configs import mlp as mlp_config  # pylint: disable=g-import-not-at-top
  from tpu_trainer import training  # pylint: disable=g-import-not-at-top
  renewed = []
  real = lock_lib.WorkdirLock.renew
  monkeypatch.setattr(lock_lib.WorkdirLock, "renew",
                      lambda self: renewed.append(time.time()) or real(self))
  config = mlp_config.get_config()
  config.update(data_dir=digits_dir, batch_size=64, steps=30, steps_per_execution=5,
                log_every_steps=10)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())
  assert len(renewed) == 3  # steps 10, 20, 30


def test_this_process_or_a_reused_pid_is_no_conflict(tmp_path):
  """A restarted container's process can be pid 1 again, and a dead run's pid can
  belong to a newer process: neither is the run that took the lock."""
  _write_owner(tmp_path / ".lock", pid=os.getpid(), started=time.time())
  lock_lib.WorkdirLock(str(tmp_path)).acquire().release()
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    time.sleep(0.5)
    _write_owner(tmp_path / ".lock", pid=sleeper.pid, started=time.time() - 3600)
    lock_lib.WorkdirLock(str(tmp_path)).acquire().release()  # the pid was reused
    _write_owner(tmp_path / ".lock", pid=sleeper.pid, started=time.time())
    with pytest.raises(ValueError, match=f"in use by pid {sleeper.pid}"):
      lock_lib.WorkdirLock(str(tmp_path)).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_dry_run_never_clears_a_workdir_in_use(tmp_path):
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "metrics.json").write_text("{}")
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    _write_owner(workdir / ".lock", pid=sleeper.pid, started=time.time())
    result = run_cli("dryrun", f"--output_dir={tmp_path}")
  finally:
    sleeper.kill()
    sleeper.wait()
  assert result.returncode == 2 and f"in use by pid {sleeper.pid}" in result.stderr
  assert (workdir / "metrics.json").read_text() == "{}"


def test_clearing_a_workdir_removes_only_what_runs_write(tmp_path):
  from tpu_trainer import training  # pylint: disable=g-import-not-at-top
  workdir, outside = tmp_path / "w", tmp_path / "outside"
  for d in (workdir / "checkpoints", workdir / "train", outside):
    d.mkdir(parents=True)
  (outside / "precious.txt").write_text("x")
  for name in ("config.json", "metrics.json", "eval_test.json", "eval_test_confusion.png",
               "notes.txt", "config.json.bak"):
    (workdir / name).write_text("x")
  os.symlink(outside, workdir / "saved_model")
  training.clear_workdir(str(workdir))
  assert sorted(os.listdir(workdir)) == ["config.json.bak", "notes.txt"]
  assert (outside / "precious.txt").exists()


def _expire(lock_path):
  """What a stalled renewal (or a clock step) leaves: the owner's lease in the past."""
  owner = json.loads(lock_path.read_text())
  lock_path.write_text(json.dumps({**owner, "lease_until": time.time() - 1}))


def _stall_outside_its_lock(process, workdir):
  """SIGSTOPs the process at a moment it is not inside a lock update (which holds
  an flock of the workdir): stopped, every thread, and the flock free."""
  for _ in range(200):
    process.send_signal(signal.SIGSTOP)
    tasks = f"/proc/{process.pid}/task"
    while any(open(f"{tasks}/{t}/stat").read().rsplit(")", 1)[1].split()[0] != "T"
              for t in os.listdir(tasks)):
      time.sleep(0.001)
    fd = os.open(workdir, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return
    except BlockingIOError:
      process.send_signal(signal.SIGCONT)
      time.sleep(0.01)
    finally:
      os.close(fd)
  raise AssertionError("the run held its workdir's flock at every try")


def _checkpoint_steps(workdir):
  """Steps of the checkpoints written (ckpt-STEP.index: whole ones only)."""
  return {int(p.name[len("ckpt-"):-len(".index")])
          for p in (workdir / "checkpoints").glob("ckpt-*.index")}


def test_a_run_that_lost_its_lock_stops_before_its_next_write(digits_dir, tmp_path):
  """Run A trains; its lease runs out; run B (another process) takes the workdir
  over. A's next renewal finds B's lock: A stops with one line and exit 2,
  without overwriting B's lock or writing another checkpoint."""
  workdir = tmp_path / "w"
  cmd = [sys.executable, "-m", "tpu_trainer.cli.train", "--config=configs/mlp.py",
         f"--workdir={workdir}", f"--config.data_dir={digits_dir}", "--config.steps=100000",
         "--config.batch_size=32", "--config.steps_per_execution=5",
         "--config.log_every_steps=5", "--config.checkpoint_every_steps=10"]
  log = tmp_path / "a.log"
  with open(log, "w") as stderr:
    run_a = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    deadline = time.time() + 120
    while not list((workdir / "checkpoints").glob("ckpt-*.index")):
      assert run_a.poll() is None and time.time() < deadline, log.read_text()[-2000:]
      time.sleep(0.05)
    # A stalls (as a run does when its VM is paused), long enough for its lease
    # to run out and for B to take the workdir over.
    _stall_outside_its_lock(run_a, workdir)
    _expire(workdir / ".lock")
    run_b = lock_lib.WorkdirLock(str(workdir)).acquire()  # this process: another pid
    taken = (workdir / ".lock").read_text()
    checkpoints = _checkpoint_steps(workdir)
    run_a.send_signal(signal.SIGCONT)
    assert json.loads(taken)["token"] == run_b.token
    assert run_a.wait(timeout=120) == 2, log.read_text()[-2000:]
    errors = [l for l in log.read_text().splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"now belongs to pid {os.getpid()}" in errors[0]
    assert "writing nothing more" in errors[0]
    assert (workdir / ".lock").read_text() == taken  # B's lock, untouched
    # A save A had begun before it stalled may finish (the check comes before the
    # write, not inside it): the next one at most; none may begin after.
    assert _checkpoint_steps(workdir) - checkpoints <= {max(checkpoints) + 10}
    run_b.renew()  # the winner goes on
    run_b.release()
    assert not (workdir / ".lock").exists()
  finally:
    if run_a.poll() is None:
      run_a.kill()
      run_a.wait()


def test_gcs_a_lost_lock_is_not_renewed_over_the_winner(gcs_bucket):
  workdir = f"gs://{gcs_bucket}/run"
  loser = lock_lib.WorkdirLock(workdir).acquire()
  blob = storage.gcs_client().bucket(gcs_bucket).blob("run/.lock")
  owner = json.loads(blob.download_as_text())
  blob.upload_from_string(json.dumps({**owner, "lease_until": 0}))  # its lease ran out
  blob.reload()
  loser.generation = blob.generation  # as if its own last renewal had written that
  winner = lock_lib.WorkdirLock(workdir).acquire()
  with pytest.raises(ValueError, match="now belongs to pid"):
    loser.renew()
  with pytest.raises(ValueError, match="writing nothing more"):
    loser.confirm()
  assert json.loads(blob.download_as_text())["token"] == winner.token
  loser.release()  # not its lock: left alone
  assert json.loads(blob.download_as_text())["token"] == winner.token
  winner.release()
