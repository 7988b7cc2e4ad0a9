"""What a checkpoint save costs a run, per backend: the run's own checkpoint
classes (backends/tensorflow.py, backends/jax.py) saving a model and its SGD
momentum while the model trains, against the same save waited for at once.

  async cost = (save() + the steps trained while it writes + wait()) - the
               same steps without a save, timed just before: what the save adds;
  sync       = save() then wait() with no step between: a save that stops
               training until written.

Both are set against the default checkpoint interval (once an epoch, at most
every config.checkpoint_min_secs = 60 s) and against 50 steps. On a CPU the
writing thread competes with training for the same cores; on a TPU host it
does not. Each backend runs in a process of its own.

  python benchmarks/checkpoint_cost.py [--model=resnet50] [--size=64] [--batch=32]
      [--saves=5] [--backends=tensorflow,jax]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("model", "resnet50", "A built-in recipe (configs/NAME.py).")
flags.DEFINE_integer("size", 64, "Image height and width (RGB).")
flags.DEFINE_integer("batch", 32, "Batch size.")
flags.DEFINE_integer("saves", 5, "Saves timed per way (medians reported).")
flags.DEFINE_list("backends", ["tensorflow", "jax"], "tensorflow, jax.")
flags.DEFINE_string("backend_here", "", "Internal: measure this backend in this process.")
FLAGS = flags.FLAGS
INTERVAL_S = 60.0  # config.checkpoint_min_secs: the default interval's floor


def _measure(backend: str) -> str:
  """One markdown row, measured in this process (KERAS_BACKEND set by the parent)."""
  import importlib  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tpu_trainer import models  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{FLAGS.model}").get_config()
  model = models.build_model(config, (FLAGS.size, FLAGS.size, 3), 10)
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (FLAGS.batch, FLAGS.size, FLAGS.size, 3)).astype("float32")
  labels = rng.integers(0, 10, FLAGS.batch)
  train = lambda: model.train_on_batch(images, labels)
  for _ in range(5):  # compiled, optimizer built
    train()
  with tempfile.TemporaryDirectory() as workdir:
    position = lambda: np.zeros(7, np.int64)
    if backend == "jax":
      from tpu_trainer.backends import jax as jax_backend  # pylint: disable=g-import-not-at-top
      checkpoints = jax_backend.Checkpoints(model.variables + model.optimizer.variables,
                                            workdir, True, 2, position)
    else:
      from tpu_trainer.backends import tensorflow as tf_backend  # pylint: disable=g-import-not-at-top
      checkpoints = tf_backend.Checkpoints(model, model.optimizer, workdir, True, 2, position)
    checkpoints.save(0)  # the first save sets up host copies: not what a run repeats
    checkpoints.wait()

    def timed(fn) -> float:
      start = time.perf_counter()
      fn()
      return time.perf_counter() - start

    step_s = statistics.median(timed(train) for _ in range(20))
    sync = [timed(lambda i=i: (checkpoints.save(1 + i), checkpoints.wait()))
            for i in range(FLAGS.saves)]
    steps = max(5, round(3 * max(sync) / step_s))  # enough to cover a write

    def training(save_as=None):
      if save_as is not None:
        checkpoints.save(save_as)
      for _ in range(steps):
        train()
      checkpoints.wait()

    # The same steps without a save just before each: drift cancels.
    costs = [timed(lambda i=i: training(100 + i)) - timed(training)
             for i in range(FLAGS.saves)]
    checkpoints.close()
  cost, blocking = statistics.median(costs), statistics.median(sync)
  percent = lambda s: f"{100 * s / INTERVAL_S:.1f}%"
  return (f"| {backend} | {1000 * step_s:.0f} ms | {blocking:.2f} s ({percent(blocking)}, "
          f"{blocking / step_s:.1f} steps) | {cost:.2f} s ({percent(cost)}, "
          f"{cost / step_s:.1f} steps) | {100 * cost / (50 * step_s):.0f}% |")


def main(_):
  if FLAGS.backend_here:
    print(_measure(FLAGS.backend_here))
    return
  from tpu_trainer import strategy  # pylint: disable=g-import-not-at-top
  cpu = "bf16 units" if strategy.cpu_has_bf16() else "no bf16 units (AVX2)"
  print(f"Checkpoint cost, {FLAGS.model} at {FLAGS.size}x{FLAGS.size}, batch {FLAGS.batch}, "
        f"float32, SGD momentum; {os.cpu_count()} CPU cores, {cpu}; medians of "
        f"{FLAGS.saves} saves. % of the default interval ({INTERVAL_S:.0f} s).")
  print("| backend | step | sync save (of 60 s, in steps) | async save's cost to the run "
        "(of 60 s, in steps) | async cost of a 50-step interval |")
  print("|---|---|---|---|---|")
  for backend in FLAGS.backends:
    result = subprocess.run(
        [sys.executable, __file__, f"--backend_here={backend}", f"--model={FLAGS.model}",
         f"--size={FLAGS.size}", f"--batch={FLAGS.batch}", f"--saves={FLAGS.saves}"],
        env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
             "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
        capture_output=True, text=True)
    if result.returncode:
      sys.exit(f"error: measuring {backend} failed:\n{result.stderr[-2000:]}")
    print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
  app.run(main)
