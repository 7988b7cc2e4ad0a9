"""The optimizer a recipe asks for, with its learning-rate schedule.

The peak rate comes from scaling.py (batch size and base_lr); this module
shapes it over the run and builds the Keras optimizer around it.
"""
import keras


def learning_rate_schedule(config, peak: float, steps_per_epoch: int, total_steps: int):
  """Linear warmup from 0 to peak, then cosine decay to 0, or constant."""
  warmup = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  alpha = 1.0 if config.lr_schedule == "constant" else 0.0
  if config.lr_schedule not in ("cosine", "constant"):
    raise ValueError(f"config.lr_schedule={config.lr_schedule!r} must be cosine or constant.")
  if warmup > 0:
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(1, total_steps - warmup), alpha=alpha, warmup_target=peak,
        warmup_steps=warmup)
  return keras.optimizers.schedules.CosineDecay(peak, max(1, total_steps), alpha=alpha)


def make_optimizer(config, schedule, precision: str):
  """Adam, AdamW or SGD (Nesterov momentum) on `schedule`; loss-scaled for float16."""
  kwargs = {"learning_rate": schedule}
  if config.weight_decay:
    kwargs["weight_decay"] = config.weight_decay
  if config.optimizer == "adam":
    optimizer = keras.optimizers.Adam(**kwargs)
  elif config.optimizer == "adamw":
    kwargs.setdefault("weight_decay", 1e-4)
    optimizer = keras.optimizers.AdamW(**kwargs)
  elif config.optimizer == "sgd":
    optimizer = keras.optimizers.SGD(momentum=config.momentum, nesterov=True, **kwargs)
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r} must be adam, adamw or sgd.")
  if precision == "mixed_float16":  # float16 gradients underflow without it
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer
