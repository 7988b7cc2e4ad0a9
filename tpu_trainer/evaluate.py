"""Evaluation over every example of a split exactly once, on any strategy."""
import os

import keras
import tensorflow as tf

from tpu_trainer import config as config_lib
from tpu_trainer import export as export_lib
from tpu_trainer import metrics
from tpu_trainer import storage
from tpu_trainer import versions
from tpu_trainer.data import manifest
from tpu_trainer.data import pipeline


class Evaluator:
  """Builds the distributed eval input and step once; each call is a full pass."""

  def __init__(self, strategy, predict, dataset: manifest.Dataset, split: str,
               global_batch: int, cache: bool = True, cache_max_bytes: int = 2 << 30):
    self.strategy = strategy
    self.num_classes = dataset.num_classes
    dataset_fn, self.steps = pipeline.eval_input_fn(
        dataset, global_batch, pipeline.num_input_pipelines(strategy),
        split=split, cache=cache, cache_max_bytes=cache_max_bytes)
    self.dataset = strategy.distribute_datasets_from_function(dataset_fn)
    self.totals = metrics.Totals(strategy, "eval")
    loss_fn = keras.losses.CategoricalCrossentropy(reduction=None)

    def step(images, labels, weights):
      probabilities = tf.cast(predict(images), tf.float32)
      per_example = loss_fn(tf.one_hot(labels, self.num_classes), probabilities)
      self.totals.update(per_example, probabilities, labels, weights)

    @tf.function
    def run_steps(iterator, steps):
      for _ in tf.range(steps):
        strategy.run(step, args=next(iterator))

    self._run_steps = run_steps

  def __call__(self) -> dict:
    self.totals.reset()
    self._run_steps(iter(self.dataset), tf.constant(self.steps))
    return self.totals.result()


def evaluate(workdir: str, *, model_path: str = "", split: str = "", data_dir: str = "",
             batch_size: int = 0) -> dict:
  """Re-evaluates a training run's exported model (or model_path) on a split."""
  versions.check()
  config_path = storage.join(workdir, "config.json")
  if not tf.io.gfile.exists(config_path):
    raise FileNotFoundError(f"No config.json in workdir={workdir!r}: is it a finished "
                            "tpu-trainer-train workdir?")
  config = config_lib.load(config_path)
  model_path = model_path or storage.join(workdir, "model.keras")
  if not tf.io.gfile.exists(model_path):
    raise FileNotFoundError(f"No model at {model_path}: train to the end first, or pass "
                            "--model=PATH (.keras file or SavedModel directory).")
  data_dir = data_dir or config.data_dir
  dataset = manifest.read(data_dir)
  split = split or config.eval_split
  manifest.check_shards(dataset, [split])
  predict = export_lib.load_serving_fn(os.fspath(model_path))
  evaluator = Evaluator(tf.distribute.get_strategy(), predict, dataset, split,
                        batch_size or config.batch_size)
  try:
    return evaluator()
  except tf.errors.DataLossError as e:
    raise manifest.explain_data_loss(data_dir, e) from None
