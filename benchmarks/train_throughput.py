"""Training examples/s: the tutorials' Keras, the best plain Keras, and tpu_trainer.

Four columns from the same run, same architecture, data, batch and epochs,
each timed the same way: examples trained after the first execution (tracing
and compilation) divided by the time they took.

  tutorial   the seed tutorials' model.fit: float32, one step per call, tf.data
             from numpy arrays.
  +precision the same with the precision tpu_trainer resolves here (bf16 on
             CPUs with bf16 units and on TPUs).
  best Keras the same plus steps_per_execution (as ours): the best plain Keras
             one can write on one device.
  ours       tpu_trainer's loop on TFRecords written by its converter.
  ours_jax   the same recipe and data through --config.backend=jax (Keras's JAX
             backend, one jitted call per execution; its own process, as Keras's
             backend is fixed per process; precision auto: float32 on a CPU).

The gain of ours over the tutorial is the product of the columns' ratios:
precision, steps per call, and the rest (our input and loop). The data:
scikit-learn's digits upscaled to 28x28 (Fashion-MNIST's size), repeated.

  python benchmarks/train_throughput.py [--models=cnn,mlp] [--epochs=4] [--repeat=20]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tpu_trainer import config as config_lib  # pylint: disable=g-import-not-at-top
from tpu_trainer import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
from tpu_trainer import train  # pylint: disable=g-import-not-at-top
from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
from tpu_trainer.models import build_model  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("models", ["cnn", "mlp"], "Models to compare.")
flags.DEFINE_integer("epochs", 4, "Epochs for every column.")
flags.DEFINE_integer("repeat", 20, "Copies of the digits training set.")
flags.DEFINE_integer("batch_size", 1024, "Global batch for every column.")
flags.DEFINE_integer("steps_per_execution", 20, "For best Keras and ours.")
FLAGS = flags.FLAGS


def digits28(repeat):
  """Digits at 28x28, uint8: train (repeated) and test arrays."""
  source = sources.digits()

  def arrays(split, copies):
    s = source.splits[split]
    xs, ys = zip(*s.read(range(s.num_examples)))
    x = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((28, 28), Image.BILINEAR))
                  for im in xs])[..., None]
    return np.tile(x, (copies, 1, 1, 1)), np.tile(np.array(ys), copies)

  return arrays("train", repeat), arrays("test", 1)


class AfterFirstExecution(keras.callbacks.Callback):
  """Times training from the end of the first execution to the end: Keras calls
  the batch hooks once per execution (steps_per_execution steps)."""

  def __init__(self):
    super().__init__()
    self.executions, self.start, self.seconds = 0, None, 0.0

  def on_train_batch_end(self, batch, logs=None):
    self.executions += 1
    if self.start is None:
      self.start = time.perf_counter()

  def on_train_end(self, logs=None):
    self.seconds = time.perf_counter() - self.start


def plain_keras(name, train_xy, test_xy, epochs, batch, precision, steps_per_execution):
  keras.mixed_precision.set_global_policy(precision)
  config = config_lib.default_config()
  config.model = name
  keras.utils.set_random_seed(0)
  model = build_model(config, (28, 28, 1), 10)
  # Adam at the rate tpu_trainer's rule gives this batch (sqrt scaling from 1e-3 at 32).
  model.compile(keras.optimizers.Adam(1e-3 * (batch / 32) ** 0.5),
                "sparse_categorical_crossentropy", metrics=["accuracy"],
                steps_per_execution=steps_per_execution)
  ds = (tf.data.Dataset.from_tensor_slices(train_xy).shuffle(10_000)
        .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
  timer = AfterFirstExecution()
  model.fit(ds, epochs=epochs, verbose=0, callbacks=[timer])
  _, accuracy = model.evaluate(*test_xy, batch_size=batch, verbose=0)
  steps = epochs * (len(train_xy[0]) // batch)
  timed = steps - min(steps_per_execution, steps)
  return timed * batch / timer.seconds, accuracy


def ours(name, data_dir, workdir, epochs, batch, steps_per_execution):
  config = config_lib.default_config()
  config.update({"model": name, "data_dir": data_dir, "batch_size": batch, "epochs": epochs,
                 "steps_per_execution": steps_per_execution, "eval_every_epochs": epochs})
  metrics = train.run(config, workdir, tf.distribute.OneDeviceStrategy("/cpu:0"))
  if metrics["examples_per_second_includes_compilation"]:
    raise SystemExit("Too few steps to time after the first (compiling) execution: raise "
                     "--epochs or --repeat.")
  return metrics["examples_per_second"], metrics["accuracy"], metrics["precision"]


def ours_jax(name, data_dir, workdir, epochs, batch, steps_per_execution):
  """(examples/s, accuracy, precision) of the same run on the JAX backend."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "tpu_trainer.cli.train", "--config=configs/cnn.py",
       "--config.backend=jax", f"--config.model={name}", f"--config.data_dir={data_dir}",
       f"--workdir={workdir}", f"--config.batch_size={batch}", f"--config.epochs={epochs}",
       f"--config.steps_per_execution={steps_per_execution}",
       f"--config.eval_every_epochs={epochs}"],
      cwd=repo, capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit(f"the JAX run failed: {result.stderr[-2000:]}")
  metrics = json.loads(next(line for line in result.stdout.splitlines()
                            if line.startswith("{")))
  return metrics["examples_per_second"], metrics["accuracy"], metrics["precision"]


def main(_):
  logging.set_verbosity(logging.WARNING)
  train_xy, test_xy = digits28(FLAGS.repeat)
  precision = strategy_lib.resolve_precision("auto", tf.distribute.OneDeviceStrategy("/cpu:0"))
  batch, spe = FLAGS.batch_size, FLAGS.steps_per_execution
  tmp = tempfile.mkdtemp(prefix="bench_train_")
  try:
    source = sources.Source("digits28", [str(i) for i in range(10)], (28, 28, 1), {
        "train": sources.split_from_arrays(*train_xy),
        "test": sources.split_from_arrays(*test_xy)})
    convert.convert(source, os.path.join(tmp, "data"), min_shards=8)
    print(f"{len(train_xy[0])} train images 28x28, batch {batch}, {FLAGS.epochs} epochs, "
          f"{os.cpu_count()} cores, one device; precision here: {precision}")
    rows = []
    for name in FLAGS.models:
      columns = {
          "tutorial": plain_keras(name, train_xy, test_xy, FLAGS.epochs, batch, "float32", 1),
          "+precision": plain_keras(name, train_xy, test_xy, FLAGS.epochs, batch, precision, 1),
          "best_keras": plain_keras(name, train_xy, test_xy, FLAGS.epochs, batch, precision,
                                    spe)}
      rate, accuracy, _ = ours(name, os.path.join(tmp, "data"), os.path.join(tmp, name),
                               FLAGS.epochs, batch, spe)
      columns["ours"] = (rate, accuracy)
      jax_rate, jax_accuracy, jax_precision = ours_jax(
          name, os.path.join(tmp, "data"), os.path.join(tmp, f"{name}_jax"), FLAGS.epochs,
          batch, spe)
      columns["ours_jax"] = (jax_rate, jax_accuracy)
      row = {"model": name, "precision": precision,
             **{f"{k}_ex_s": round(r) for k, (r, _) in columns.items()},
             **{f"{k}_accuracy": round(a, 4) for k, (_, a) in columns.items()},
             "gain_precision": round(columns["+precision"][0] / columns["tutorial"][0], 2),
             "gain_steps_per_call": round(columns["best_keras"][0] / columns["+precision"][0], 2),
             "gain_input_and_loop": round(rate / columns["best_keras"][0], 2),
             # Against whichever plain-Keras column was faster in this run.
             "ours_vs_fastest_keras": round(rate / max(r for k, (r, _) in columns.items()
                                                       if not k.startswith("ours")), 2),
             "ours_vs_tutorial": round(rate / columns["tutorial"][0], 2),
             "jax_precision": jax_precision,
             "jax_vs_tensorflow": round(jax_rate / rate, 2)}
      rows.append(row)
      print(f"{name}: " + " | ".join(f"{k} {r:7.0f} ex/s (acc {a:.3f})"
                                     for k, (r, a) in columns.items()))
      print(f"{name}: ours / best plain Keras {row['gain_input_and_loop']:.2f}x (/ the fastest "
            f"plain-Keras column {row['ours_vs_fastest_keras']:.2f}x), ours / "
            f"tutorial {row['ours_vs_tutorial']:.2f}x = precision {row['gain_precision']:.2f}x"
            f" * steps per call {row['gain_steps_per_call']:.2f}x * input and loop "
            f"{row['gain_input_and_loop']:.2f}x; JAX backend ({jax_precision}) / ours "
            f"{row['jax_vs_tensorflow']:.2f}x")
    print(json.dumps(rows))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
