"""Evaluation over every example of a split exactly once, on any strategy."""
import json
import os

from absl import logging
import tensorflow as tf

from tpu_trainer import config as config_lib
from tpu_trainer import export as export_lib
from tpu_trainer import loop
from tpu_trainer import metrics
from tpu_trainer import plots
from tpu_trainer import storage
from tpu_trainer import versions
from tpu_trainer.data import manifest
from tpu_trainer.data import pipeline
from tpu_trainer.errors import MissingError
from tpu_trainer.errors import UserError
from tpu_trainer.models import custom


class Evaluator:
  """Builds the distributed eval input and step once; each call is a full pass."""

  def __init__(self, strategy, predict, dataset: manifest.Dataset, split: str,
               global_batch: int, input_config, profiling=lambda: False):
    dataset_fn, self.steps = pipeline.eval_input_fn(
        dataset, global_batch, pipeline.num_input_pipelines(strategy), split, input_config)
    self._dataset = strategy.distribute_datasets_from_function(dataset_fn)
    self._iterator = None  # made at the first call, then kept: each call reads one pass
    self.totals = metrics.Totals(strategy, "eval", dataset.num_classes)
    step = loop.eval_step(predict, dataset.num_classes, self.totals)
    self._run_steps = loop.compile_steps(strategy, step)
    # While a profile runs: one step per call, no while loop (loop.compile_steps says
    # why); the training steps around it keep their step markers.
    self._run_step = loop.compile_steps(strategy, step, unrolled=True)
    self._profiling = profiling

  def __call__(self) -> dict:
    self.totals.reset()
    if self._iterator is None:
      self._iterator = iter(self._dataset)
    if self._profiling():
      for _ in range(self.steps):
        self._run_step(self._iterator, 1)
    else:
      self._run_steps(self._iterator, tf.constant(self.steps))
    return self.totals.result()


def evaluate(workdir: str, *, model_path: str = "", split: str = "", data_dir: str = "",
             batch_size: int = 0, report: bool = True) -> dict:
  """Re-evaluates a training run's exported model (or model_path) on a split.

  With `report`, also writes beside the model: eval_SPLIT.json (loss, accuracy,
  per-class accuracy and the confusion matrix), eval_SPLIT_confusion.png,
  eval_SPLIT_predictions.png (test images, predicted vs true) and
  learning_curves.png (from the run's history.json). Training itself draws
  nothing: matplotlib is no part of a run's time.
  """
  versions.check()
  if batch_size < 0:
    raise UserError(f"--batch_size={batch_size} must be positive (0: the run's).")
  config = config_lib.load_if_exists(storage.join(workdir, "config.json"))
  if config is None:
    raise MissingError(f"No config.json in workdir={workdir!r}: is it a finished "
                       "tpu-trainer-train workdir?")
  model_path = model_path or storage.join(workdir, "model.keras")
  if not tf.io.gfile.exists(model_path):
    raise MissingError(f"No model at {model_path}: train to the end first, or pass "
                       "--model=PATH (.keras file or SavedModel directory).")
  data_dir = data_dir or config.data_dir
  dataset = manifest.read(data_dir)
  split = split or config.input.eval_split
  manifest.check_shards(dataset, [split])
  report_name, order = check_dataset(config, dataset, split)
  model_path = os.fspath(model_path)
  if model_path.endswith(".keras") and custom.is_reference(config.get("model")):
    # The user's module registers the custom layers model.keras is made of.
    custom.resolve_reference(config.model)
  predict = export_lib.load_serving_fn(model_path,
                                       from_logits=config.get("model_output") == "logits")
  if order is not None:  # the model's probabilities, column by column in the data's order
    predict = _in_class_order(predict, order)
  evaluator = Evaluator(tf.distribute.get_strategy(), predict, dataset, split,
                        batch_size or config.batch_size or 256, config.input)
  try:
    result = evaluator()
  except tf.errors.DataLossError as e:
    raise manifest.explain_data_loss(data_dir, e) from None
  if report:
    _write_report(workdir, report_name, split, result, evaluator.totals.confusion(), predict,
                  dataset)
  return result


def check_dataset(config, dataset: manifest.Dataset, split: str) -> tuple[str, list | None]:
  """Refuses data the run's model cannot be scored on honestly. Returns the
  report's name (eval_SPLIT for the run's own dataset, eval_NAME_SPLIT for
  another) and, for a dataset with the run's classes in another order, the
  model's index of each of its classes (matched by name), else None."""
  trained = [manifest.class_name(n) for n in config.get("class_names") or []]
  order = None
  if trained and list(dataset.class_names) != trained:
    if sorted(trained) != sorted(dataset.class_names) or len(set(trained)) != len(trained):
      raise UserError(f"{dataset.data_dir} has other classes ({dataset.class_names[:5]}...) "
                      f"than the model was trained on ({trained[:5]}...): it cannot be "
                      "scored on them. Evaluate on a dataset with the run's classes.")
    order = [trained.index(name) for name in dataset.class_names]
    logging.info("%s has the run's classes in another order: matched by name (the "
                 "model's class %d is the data's class 0, ...).", dataset.data_dir, order[0])
  identity = config.get("dataset_identity")
  if not identity or identity in dataset.identities:
    return f"eval_{split}", order
  if dataset.data_dir.rstrip("/") == str(config.data_dir).rstrip("/"):
    raise UserError(f"{dataset.data_dir} was converted again since this run trained on it "
                    "(its content differs): its splits may be re-drawn, and the "
                    f"{split} examples overlap what the model trained on. Convert into "
                    "another directory, or evaluate a run trained on this one.")
  logging.info("Evaluating on %s, another dataset than the run's (same classes); the "
               "report is eval_%s_%s.json.", dataset.data_dir, dataset.name, split)
  return f"eval_{dataset.name}_{split}", order


def _in_class_order(predict, order: list[int]):
  def reordered(images):
    return tf.gather(predict(images), order, axis=-1)
  return reordered


def _write_report(workdir, name, split, result, confusion, predict, dataset):
  """NAME.json, NAME_confusion.png, NAME_predictions.png and learning_curves.png."""
  per_class = {c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum()
                   else None) for i, c in enumerate(dataset.class_names)}
  storage.write_text(storage.join(workdir, f"{name}.json"), json.dumps(
      {**result, "split": split, "data_dir": dataset.data_dir,
       "per_class_accuracy": per_class, "confusion_matrix": confusion.tolist(),
       "class_names": dataset.class_names}, indent=1) + "\n")
  plots.confusion_matrix(confusion, dataset.class_names,
                         storage.join(workdir, f"{name}_confusion.png"))
  history = storage.read_text_if_exists(storage.join(workdir, "history.json"))
  if history is not None:
    plots.learning_curves(json.loads(history), storage.join(workdir, "learning_curves.png"))
  images, labels = pipeline.sample(dataset, split, 25)
  plots.predictions(images, labels, tf.cast(predict(images), tf.float32).numpy(),
                    dataset.class_names, storage.join(workdir, f"{name}_predictions.png"))
