"""Batch size and learning rate from the dataset, the replicas and the recipe.

Large batches are how TPUs go fast; too few optimizer steps is how they lose
accuracy. `batch_size=0` (the recipes' default) picks the largest power of two
that still gives `min_steps_per_epoch` steps per epoch, between 32 (the seed
tutorials' batch) and `max_batch_size`. The learning rate is `base_lr` at
`base_batch_size`, scaled to the batch: by its square root for Adam/AdamW (whose
steps are normalised; Keras's 1e-3 at batch 32 is the reference), linearly for
SGD (Goyal et al.). An explicit batch_size or lr_scaling=none is obeyed as given.
"""
import math

from absl import logging

from tpu_trainer.errors import UserError

MIN_BATCH = 32
SCALINGS = ("auto", "linear", "sqrt", "none")
TOO_FEW_STEPS = 300  # optimizer steps in a whole run below which we warn


def auto_batch_size(train_examples: int, replicas: int, max_batch: int,
                    min_steps_per_epoch: int) -> int:
  """Largest power of two <= train_examples / min_steps_per_epoch, in
  [MIN_BATCH, max_batch], rounded up to a multiple of the replicas."""
  target = train_examples / max(1, min_steps_per_epoch)
  batch = 2 ** max(0, math.floor(math.log2(max(1.0, target))))
  batch = min(max(batch, MIN_BATCH), max(max_batch, MIN_BATCH))
  return math.ceil(batch / replicas) * replicas


def lr_scaling(config) -> str:
  if config.lr_scaling not in SCALINGS:
    raise UserError(f"config.lr_scaling={config.lr_scaling!r} is not one of {SCALINGS}.")
  if config.lr_scaling != "auto":
    return config.lr_scaling
  return "linear" if config.optimizer == "sgd" else "sqrt"


def peak_learning_rate(config, batch_size: int) -> float:
  ratio = batch_size / config.base_batch_size
  factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[lr_scaling(config)]
  return config.base_lr * factor


def resolve(config, train_examples: int, replicas: int) -> tuple[int, float, dict]:
  """(global batch size, peak learning rate, the reasons) for this run."""
  reasons = {}
  if config.batch_size:
    batch = config.batch_size
    reasons["batch_size"] = "as given (config.batch_size)"
  else:
    batch = auto_batch_size(train_examples, replicas, config.max_batch_size,
                            config.min_steps_per_epoch)
    reasons["batch_size"] = (
        f"auto: the largest power of two giving at least {config.min_steps_per_epoch} steps "
        f"per epoch over {train_examples} training examples, within [{MIN_BATCH}, "
        f"{config.max_batch_size}] and a multiple of {replicas} replicas")
  peak = peak_learning_rate(config, batch)
  scaling = lr_scaling(config)
  reasons["learning_rate"] = (
      f"{config.base_lr:g} at batch {config.base_batch_size}, scaled "
      + {"linear": "linearly", "sqrt": "by the square root",
         "none": "not at all"}[scaling]
      + f" to batch {batch} ({config.optimizer}, lr_scaling={config.lr_scaling})")
  logging.info("Batch size %d: %s.", batch, reasons["batch_size"])
  logging.info("Peak learning rate %.4g: %s.", peak, reasons["learning_rate"])
  return batch, peak, reasons


def warn_if_too_few_steps(total_steps: int, batch: int, train_examples: int) -> str:
  """A warning (also returned) when a run has too few optimizer steps to converge."""
  if total_steps >= TOO_FEW_STEPS:
    return ""
  advice = ("raise config.epochs" if batch <= MIN_BATCH else
            "lower config.batch_size (0 picks one for the dataset) or raise config.epochs")
  message = (f"Only {total_steps} optimizer steps (batch {batch} over {train_examples} "
             f"examples): too few to converge for most models; {advice}.")
  logging.warning(message)
  return message
