"""Preemption-proof: in reproducible mode (input.deterministic), a run stopped
by SIGTERM at several steps and resumed each time, or killed with SIGKILL and
resumed from its last checkpoint, ends with bit-identical weights to the run
that was never interrupted: the input resumes at the very batch it was at."""
import os
import re
import signal

import numpy as np
import pytest

from conftest import run_cli
from conftest import start_cli
from conftest import wait_for


def _args(backend, data, workdir, **overrides):
  values = {"data_dir": data, "backend": backend, "batch_size": 64, "steps": 70,
            "steps_per_execution": 5, "log_every_steps": 5, "checkpoint_every_steps": 10,
            "input.deterministic": True, "eval_every_epochs": 100, **overrides}
  return ["--config=configs/cnn.py", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in values.items())]


def _final_weights(workdir):
  """Every saved variable of the last checkpoint (model and optimizer), by name."""
  directory = os.path.join(workdir, "checkpoints")
  npz = sorted((f for f in os.listdir(directory) if f.endswith(".npz")),
               key=lambda f: int(re.findall(r"\d+", f)[0]))
  if npz:  # the JAX backend's
    with np.load(os.path.join(directory, npz[-1])) as saved:
      return {k: saved[k] for k in saved.files}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(directory)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if not k.startswith("save_counter")}


def _stop_at(args, tmp_path, step, sig=signal.SIGTERM):
  """Starts the run, sends `sig` once it logged `step`; returns its stderr."""
  log = tmp_path / f"stderr-{step}.log"
  proc = start_cli("train", *args, log=log)
  wait_for(lambda: re.search(rf"step (\d+)/70", log.read_text()) and max(
      int(s) for s in re.findall(r"step (\d+)/70", log.read_text())) >= step, proc, log,
           timeout=240)
  proc.send_signal(sig)
  assert proc.wait(timeout=120) == (143 if sig == signal.SIGTERM else -sig), \
      log.read_text()[-3000:]
  return log.read_text()


def _assert_same(expected, got):
  assert sorted(expected) == sorted(got)
  differ = [k for k in expected if not np.array_equal(expected[k], got[k])]
  assert not differ, f"{len(differ)} of {len(expected)} variables differ: {differ[:5]}"


@pytest.mark.parametrize("backend,overrides", [
    ("tensorflow", {"cpu_devices": 2, "input.cache": False, "input.shuffle_buffer": 300,
                    "input.augment": True}),
    ("jax", {}),
])
def test_preempted_three_times_ends_bit_identical_to_the_uninterrupted_run(
    digits_dir, tmp_path, backend, overrides):
  whole = run_cli("train", *_args(backend, digits_dir, tmp_path / "whole", **overrides))
  assert whole.returncode == 0, whole.stderr[-3000:]
  expected = _final_weights(tmp_path / "whole")

  args = _args(backend, digits_dir, tmp_path / "preempted", **overrides)
  for step in (12, 31, 47):  # mid-epoch, and past the epoch boundaries (22 steps each)
    log = _stop_at(args, tmp_path, step)
    assert "preempted: SIGTERM here at step" in log
  last = run_cli("train", *args)
  assert last.returncode == 0, last.stderr[-3000:]
  assert "The input resumes where" in last.stderr
  _assert_same(expected, _final_weights(tmp_path / "preempted"))

  # Killed without warning: it resumes from its last checkpoint, and still ends the same.
  args = _args(backend, digits_dir, tmp_path / "killed", **overrides)
  _stop_at(args, tmp_path, 25, signal.SIGKILL)
  last = run_cli("train", *args)
  assert last.returncode == 0, last.stderr[-3000:]
  _assert_same(expected, _final_weights(tmp_path / "killed"))
