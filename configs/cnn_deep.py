"""Deeper CNN with dropout (the seed CNN tutorial's second model).

  tpu-trainer-train --config=configs/cnn_deep.py --config.data_dir=DIR --workdir=W
"""
from tpu_trainer.config import check_variant
from tpu_trainer.config import default_config
from tpu_trainer.config import shrink_for_smoke


def get_config(arg=None):
  check_variant(arg, "configs/cnn_deep.py")
  config = default_config()
  config.model = "cnn_deep"
  config.dropout = 0.25
  config.epochs = 15
  config.warmup_epochs = 1
  if arg == "smoke":
    shrink_for_smoke(config)
  return config
