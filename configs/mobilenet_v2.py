"""MobileNetV2 transfer learning (the Keras-on-TPU flowers codelab).

  tpu-trainer-convert --source=folder:flower_photos --image_size=224,224 --output_dir=gs://B/flowers
  tpu-trainer-train --config=configs/mobilenet_v2.py --config.data_dir=gs://B/flowers --workdir=gs://B/run
Pretrained ImageNet weights are downloaded by Keras; --config.weights=none trains
from scratch. --config.fine_tune_layers=N unfreezes the top N layers of the base.
"""
from tpu_trainer.config import check_variant
from tpu_trainer.config import default_config
from tpu_trainer.config import shrink_for_smoke


def get_config(arg=None):
  check_variant(arg, "configs/mobilenet_v2.py")
  config = default_config()
  config.model = "mobilenet_v2"
  config.weights = "imagenet"
  config.dropout = 0.2
  config.input.augment = True
  config.epochs = 12
  config.base_lr = 1e-3
  config.warmup_epochs = 1
  config.steps_per_execution = 10
  if arg == "smoke":
    config.weights = "none"
    shrink_for_smoke(config, batch_size=8, steps=2, steps_per_execution=1)
  return config
