"""The storage watchdog: bounded waits on the workdir, one line when storage is
gone. End to end (a gs:// workdir losing its storage mid-run): test_tf_gcs.py."""
import re
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from tpu_trainer import watchdog as watchdog_lib
from tpu_trainer.errors import StorageUnavailable


def test_a_storage_error_is_one_line_and_later_writes_are_skipped():
  watchdog = watchdog_lib.StorageWatchdog("gs://bucket/run", limit_s=60)
  watchdog.saved("gs://bucket/run/checkpoints/ckpt-200")
  with pytest.raises(StorageUnavailable) as raised:
    with watchdog.waiting("saving checkpoint 400"):
      raise tf.errors.AbortedError(None, None, "All 10 retry attempts failed. The last "
                                   "failure: Unavailable: Error executing an HTTP request")
  message = str(raised.value)
  assert "workdir=gs://bucket/run did not answer while saving checkpoint 400" in message
  assert "AbortedError: All 10 retry attempts failed" in message
  assert "Last checkpoint: gs://bucket/run/checkpoints/ckpt-200." in message
  assert watchdog.down
  released = []
  watchdog.guarded("releasing the lock", released.append, "released")()
  assert not released  # storage is gone: the cleanup would only wait on it again
  with pytest.raises(StorageUnavailable, match="it failed before"):
    with watchdog.waiting("writing history.json"):
      pass
  watchdog.close()


def test_other_errors_pass_through():
  watchdog = watchdog_lib.StorageWatchdog("/tmp/run", limit_s=60)
  with pytest.raises(tf.errors.NotFoundError):
    with watchdog.waiting("saving checkpoint 1"):
      raise tf.errors.NotFoundError(None, None, "no such file")
  assert not watchdog.down
  done = []
  watchdog.guarded("releasing the lock", done.append, 1)()
  assert done == [1]
  watchdog.close()


def test_a_wait_past_the_limit_ends_the_process_with_75():
  """The main thread stuck inside a call (here a sleep; in a run, TensorFlow's
  C++ retries) can't be interrupted: the watchdog's thread says so and exits."""
  code = textwrap.dedent("""
      import time
      from absl import logging
      from tpu_trainer import watchdog
      logging.set_verbosity(logging.WARNING)
      w = watchdog.StorageWatchdog("gs://bucket/run", limit_s=3)
      with w.waiting("saving checkpoint 7"):
        time.sleep(60)
      """)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=False)
  assert result.returncode == 75, result.stderr
  lines = result.stderr.strip().splitlines()
  # Seconds as the 1 s poller saw them: more on a loaded machine.
  assert any(re.search(r"Still saving checkpoint 7 after \d+ s", l) for l in lines), lines
  assert re.fullmatch(
      r"error: the storage of workdir=gs://bucket/run did not answer while saving checkpoint "
      r"7 \(no answer in \d+ s\); nothing more was written\. Last checkpoint: none \(none "
      r"saved yet\)\. Run the same command again once it answers: it resumes from there "
      r"\(or a newer one, if the save in progress ended whole\)\.", lines[-1]), lines[-1]


def test_a_healthy_run_longer_than_the_limit_finishes(digits_dir, tmp_path):
  """Every wait is bounded, not the run: 5,000 one-step executions with their
  summaries, evaluations and checkpoints take far longer than an 8 s limit
  (about 20 s here), and none of them waits that long. A write's wait never
  cleared would end this run with 75."""
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  result = run_cli("train", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
                   f"--workdir={tmp_path / 'w'}", "--config.steps=5000",
                   "--config.steps_per_execution=1", "--config.log_every_steps=500",
                   "--config.checkpoint_every_steps=500", "--config.storage_timeout_secs=8")
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / "w" / "metrics.json").read_text())["step"] == 5000
