"""What differs per Keras backend: each module has a Runner with the same methods
(the controller's side of the contract is in controller.py).

Keras fixes its backend when it is first imported, and importing TensorFlow
imports Keras: the tools set KERAS_BACKEND from --config.backend before either
(cli/__init__.py); a library caller sets it in the environment.
"""
import os
import sys

from tpu_trainer.config import BACKENDS
from tpu_trainer.errors import UserError


def backend_from_argv(argv: list[str]) -> str | None:
  """The value of --config.backend on a command line, if given."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config.backend="):
      return arg.split("=", 1)[1]
    if arg == "--config.backend" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def select(name: str) -> None:
  """Keras will load with backend `name`: call before anything imports keras or
  tensorflow. An unknown name is left for config validation to refuse."""
  if name in BACKENDS and "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = name


def runner(config, strategy=None):
  """The runner for config.backend; Keras must already be on that backend."""
  import keras  # pylint: disable=g-import-not-at-top
  loaded = keras.backend.backend()
  if loaded != config.backend:
    raise UserError(f"config.backend={config.backend!r}, but Keras was loaded with its "
                    f"{loaded!r} backend: pass --config.backend={config.backend} on the "
                    f"command line (or set KERAS_BACKEND={config.backend} before Python "
                    "imports keras or tensorflow).")
  if config.backend == "jax":
    if strategy is not None:
      raise UserError("A tf.distribute strategy was passed for config.backend='jax'.")
    from tpu_trainer.backends import jax as jax_backend  # pylint: disable=g-import-not-at-top
    return jax_backend.Runner(config)
  from tpu_trainer.backends import tensorflow as tf_backend  # pylint: disable=g-import-not-at-top
  return tf_backend.Runner(config, strategy)
