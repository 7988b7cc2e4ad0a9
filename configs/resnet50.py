"""ResNet-50, the ImageNet recipe: SGD+momentum, lr 0.1 per 256, warmup, cosine,
label smoothing, weight decay.

  tpu-trainer-train --config=configs/resnet50.py --config.data_dir=gs://B/imagenet --workdir=gs://B/run
"""
from tpu_trainer.config import check_variant
from tpu_trainer.config import default_config
from tpu_trainer.config import shrink_for_smoke


def get_config(arg=None):
  check_variant(arg, "configs/resnet50.py")
  config = default_config()
  config.model = "resnet50"
  config.weights = "none"
  config.input.augment = True
  config.batch_size = 0           # auto: 1024 on ImageNet, smaller on smaller data
  config.epochs = 90
  config.optimizer = "sgd"
  config.lr_schedule = "cosine"
  config.base_lr = 0.1         # at batch 256, linear in the batch (Goyal et al.)
  config.base_batch_size = 256
  config.warmup_epochs = 5
  config.label_smoothing = 0.1
  config.weight_decay = 5e-5
  config.steps_per_execution = 100
  config.input.cache = False
  config.input.shuffle_buffer = 16_384
  if arg == "smoke":
    shrink_for_smoke(config, batch_size=4, steps=2, steps_per_execution=1)
  return config
