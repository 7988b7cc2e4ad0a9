"""config.model = applications:NAME: any keras.applications backbone (EfficientNetV2B0,
ConvNeXtTiny, DenseNet121, ...) with our head.

Each family expects its own input range (Keras's docs, per family): [-1, 1]
(MobileNetV2, ResNetV2, Xception, Inception), caffe's BGR minus the ImageNet
means (ResNet, VGG), torch's mean/std (DenseNet), or 0-255 with the
normalisation inside the model (EfficientNet, EfficientNetV2, ConvNeXt,
MobileNetV3). The family's own `preprocess_input` is applied inside the model,
so the model takes 0-255 images as every model here does (and serving gets).
config.weights: "imagenet" downloads, "none" trains from scratch (batch norm
momentum 0.9, base.SCRATCH_BN_MOMENTUM), a path loads a weights file.
"""
import inspect

import keras
from keras import layers

from tpu_trainer.errors import UserError
from tpu_trainer.models import base

PREFIX = "applications:"


def backbones() -> list[str]:
  """The keras.applications classes this form takes: those with include_top and pooling."""
  return sorted(n for n in dir(keras.applications) if n[:1].isupper() and _takes_head(
      getattr(keras.applications, n)))


def _takes_head(application) -> bool:
  try:
    parameters = inspect.signature(application).parameters
  except (TypeError, ValueError):
    return False
  return "include_top" in parameters and "pooling" in parameters


def find(name: str):
  """The keras.applications function for applications:NAME, or one line with the choices."""
  application = getattr(keras.applications, name, None) if name[:1].isupper() else None
  if application is None or not _takes_head(application):
    near = [n for n in backbones() if n.lower().startswith(name.lower()[:6])] or backbones()
    raise UserError(f"config.model='{PREFIX}{name}': keras.applications "
                    f"{keras.__version__} has no backbone {name!r} that takes include_top "
                    f"and pooling; try {', '.join(near[:8])}.")
  return application


def builder(name: str):
  """fn(input_shape, num_classes, config) -> keras.Model for applications:NAME."""
  application = find(name)
  family = getattr(keras.applications, application.__module__.rsplit(".", 1)[-1])
  options = ({"include_preprocessing": True}
             if "include_preprocessing" in inspect.signature(application).parameters else {})

  def build(input_shape, num_classes, config) -> keras.Model:
    net, pretrained = base.pretrained_base(application, input_shape, config, **options)
    inputs, pixels = base.image_input(input_shape)
    x = base.adapt_images(pixels, input_shape, min_size=min(net.input_shape[1:3]))
    x = family.preprocess_input(x)
    # A frozen pretrained base keeps its batch-norm statistics.
    x = net(x, training=False) if pretrained and not config.fine_tune_layers else net(x)
    if config.dropout:
      x = layers.Dropout(config.dropout)(x)
    return keras.Model(inputs, base.probabilities(x, num_classes), name=name.lower())

  return build
