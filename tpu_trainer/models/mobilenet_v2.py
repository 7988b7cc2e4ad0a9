"""MobileNetV2 transfer learning, as in the Keras-on-TPU flowers codelab.

keras.applications base (weights="imagenet" downloads them; "none" trains from
scratch), frozen when pretrained, a new dropout + softmax head, and optionally
the top `fine_tune_layers` of the base unfrozen.
"""
import keras
from keras import layers

from tpu_trainer.models import base


def build(input_shape, num_classes, config) -> keras.Model:
  inputs, pixels = base.image_input(input_shape)
  x = base.adapt_images(pixels, input_shape)
  x = layers.Rescaling(1 / 127.5, offset=-1)(x)  # MobileNetV2 wants [-1, 1]
  net, pretrained = base.pretrained_base(keras.applications.MobileNetV2, input_shape, config)
  # A frozen pretrained base keeps its batch-norm statistics.
  x = net(x, training=False) if pretrained and not config.fine_tune_layers else net(x)
  x = layers.Dropout(config.dropout or 0.2)(x)
  return keras.Model(inputs, base.probabilities(x, num_classes), name="mobilenet_v2")
