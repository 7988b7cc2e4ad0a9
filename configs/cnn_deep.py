"""Deeper CNN with dropout (the seed CNN tutorial's second model).

  tpu-trainer-train --config=configs/cnn_deep.py --config.data_dir=DIR --workdir=W
"""
from tpu_trainer.config import default_config


def get_config(arg=None):
  config = default_config()
  config.model = "cnn_deep"
  config.dropout = 0.25
  config.batch_size = 1024
  config.epochs = 15
  config.base_lr = 1e-3
  config.warmup_epochs = 1
  if arg == "smoke":
    config.batch_size = 32
    config.steps = 4
    config.steps_per_execution = 2
  return config
