"""Preemption-proof: in reproducible mode (input.deterministic), a run stopped
by SIGTERM at several steps and resumed each time, or killed with SIGKILL and
resumed from its last checkpoint, ends with bit-identical weights to the run
that was never interrupted: the input resumes at the very batch it was at."""
import json
import os
import re
import signal
import socket

import numpy as np
import pytest

from conftest import run_cli
from conftest import start_cli
from conftest import wait_for


def _args(backend, data, workdir, **overrides):
  """A short reproducible run: 22 steps an epoch, a progress line every execution."""
  values = {"data_dir": data, "backend": backend, "batch_size": 64, "steps": 70,
            "steps_per_execution": 5, "log_every_steps": 5, "checkpoint_every_steps": 10,
            "input.deterministic": True, "eval_every_epochs": 100, **overrides}
  return ["--config=configs/cnn.py", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in values.items())]


def jax_checkpoint(directory, step=None):
  """(names, values, input position) of the JAX backend's (Orbax) checkpoint
  `step` in `directory`, by default the latest."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(str(directory), item_handlers=handlers) as manager:
    step = manager.latest_step() if step is None else step
    # Onto this process's one device, whichever processes wrote it.
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = [jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here)
              for m in manager.item_metadata(step).state]
    saved = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return (saved.meta["names"], [np.asarray(v) for v in saved.state],
          saved.meta["input_position"])


def tf_checkpoint(path):
  """{variable path: value} of the TensorFlow backend's checkpoint at `path` (a
  checkpoints directory: its latest): the model's then the optimizer's variables."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(str(path))
  paths = reader.get_tensor("variable_paths/.ATTRIBUTES/VARIABLE_VALUE")
  return {path.decode(): reader.get_tensor(f"variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
          for i, path in enumerate(paths)}


def _final_weights(workdir, backend):
  """Every saved variable of the last checkpoint (model and optimizer), by name."""
  directory = os.path.join(workdir, "checkpoints")
  if backend == "jax":
    names, values, _ = jax_checkpoint(directory)
    return dict(zip(names, values))
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
  expected = _final_weights(tmp_path / "whole", backend)

  args = _args(backend, digits_dir, tmp_path / "preempted", **overrides)
  for step in (12, 31, 47):  # mid-epoch, and past the epoch boundaries (22 steps each)
    log = _stop_at(args, tmp_path, step)
    assert "preempted: SIGTERM here at step" in log
  last = run_cli("train", *args)
  assert last.returncode == 0, last.stderr[-3000:]
  assert "The input resumes where" in last.stderr
  _assert_same(expected, _final_weights(tmp_path / "preempted", backend))

  # Killed without warning: it resumes from its last checkpoint, and still ends the same.
  args = _args(backend, digits_dir, tmp_path / "killed", **overrides)
  _stop_at(args, tmp_path, 25, signal.SIGKILL)
  last = run_cli("train", *args)
  assert last.returncode == 0, last.stderr[-3000:]
  _assert_same(expected, _final_weights(tmp_path / "killed", backend))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two(args, tmp_path, name, args1=None):
  """Two worker processes of one job (TF_CONFIG), stderr to name-0.log, name-1.log;
  the second with args1 when given."""
  workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
  procs, logs = [], [tmp_path / f"{name}-{i}.log" for i in range(2)]
  for index, its_args in enumerate((args, args1 or args)):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    procs.append(start_cli("train", *its_args, "--config.strategy=multiworker",
                           log=logs[index], env={"TF_CONFIG": json.dumps(tf_config)}))
  return procs, logs


def _wait_all(procs, logs, codes):
  try:
    got = [proc.wait(timeout=300) for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  assert got == codes, "\n".join(log.read_text()[-2000:] for log in logs)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_processes_preempted_end_bit_identical_to_the_uninterrupted_pair(
    digits_dir, tmp_path, backend):
  overrides = {"steps": 40, "input.cache": False, "input.shuffle_buffer": 200}
  _wait_all(*_start_two(_args(backend, digits_dir, tmp_path / "whole", **overrides),
                        tmp_path, "whole"), [0, 0])
  expected = _final_weights(tmp_path / "whole", backend)

  args = _args(backend, digits_dir, tmp_path / "preempted", **overrides)
  procs, logs = _start_two(args, tmp_path, "first")
  wait_for(lambda: re.search(r"step (1[5-9]|[23]\d)/40", logs[0].read_text()), procs[0],
           logs[0], timeout=240)
  procs[1].send_signal(signal.SIGTERM)  # a worker, not the chief: both save and stop
  _wait_all(procs, logs, [143, 143])
  procs, logs = _start_two(args, tmp_path, "again")
  _wait_all(procs, logs, [0, 0])
  assert all("The input resumes where" in log.read_text() for log in logs)
  _assert_same(expected, _final_weights(tmp_path / "preempted", backend))

  # One process goes on from the pair's checkpoint (2 -> 1), at the epoch it was in.
  alone = run_cli("train", *_args(backend, digits_dir, tmp_path / "preempted", steps=50,
                                  **{k: v for k, v in overrides.items() if k != "steps"}))
  assert alone.returncode == 0, alone.stderr[-3000:]
  assert re.search(r"The input restarts epoch 1 at its first batch: \S+ was read in another "
                   r"order \(batch 64 over 2 replicas and 2 input pipelines, streamed then, "
                   r"batch 64 over \d replicas? and 1 input pipeline, streamed now\)",
                   alone.stderr), alone.stderr[-3000:]


def test_a_checkpoint_from_before_orbax_and_positions_resumes_at_its_epoch_and_says_so(
    digits_dir, tmp_path):
  """A JAX workdir of an older tpu_trainer (ckpt-STEP.npz, no input position) is
  restored once; Orbax from there on, and the .npz goes once Orbax has a newer one."""
  workdir = tmp_path / "w"
  first = run_cli("train", *_args("jax", digits_dir, workdir, steps=30))
  assert first.returncode == 0, first.stderr[-3000:]
  names, values, _ = jax_checkpoint(workdir / "checkpoints")
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(workdir / "checkpoints")
  os.makedirs(workdir / "checkpoints")
  npz = workdir / "checkpoints" / "ckpt-30.npz"
  np.savez(npz, names=np.array(names), **{f"v{i}": v for i, v in enumerate(values)})

  again = run_cli("train", *_args("jax", digits_dir, workdir, steps=40))
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resumed from {npz} (a checkpoint of tpu_trainer before Orbax" in again.stderr
  assert (f"{npz} holds no input position (written before tpu_trainer saved one): the "
          "input restarts epoch 1 at its first batch.") in again.stderr
  _, _, position = jax_checkpoint(workdir / "checkpoints", 40)
  assert position[:2] == [30, 1]  # from step 30 on, epoch 1 on
  assert sorted(os.listdir(workdir / "checkpoints")) == ["40"]


def test_a_tensorflow_checkpoint_of_model_and_optimizer_objects_still_resumes(digits_dir,
                                                                              tmp_path):
  """A TensorFlow workdir of an older tpu_trainer (the Keras model and optimizer
  objects checkpointed, no input position) is restored, then written as a list
  of variables from there on."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  first = run_cli("train", *_args("tensorflow", digits_dir, workdir, steps=30))
  assert first.returncode == 0, first.stderr[-3000:]
  saved = tf_checkpoint(workdir / "checkpoints")
  model = keras.models.load_model(workdir / "model.keras", compile=False)
  # The run's Adam follows a schedule: no learning_rate variable.
  optimizer = keras.optimizers.Adam(keras.optimizers.schedules.PolynomialDecay(1e-3, 10))
  optimizer.build(model.trainable_variables)
  variables = model.variables + optimizer.variables
  # In order (this process may name its optimizer adam_7): the same shapes.
  assert [tuple(v.shape) for v in variables] == [v.shape for v in saved.values()]
  for variable, value in zip(variables, saved.values()):
    variable.assign(value)
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(workdir / "checkpoints")
  objects = tf.train.Checkpoint(model=model, optimizer=optimizer)
  old = tf.train.CheckpointManager(objects, str(workdir / "checkpoints"), 1).save(30)

  again = run_cli("train", *_args("tensorflow", digits_dir, workdir, steps=40))
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resumed from {old}." in again.stderr
  assert (f"{old} holds no input position (written before tpu_trainer saved one): the "
          "input restarts epoch 1 at its first batch.") in again.stderr
  reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
  assert list(reader.get_tensor("input_position/.ATTRIBUTES/VARIABLE_VALUE")[:2]) == [30, 1]
  assert tf_checkpoint(workdir / "checkpoints")["adam/iteration"] == 40


SAVES_WHILE_CHANGING = """
import os
import sys
import keras
import numpy as np
from tpu_trainer.backends import {backend} as backend
model = keras.Sequential([keras.Input((4096,)), keras.layers.Dense(2048)])
optimizer = keras.optimizers.SGD(momentum=0.9)
optimizer.build(model.trainable_variables)
variables = model.variables + optimizer.variables
if "{backend}" == "jax":
  checkpoints = backend.Checkpoints(variables, sys.argv[1], True, 5, lambda: np.zeros(7, np.int64))
else:
  checkpoints = backend.Checkpoints(model, optimizer, sys.argv[1], True, 5,
                                    lambda: np.zeros(7, np.int64))
for step in range(1, 6):
  for v in variables:
    v.assign(np.full(v.shape, step, v.dtype))
  checkpoints.save(step)  # then the next step's values at once, while it writes
  written = checkpoints.written  # what a storage failure would name: whole already
  print("written", written and os.path.basename(written),
        written is None or os.path.exists(written + (".index" if "ckpt-" in written else "")))
checkpoints.wait()
print(checkpoints.written)
print(checkpoints.latest())  # written once wait() returns
checkpoints.close()
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_each_asynchronous_save_holds_its_own_steps_values(tmp_path, backend):
  """Saves return before they are written and training changes the variables at
  once: every checkpoint must still hold the values of the step it names (a
  write reading the live variables would hold a later step's); once wait()
  returns, the last one is there."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  result = subprocess.run([sys.executable, "-c", SAVES_WHILE_CHANGING.format(backend=backend),
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": backend}, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  name = (lambda step: str(step)) if backend == "jax" else (lambda step: f"ckpt-{step}")
  lines = result.stdout.splitlines()
  assert lines[-7:] == [f"written {name(s) if s else None} True" for s in range(5)] + [
      str(tmp_path / "checkpoints" / name(5))] * 2
  for step in range(1, 6):
    if backend == "jax":
      _, values, _ = jax_checkpoint(tmp_path / "checkpoints", step)
    else:
      values = tf_checkpoint(tmp_path / "checkpoints" / f"ckpt-{step}").values()
    for value in values:
      assert np.all(value == step), (step, np.unique(value)[:5])


def test_jax_processes_given_different_workdirs_are_refused_before_writing(digits_dir,
                                                                           tmp_path):
  """Every JAX process writes its shards of each checkpoint into the workdir: one
  given another would wait forever for the others' shards."""
  procs, logs = _start_two(_args("jax", digits_dir, tmp_path / "a"), tmp_path, "differ",
                           _args("jax", digits_dir, tmp_path / "b"))
  _wait_all(procs, logs, [2, 2])
  for log in logs:
    assert ("error: The workers of this job disagree on workdir (every process writes its "
            "checkpoint shards there)") in log.read_text()
  assert not (tmp_path / "a" / "config.json").exists() and not (tmp_path / "b").exists()
