"""ResNet-50 (keras.applications), from scratch or from ImageNet weights."""
import keras
from keras import layers

from tpu_trainer.models import base

# keras.applications.resnet50 was trained on BGR images minus these means.
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def build(input_shape, num_classes, config) -> keras.Model:
  inputs, pixels = base.image_input(input_shape)
  x = base.adapt_images(pixels, input_shape)
  net, pretrained = base.pretrained_base(keras.applications.ResNet50,
                                                 input_shape, config)
  if pretrained:
    x = layers.Concatenate()([x[..., 2:3], x[..., 1:2], x[..., 0:1]])  # RGB -> BGR
    x = layers.Normalization(mean=_IMAGENET_BGR_MEAN, variance=(1.0, 1.0, 1.0))(x)
  else:
    x = layers.Rescaling(1 / 127.5, offset=-1)(x)
  x = net(x, training=False) if pretrained and not config.fine_tune_layers else net(x)
  return keras.Model(inputs, base.probabilities(x, num_classes), name="resnet50")
