"""The TensorFlow / Keras / Python range this package supports, checked at startup.

Floors, and why:
  - TensorFlow 2.16: the first release built on Keras 3, and the oldest Cloud
    TPU runtime with PJRT we launch (`tpu-vm-tf-2.16.1-pjrt`). CI runs on it.
  - Keras 3.6: the oldest Keras CI runs on. Keras before 3.2 did not sum
    gradients across replicas (each replica applied its own and replicas
    drifted silently); 3.3 (the tpu-vm-tf-2.16.1 images' Keras) lacks
    `Model.export(verbose=)`, and gets fixes later releases made. pip installs
    a newer Keras over an image's without touching its TensorFlow
    (`keras>=3.6` in setup.py).
"""
import platform
import re

from tpu_trainer.errors import UserError

MIN_TENSORFLOW = (2, 16)
MIN_KERAS = (3, 6)


def _major_minor(version: str) -> tuple[int, int]:
  match = re.match(r"(\d+)\.(\d+)", version)
  if not match:
    raise UserError(f"Cannot read the version {version!r}.")
  return int(match.group(1)), int(match.group(2))


def installed() -> dict:
  """{'tensorflow': ..., 'keras': ..., 'python': ...} as installed here."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {"tensorflow": tf.__version__, "keras": keras.__version__,
          "python": platform.python_version()}


def problem(tensorflow_version: str, keras_version: str) -> str:
  """What is unsupported about these versions and how to fix it, or ''."""
  if _major_minor(tensorflow_version) < MIN_TENSORFLOW:
    return (f"TensorFlow {tensorflow_version} is too old: tpu_trainer needs TensorFlow >= "
            f"{'.'.join(map(str, MIN_TENSORFLOW))} (on a TPU VM, create it with a "
            "tpu-vm-tf-2.16.1-pjrt or newer runtime).")
  keras_major_minor = _major_minor(keras_version)
  if keras_major_minor[0] != 3 or keras_major_minor < MIN_KERAS:
    return (f"Keras {keras_version} is not supported: tpu_trainer needs Keras 3 >= "
            f"{'.'.join(map(str, MIN_KERAS))}; run `python3 -m pip install 'keras>="
            f"{'.'.join(map(str, MIN_KERAS))}'` (it keeps your TensorFlow).")
  return ""


def check() -> dict:
  """Returns the installed versions; raises ValueError when they are unsupported."""
  versions = installed()
  message = problem(versions["tensorflow"], versions["keras"])
  if message:
    raise UserError(message)
  return versions


def describe(versions: dict) -> str:
  return (f"TensorFlow {versions['tensorflow']}, Keras {versions['keras']}, "
          f"Python {versions['python']}")
