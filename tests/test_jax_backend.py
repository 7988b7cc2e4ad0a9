"""The JAX backend (config.backend=jax) against the TensorFlow one: the same
recipe from the same weights on the same batches ends with the same weights;
2 JAX processes (gloo collectives, as hosts of a slice) end with the weights of
1; the dry run trains, exports and serves; SIGTERM saves and the rerun runs
exactly the remaining steps. JAX runs in subprocesses: Keras's backend is fixed
per process, and this one is on TensorFlow."""
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import cnn as cnn_config
from conftest import REPO
from conftest import run_cli
from conftest import start_cli
from conftest import wait_for
from tpu_trainer import training

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                reason="JAX is not installed (the [jax] extra)")

# fp32 SGD on a fixed input order: the same arithmetic on both backends.
EQUAL_RUN = {"batch_size": 64, "steps": 10, "steps_per_execution": 5, "optimizer": "sgd",
             "base_lr": 0.05, "precision": "float32", "seed": 3}
EQUAL_INPUT = {"deterministic": True}


def _flags(values: dict, prefix="--config.") -> list[str]:
  return [f"{prefix}{k}={v}" for k, v in values.items()]


def _weights(path):
  import keras  # pylint: disable=g-import-not-at-top
  return keras.models.load_model(path).get_weights()


def _assert_same_weights(got, expected, initial):
  for w, w_expected, w0 in zip(got, expected, initial):
    moved = np.max(np.abs(w_expected - w0))
    assert moved > 1e-3  # training did change the weights
    # Far below what a wrong gradient (unsummed, doubled, another batch) gives.
    np.testing.assert_allclose(w, w_expected, rtol=0, atol=max(1e-5, 1e-3 * moved))


@pytest.fixture(scope="module")
def initial_model(tmp_path_factory):
  """The seed CNN's initial weights, saved: both backends start from them (their
  random number generators differ)."""
  import keras  # pylint: disable=g-import-not-at-top
  from tpu_trainer.models import build_model  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy("float32")
  keras.utils.set_random_seed(3)
  path = str(tmp_path_factory.mktemp("init") / "init.keras")
  build_model(cnn_config.get_config(), (8, 8, 1), 10).save(path)
  return path


def test_tensorflow_and_jax_end_with_the_same_weights(digits_dir, initial_model, tmp_path):
  config = cnn_config.get_config()
  config.update(data_dir=digits_dir, init_from=initial_model, **EQUAL_RUN)
  config.input.update(EQUAL_INPUT)
  tf_metrics = training.run(config, str(tmp_path / "tf"), tf.distribute.get_strategy())

  result = run_cli("train", "--config=configs/cnn.py", "--config.backend=jax",
                   f"--workdir={tmp_path / 'jax'}", f"--config.data_dir={digits_dir}",
                   f"--config.init_from={initial_model}", *_flags(EQUAL_RUN),
                   *_flags(EQUAL_INPUT, "--config.input."))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Initial weights from {initial_model}" in result.stderr
  jax_metrics = json.loads(result.stdout.splitlines()[0])
  assert jax_metrics["backend"] == "jax" and tf_metrics["backend"] == "tensorflow"
  assert set(jax_metrics) == set(tf_metrics)
  assert jax_metrics["step"] == tf_metrics["step"] == 10

  _assert_same_weights(_weights(str(tmp_path / "jax" / "model.keras")),
                       _weights(str(tmp_path / "tf" / "model.keras")), _weights(initial_model))
  assert jax_metrics["accuracy"] == pytest.approx(tf_metrics["accuracy"], abs=2 / 360)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_jax_processes_end_with_the_weights_of_one(tmp_path):
  """Each process feeds half of every global batch (its own pipeline, as on a
  slice's hosts); the gradient is all-reduced over both. One shard per split
  and no shuffling: process 0 reads records 0, 2, 4..., process 1 records 1, 3,
  5..., so both runs see the same examples in every batch."""
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "data")
  convert.convert(sources.digits(), data, num_shards=1, min_shards=1, workers=1)
  common = ["-m", "tpu_trainer.cli.train", "--config=configs/cnn.py", "--config.backend=jax",
            f"--config.data_dir={data}", *_flags(EQUAL_RUN),
            "--config.input.cache=False", "--config.input.shuffle_buffer=1",
            "--config.input.deterministic=True"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  one = subprocess.run([sys.executable, *common, f"--workdir={tmp_path / 'one'}"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]

  workers = [f"127.0.0.1:{_free_port()}", "127.0.0.1:1"]  # only worker 0's port is used
  procs = []
  for index in range(2):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    procs.append(subprocess.Popen(
        [sys.executable, *common, "--config.strategy=multiworker",
         f"--workdir={tmp_path / 'two'}"], cwd=REPO,
        env={**env, "TF_CONFIG": json.dumps(tf_config)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  try:
    outs = [proc.communicate(timeout=300) for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, (_, err) in zip(procs, outs):
    assert proc.returncode == 0, err[-3000:]
  assert "process 1 of 2, coordinator " + workers[0] in outs[1][1]
  # (Gloo prints its own connection line on stdout.)
  metrics = [json.loads(next(line for line in out.splitlines() if line.startswith("{")))
             for out, _ in outs]
  assert [m["replicas"] for m in metrics] == [2, 2]
  assert metrics[0]["weights_fingerprint"] == metrics[1]["weights_fingerprint"]
  _assert_same_weights(_weights(str(tmp_path / "two" / "model.keras")),
                       _weights(str(tmp_path / "one" / "model.keras")),
                       _initial_cnn_weights())


def _initial_cnn_weights():
  """What the JAX runs start from (seed 3 on JAX's generator): read back from
  a run of no steps would cost a process; the weights moved check needs only
  a start that is not the end, so the TensorFlow seed-3 weights stand in."""
  import keras  # pylint: disable=g-import-not-at-top
  from tpu_trainer.models import build_model  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy("float32")
  keras.utils.set_random_seed(3)
  return build_model(cnn_config.get_config(), (8, 8, 1), 10).get_weights()


def test_dry_run_on_jax_trains_exports_and_serves(tmp_path):
  result = run_cli("dryrun", f"--output_dir={tmp_path}", "--config.backend=jax",
                   "--config.input.deterministic=True", "--config.profile_steps=40,60",
                   timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics, evaluated = (json.loads(line) for line in result.stdout.splitlines()
                        if line.startswith("{"))
  workdir = tmp_path / "workdir"
  assert metrics["backend"] == "jax" and metrics["precision"] == "float32"  # auto on CPU
  assert metrics["accuracy"] >= 0.95  # the TensorFlow dry run's floor
  assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"], abs=1 / 360)
  saved = json.loads((workdir / "metrics.json").read_text())
  assert saved == json.loads(json.dumps(metrics))
  assert json.loads((workdir / "config.json").read_text())["backend"] == "jax"
  from test_exact_resume import jax_checkpoint  # pylint: disable=g-import-not-at-top
  assert (workdir / "checkpoints" / str(metrics["step"]) / "commit_success.txt").exists()
  names, values, _ = jax_checkpoint(workdir / "checkpoints")
  assert int(values[names.index("adam/iteration")]) == metrics["step"]
  from test_train import _scalar_tags  # pylint: disable=g-import-not-at-top
  assert _scalar_tags(str(workdir / "train")) == {
      "epoch_loss", "epoch_accuracy", "epoch_learning_rate", "examples_per_second"}
  assert _scalar_tags(str(workdir / "validation")) == {"epoch_loss", "epoch_accuracy"}
  # jax.profiler's trace, where TensorBoard's profile plugin looks for TensorFlow's,
  # and what xprof's converter reads in it: steps, and the share waiting for input.
  assert list((workdir / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))
  summary, = (workdir / "train" / "plugins" / "profile").glob("*/profile_summary.json")
  summary = json.loads(summary.read_text())
  assert summary["steps"] >= 1 and summary["step_ms_average"] > 0
  assert 0 <= summary["input_share"] < 1
  assert "Profile: " in result.stderr

  # The SavedModel (jax2tf) gives the probabilities model.keras gives through Keras.
  from tpu_trainer.data import manifest, pipeline  # pylint: disable=g-import-not-at-top
  images, _ = pipeline.sample(manifest.read(str(tmp_path / "data")), "test", 50)
  import keras  # pylint: disable=g-import-not-at-top
  expected = keras.models.load_model(str(workdir / "model.keras")).predict(images, verbose=0)
  serve = tf.saved_model.load(str(workdir / "saved_model")).signatures["serving_default"]
  assert list(serve.structured_input_signature[1]) == ["image"]
  out = serve(image=tf.constant(images, tf.float32))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
  assert out["class_id"].numpy().tolist() == expected.argmax(-1).tolist()
  assert [n.decode() for n in out["class_name"].numpy()] == [
      str(i) for i in expected.argmax(-1)]


def test_jax_run_stopped_by_sigterm_resumes_with_exactly_the_remaining_steps(digits_dir,
                                                                            tmp_path):
  workdir = tmp_path / "w"
  args = ["--config=configs/mlp.py", "--config.backend=jax", f"--workdir={workdir}",
          f"--config.data_dir={digits_dir}", "--config.batch_size=64", "--config.steps=600",
          "--config.steps_per_execution=10", "--config.log_every_steps=10",
          "--config.checkpoint_every_steps=50"]
  log = tmp_path / "first.log"
  proc = start_cli("train", *args, log=log)
  wait_for(lambda: list((workdir / "checkpoints").glob("*/commit_success.txt")), proc, log)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
  stopped = int(re.search(r"SIGTERM here at step (\d+)/600", log.read_text()).group(1))
  assert 0 < stopped < 600 and stopped % 10 == 0
  from test_exact_resume import jax_checkpoint  # pylint: disable=g-import-not-at-top
  names, values, _ = jax_checkpoint(workdir / "checkpoints", stopped)
  assert int(values[names.index("adam/iteration")]) == stopped
  assert not (workdir / "metrics.json").exists()

  again = run_cli("train", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resumed from {workdir / 'checkpoints' / str(stopped)}." in again.stderr
  # One progress line per execution: exactly the steps that were left, from `stopped` on.
  logged = [int(s) for s in re.findall(r"step (\d+)/600", again.stderr)]
  assert logged == list(range(stopped + 10, 601, 10))
  assert json.loads(again.stdout.splitlines()[0])["step"] == 600
  _, values, _ = jax_checkpoint(workdir / "checkpoints", 600)
  assert int(values[names.index("adam/iteration")]) == 600


def test_a_relative_workdir_trains_and_resumes_on_jax(digits_dir, tmp_path):
  """--workdir=w as a user types it, from the directory they are in (Orbax itself
  takes absolute paths only)."""
  def train(steps):
    return subprocess.run(
        [sys.executable, "-m", "tpu_trainer.cli.train", f"--config={REPO}/configs/mlp.py",
         "--config.backend=jax", "--workdir=w", f"--config.data_dir={digits_dir}",
         f"--config.steps={steps}", "--config.steps_per_execution=10"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO})
  first = train(10)
  assert first.returncode == 0, first.stderr[-3000:]
  assert (tmp_path / "w" / "checkpoints" / "10" / "commit_success.txt").exists()
  again = train(20)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed from w/checkpoints/10." in again.stderr
  assert json.loads(again.stdout.splitlines()[0])["step"] == 20


def test_jax_divergence_exits_3_and_bad_settings_are_one_line(digits_dir, tmp_path):
  common = ["--config=configs/mlp.py", "--config.backend=jax", f"--config.data_dir={digits_dir}",
            "--config.batch_size=64", "--config.steps=40", "--config.steps_per_execution=10"]
  diverging = run_cli("train", *common, f"--workdir={tmp_path / 'd'}", "--config.optimizer=sgd",
                      "--config.base_lr=1e6")
  assert diverging.returncode == 3, diverging.stderr[-3000:]
  assert "error: The loss diverged" in diverging.stderr and "Traceback" not in diverging.stderr
  assert not (tmp_path / "d" / "metrics.json").exists()

  for flag, says in (("--config.cpu_devices=2", "one process per device"),
                     ("--config.strategy=gpu", "JAX runs on cpu")):
    bad = run_cli("train", *common, f"--workdir={tmp_path / 'b'}", flag)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0]
    assert not (tmp_path / "b" / "config.json").exists()


def _jax_workers(digits_dir, tmp_path, indices, *flags):
  """Processes `indices` of a two-process JAX job (TF_CONFIG), logging to files."""
  workers = [f"127.0.0.1:{_free_port()}", "127.0.0.1:1"]  # only worker 0's port is used
  procs = []
  for index in indices:
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    procs.append(start_cli(
        "train", "--config=configs/mlp.py", "--config.backend=jax",
        "--config.strategy=multiworker", f"--config.data_dir={digits_dir}",
        f"--workdir={tmp_path / 'w'}", "--config.storage_timeout_secs=15", *flags,
        log=tmp_path / f"worker{index}.log", env={"TF_CONFIG": json.dumps(tf_config)}))
  return procs


def test_a_jax_worker_that_never_starts_is_one_line_in_bounded_time(digits_dir, tmp_path):
  """Worker 1 of 2 never started: 5 minutes of silence, then XLA's abort and
  its stack. Now a line at once, one error line at the limit, exit 75."""
  proc, = _jax_workers(digits_dir, tmp_path, [0])
  log = tmp_path / "worker0.log"
  assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
  text = log.read_text()
  assert "Joining the other processes of this job at 127.0.0.1:" in text
  assert text.splitlines()[-1].startswith("error: not every process of this job joined the "
                                          "coordinator at 127.0.0.1:"), text[-2000:]
  assert "Check failure stack trace" not in text and "Traceback" not in text


def test_a_lost_jax_worker_is_one_line_saying_what_to_do(digits_dir, tmp_path):
  """kill -9 of worker 1 mid-run: worker 0's collective fails (gloo), or waits
  until the limit. One error line either way, not an internal error and XLA's
  abort and stack at exit; exit 75 (try again: GKE restarts the job)."""
  procs = _jax_workers(digits_dir, tmp_path, [0, 1], "--config.steps=100000",
                       "--config.steps_per_execution=1", "--config.log_every_steps=20")
  try:
    log = tmp_path / "worker0.log"
    wait_for(lambda: "step 40/" in log.read_text(), procs[0], log, timeout=240)
    procs[1].kill()
    assert procs[0].wait(timeout=120) == 75, log.read_text()[-3000:]
    text = log.read_text()
    assert "Check failure stack trace" not in text and "Traceback" not in text, text[-3000:]
    last = text.splitlines()[-1]
    assert (last.startswith("error: A worker of this job was lost (")
            or last.startswith("error: no training step returned in ")), text[-2000:]
    assert "Start every worker again with the same command" in last
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()


def test_the_jax_export_scores_images_in_either_convention(digits_dir, tmp_path):
  """The SavedModel a JAX run exports (through jax2tf) takes float 0-255 and 0-1
  images alike, as the TensorFlow backend's does, and scores them as the run's
  own evaluation did."""
  result = run_cli("train", "--config=configs/mlp.py", "--config.backend=jax",
                   f"--config.data_dir={digits_dir}", f"--workdir={tmp_path / 'w'}",
                   "--config.steps=60", "--config.precision=float32")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images, labels = tfds.as_numpy(tfds.builder_from_directory(digits_dir).as_dataset(
      split="test", as_supervised=True, batch_size=-1))
  serve = tf.saved_model.load(str(tmp_path / "w" / "saved_model")).signatures["serving_default"]
  scored = [serve(image=tf.constant(x, tf.float32))["probabilities"].numpy()
            for x in (images, images / 255.0)]
  np.testing.assert_allclose(scored[0], scored[1], atol=1e-5)
  assert (scored[0].argmax(-1) == labels).mean() == pytest.approx(metrics["accuracy"])
