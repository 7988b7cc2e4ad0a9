"""MobileNetV2 transfer learning, as in the Keras-on-TPU flowers codelab.

keras.applications base (weights="imagenet" downloads them; "none" trains from
scratch), frozen when pretrained, a new dropout + softmax head, and optionally
the top `fine_tune_layers` of the base unfrozen.
"""
import keras
from keras import layers

from tpu_trainer.models import base


def adapt_images(x, input_shape, min_size=32):
  """Grayscale to RGB and tiny images up to `min_size`: what ImageNet bases need."""
  height, width, channels = input_shape
  if channels == 1:
    x = layers.Concatenate()([x, x, x])
  if min(height, width) < min_size:
    x = layers.Resizing(max(height, min_size), max(width, min_size))(x)
  return x


# Batch-norm momentum for a base trained from scratch. keras.applications builds
# MobileNetV2 with 0.999 (ResNet50: 0.99), made for fine-tuning pretrained
# statistics: from scratch, the moving averages then lag the weights for
# thousands of steps and evaluation scores a constant class (measured: MobileNetV2
# on digits, 5 epochs, 0.10 at 0.999 vs 0.90 at 0.9, 0.91 in training mode).
# 0.9 is what from-scratch ImageNet recipes (Model Garden, MLPerf) use.
SCRATCH_BN_MOMENTUM = 0.9


def pretrained_base(application, input_shape, config):
  weights = None if config.weights in ("none", "", None) else config.weights
  height, width, _ = input_shape
  net = application(input_shape=(max(height, 32), max(width, 32), 3), include_top=False,
                    weights=weights, pooling="avg")
  if not weights:
    for layer in net.layers:
      if isinstance(layer, layers.BatchNormalization):
        layer.momentum = SCRATCH_BN_MOMENTUM
  if weights:
    net.trainable = bool(config.fine_tune_layers)
    if config.fine_tune_layers:
      for layer in net.layers[:-config.fine_tune_layers]:
        layer.trainable = False
  return net, bool(weights)


def build(input_shape, num_classes, config) -> keras.Model:
  inputs = base.image_input(input_shape)
  x = adapt_images(inputs, input_shape)
  x = layers.Rescaling(1 / 127.5, offset=-1)(x)  # MobileNetV2 wants [-1, 1]
  net, pretrained = pretrained_base(keras.applications.MobileNetV2, input_shape, config)
  # A frozen pretrained base keeps its batch-norm statistics.
  x = net(x, training=False) if pretrained and not config.fine_tune_layers else net(x)
  x = layers.Dropout(config.dropout or 0.2)(x)
  return keras.Model(inputs, base.probabilities(x, num_classes), name="mobilenet_v2")
