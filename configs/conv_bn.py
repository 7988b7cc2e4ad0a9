"""Conv/Dense blocks with batch norm; --config.pooling=max|avg.

  tpu-trainer-train --config=configs/conv_bn.py --config.data_dir=DIR --workdir=W
"""
from tpu_trainer.config import check_variant
from tpu_trainer.config import default_config
from tpu_trainer.config import shrink_for_smoke


def get_config(arg=None):
  check_variant(arg, "configs/conv_bn.py")
  config = default_config()
  config.model = "conv_bn"
  config.pooling = "max"
  config.epochs = 10
  config.optimizer = "sgd"
  config.lr_schedule = "cosine"
  config.base_lr = 0.1       # SGD+momentum: 0.1 at batch 256, linear in the batch
  config.base_batch_size = 256
  config.warmup_epochs = 1
  config.label_smoothing = 0.1
  if arg == "smoke":
    shrink_for_smoke(config)
  return config
