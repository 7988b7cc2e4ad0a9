"""The seed CNN: Conv32-MaxPool-Conv64-MaxPool-Dense128-Dense10.

  tpu-trainer-train --config=configs/cnn.py --config.data_dir=DIR --workdir=W
  --config=configs/cnn.py:smoke   a few steps, for tests and dry runs
"""
from tpu_trainer.config import check_variant
from tpu_trainer.config import default_config
from tpu_trainer.config import shrink_for_smoke


def get_config(arg=None):
  check_variant(arg, "configs/cnn.py")
  config = default_config()
  config.model = "cnn"
  config.epochs = 10
  if arg == "smoke":
    shrink_for_smoke(config)
  return config
