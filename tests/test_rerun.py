"""Rerunning a command on a workdir that already holds a run: a finished run
(early stop included) stays finished unless more is asked of it; a resume that
would train nothing, or that is refused, leaves the workdir's run as it was."""
import hashlib
import json
import os
import signal
import subprocess

import pytest

from conftest import run_cli
from conftest import start_cli
from conftest import wait_for


def _train(data, workdir, *flags):
  return ("train", "--config=configs/mlp.py", f"--workdir={workdir}",
          f"--config.data_dir={data}", "--config.steps_per_execution=1", *flags)


def _contents(workdir) -> dict:
  """Every file of the workdir (lock aside) by its path and sha256."""
  found = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      if name != ".lock":
        with open(path, "rb") as f:
          found[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return found


@pytest.mark.core
def test_a_finished_early_stopped_run_stays_finished_unless_asked_for_more(digits_dir,
                                                                           tmp_path):
  """A learning rate too small to move the accuracy: the second evaluation
  brings no gain and patience 1 stops the run at epoch 2 of 20."""
  workdir = tmp_path / "run"
  flags = ("--config.epochs=20", "--config.base_lr=1e-9", "--config.warmup_epochs=0",
           "--config.early_stopping_patience=1")
  first = run_cli(*_train(digits_dir, workdir, *flags))
  assert first.returncode == 0, first.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["stopped_early"] and metrics["step"] < metrics["total_steps"]
  before = _contents(workdir)

  again = run_cli(*_train(digits_dir, workdir, *flags))
  assert again.returncode == 0, again.stderr[-3000:]
  assert "holds a finished run (stopped early at step %d" % metrics["step"] in again.stderr
  assert _contents(workdir) == before  # nothing retrained, rewritten or exported

  # The same number of examples at another batch size asks no more either.
  halved = run_cli(*_train(digits_dir, workdir, *flags,
                           f"--config.batch_size={metrics['batch_size'] * 2}"))
  assert halved.returncode == 0 and _contents(workdir) == before, halved.stderr[-3000:]

  more = run_cli(*_train(digits_dir, workdir, "--config.epochs=40", *flags[1:]))
  assert more.returncode == 0, more.stderr[-3000:]
  assert json.loads((workdir / "metrics.json").read_text())["step"] > metrics["step"]


@pytest.mark.core
def test_a_finished_run_rerun_with_the_same_command_changes_nothing(digits_dir, tmp_path):
  workdir = tmp_path / "run"
  first = run_cli(*_train(digits_dir, workdir, "--config.epochs=2"))
  assert first.returncode == 0, first.stderr[-3000:]
  before = _contents(workdir)
  again = run_cli(*_train(digits_dir, workdir, "--config.epochs=2"))
  assert again.returncode == 0, again.stderr[-3000:]
  assert "holds a finished run (trained its" in again.stderr
  assert _contents(workdir) == before


def _interrupted_run(data, workdir, log):
  """A run SIGTERMed (preempted) after its first checkpoint: resumable, not finished."""
  proc = start_cli(*_train(data, workdir, "--config.steps=100000", "--config.batch_size=32",
                           "--config.checkpoint_every_steps=20"), log=log)
  wait_for(lambda: os.path.exists(workdir / "checkpoints" / "checkpoint"), proc, log)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
  assert not (workdir / "metrics.json").exists()


@pytest.mark.core
def test_a_resume_past_the_configs_last_step_is_refused_and_writes_nothing(digits_dir,
                                                                         tmp_path):
  """The issue's steps: 8 epochs at batch 256 are 40 steps, fewer than the 176
  done at batch 32: it trained nothing, said it finished and rewrote config.json."""
  workdir = tmp_path / "run"
  _interrupted_run(digits_dir, workdir, tmp_path / "first.log")
  before = _contents(workdir)
  bigger = run_cli(*_train(digits_dir, workdir, "--config.epochs=1",
                           "--config.batch_size=256"))
  assert bigger.returncode == 2, bigger.stderr[-3000:]
  error = [l for l in bigger.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1 and "(batch 32), past this config's last step" in error[0], error
  assert "keep config.batch_size=32" in error[0]
  assert _contents(workdir) == before


@pytest.mark.core
def test_a_refused_resume_leaves_the_finished_runs_config_json(digits_dir, tmp_path):
  """mixed_float16 adds a loss scale to the optimizer: the float32 run's
  checkpoint cannot resume it. Refused naming the setting (it was an internal
  error, then "other variables"), and config.json still says float32."""
  workdir = tmp_path / "run"
  first = run_cli(*_train(digits_dir, workdir, "--config.epochs=2",
                          "--config.precision=float32"))
  assert first.returncode == 0, first.stderr[-3000:]
  before = _contents(workdir)
  changed = run_cli(*_train(digits_dir, workdir, "--config.epochs=3",
                            "--config.precision=mixed_float16"))
  assert changed.returncode == 2, changed.stderr[-3000:]
  error = [l for l in changed.stderr.splitlines() if l.startswith("error:")]
  assert error == [f"error: workdir={workdir} holds a run in precision float32, and this one "
                   "is in mixed_float16: mixed_float16 trains with a loss scale in the "
                   "optimizer, so the checkpoints of one cannot resume the other. Pass "
                   "--config.precision=float32 to resume it, or another --workdir."], \
      changed.stderr[-3000:]
  assert _contents(workdir) == before
  assert json.loads((workdir / "config.json").read_text())["precision"] == "float32"


def _read_only(directory):
  """Makes `directory` read-only for this user; undone by calling what it returns.
  Root writes through permissions: a read-only file system is mounted there."""
  if os.geteuid() != 0:
    directory.chmod(0o555)
    return lambda: directory.chmod(0o755)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                            str(directory)], capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f"root here, and no read-only mount: {mounted.stderr.strip()}")
  return lambda: subprocess.run(["umount", str(directory)], check=True)


@pytest.mark.parametrize("where", ["workdir", "its parent"])
def test_a_read_only_workdir_is_refused_before_any_work(digits_dir, tmp_path, where):
  parent = tmp_path / "ro"
  workdir = parent / "run"
  workdir.mkdir(parents=True)
  if where == "its parent":
    workdir.rmdir()
  target = workdir if where == "workdir" else parent
  undo = _read_only(target)
  try:
    result = run_cli("train", "--config=configs/mlp.py", f"--workdir={workdir}",
                     f"--config.data_dir={digits_dir}")
  finally:
    undo()
  assert result.returncode == 2, result.stderr[-3000:]
  error = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert error == [f"error: workdir={workdir} cannot be written by this user ({target} is "
                   "read-only here): pass another --workdir, or make it writable."], \
      result.stderr[-3000:]
