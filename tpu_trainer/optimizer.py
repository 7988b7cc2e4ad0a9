"""The optimizer a recipe asks for, with its learning-rate schedule.

The peak rate comes from scaling.py (batch size and base_lr); this module
shapes it over the run and builds the Keras optimizer around it. OPTIMIZERS and
SCHEDULES are the choices config validation and --show_config list: adding one
is an entry here. Keras is imported when an optimizer is built, not before
(config validation reads this module).
"""
from tpu_trainer.errors import UserError


def _adam(kwargs, config):
  del config
  import keras  # pylint: disable=g-import-not-at-top
  return keras.optimizers.Adam(**kwargs)


def _adamw(kwargs, config):
  del config
  import keras  # pylint: disable=g-import-not-at-top
  return keras.optimizers.AdamW(**{"weight_decay": 1e-4, **kwargs})


def _sgd(kwargs, config):
  import keras  # pylint: disable=g-import-not-at-top
  return keras.optimizers.SGD(momentum=config.momentum, nesterov=True, **kwargs)


# config.optimizer -> fn(kwargs with learning_rate [and weight_decay], config).
OPTIMIZERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}


def _warmup_then_cosine(alpha: float):
  """Linear warmup from 0 to peak, then cosine decay to alpha * peak."""

  def schedule(peak: float, warmup: int, total_steps: int):
    import keras  # pylint: disable=g-import-not-at-top
    if warmup > 0:
      return keras.optimizers.schedules.CosineDecay(
          0.0, max(1, total_steps - warmup), alpha=alpha, warmup_target=peak,
          warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(peak, max(1, total_steps), alpha=alpha)

  return schedule


# config.lr_schedule -> fn(peak rate, warmup steps, total steps) -> a Keras schedule.
SCHEDULES = {"cosine": _warmup_then_cosine(0.0), "constant": _warmup_then_cosine(1.0)}


def _check(key: str, value: str, allowed) -> None:
  if value not in allowed:
    raise UserError(f"config.{key}={value!r} is not one of {', '.join(allowed)}.")


def learning_rate_schedule(config, peak: float, steps_per_epoch: int, total_steps: int):
  """config.lr_schedule after config.warmup_epochs of linear warmup."""
  _check("lr_schedule", config.lr_schedule, SCHEDULES)
  warmup = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  return SCHEDULES[config.lr_schedule](peak, warmup, total_steps)


def make_optimizer(config, schedule, precision: str):
  """config.optimizer on `schedule`; loss-scaled for float16."""
  import keras  # pylint: disable=g-import-not-at-top
  _check("optimizer", config.optimizer, OPTIMIZERS)
  kwargs = {"learning_rate": schedule}
  if config.weight_decay:
    kwargs["weight_decay"] = config.weight_decay
  optimizer = OPTIMIZERS[config.optimizer](kwargs, config)
  if precision == "mixed_float16":  # float16 gradients underflow without it
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer
