"""What the model families share: uint8 images in, float32 probabilities out,
and the keras.applications bases (MobileNetV2, ResNet-50) with their adaptations."""
import re

import keras
from keras import layers
from keras import ops

from tpu_trainer.errors import UserError


# The brightest pixel of an image read as 0-1 (see image_input): 1 and lanczos
# ringing (up to ~13% of a step), below any 0-255 image but a black one.
ZERO_ONE_PEAK = 1.5


def image_input(input_shape):
  """(the model's input, its pixels on the 0-255 scale as floats).

  The pipeline feeds uint8 images, 0-255. A user who loads model.keras may pass
  floats: 0-255 as well, or 0-1 (x / 255, the usual habit). A uint8 input
  would cast 0-1 floats to 0 (a black image, scored at chance, without a word),
  so the input is float32 and an image whose brightest pixel is at most
  ZERO_ONE_PEAK is read as 0-1: above 1 by a margin, since resampled 0-1 images
  overshoot it (a lanczos resize of x / 255 left a pixel at 1.000001 in 8% of
  digits: with "<= 1" those were read as 0-255, black). Training goes through
  the same rule, so train and serve agree; only a nearly black image (every
  pixel 0 or 1 of 255) is read as a bright one.
  """
  inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="image")
  peak = ops.max(inputs, axis=tuple(range(1, len(input_shape) + 1)), keepdims=True)
  return inputs, inputs * ops.where(peak <= ZERO_ONE_PEAK, 255.0, 1.0)


def probabilities(x, num_classes: int):
  # float32 whatever the policy: softmax and the loss need the range.
  return layers.Dense(num_classes, activation="softmax", dtype="float32",
                      name="probabilities")(x)


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
# thousands of steps and evaluation scores a constant class (the README's
# Accuracy section has the numbers).
# 0.9 is what from-scratch ImageNet recipes (Model Garden, MLPerf) use.
SCRATCH_BN_MOMENTUM = 0.9


def pretrained_base(application, input_shape, config, **options):
  """(the keras.applications base without its top, average-pooled; whether it
  is pretrained). Built for the images' size, at least the smallest the
  application takes (32, or what it says: 75 for InceptionV3); adapt_images
  brings the images to net.input_shape."""
  weights = None if config.weights in ("none", "", None) else config.weights
  height, width, _ = input_shape
  size = 32
  while True:
    try:
      net = application(input_shape=(max(height, size), max(width, size), 3),
                        include_top=False, weights=weights, pooling="avg", **options)
      break
    except ValueError as e:
      smallest = re.search(r"at least (\d+)x(\d+)", str(e))
      if not smallest or int(smallest.group(1)) <= size:
        raise
      size = int(smallest.group(1))
    except Exception as e:  # pylint: disable=broad-except  (Keras raises a bare Exception)
      if not weights or not (isinstance(e, OSError) or "URL fetch failure" in str(e)):
        raise
      reason = str(e).rsplit(" -- ", 1)[-1][:200]
      raise UserError(f"config.weights={config.weights!r}: {application.__name__}'s weights "
                      f"could not be downloaded ({reason}). Offline? Train from scratch with "
                      "--config.weights=none, or first put the file keras.applications "
                      "downloads into ~/.keras/models/ (or $KERAS_HOME/models/).") from None
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
