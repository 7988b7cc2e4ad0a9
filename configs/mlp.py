"""The seed MLP: Flatten-Dense128-Dense10.

  tpu-trainer-train --config=configs/mlp.py --config.data_dir=DIR --workdir=W
"""
from tpu_trainer.config import check_variant
from tpu_trainer.config import default_config
from tpu_trainer.config import shrink_for_smoke


def get_config(arg=None):
  check_variant(arg, "configs/mlp.py")
  config = default_config()
  config.model = "mlp"
  config.epochs = 10
  if arg == "smoke":
    shrink_for_smoke(config)
  return config
