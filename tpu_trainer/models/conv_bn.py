"""Conv/Dense blocks with batch norm; pooling=max|avg (the BN/pooling tutorial)."""
import keras
from keras import layers

from tpu_trainer.errors import UserError
from tpu_trainer.models import base


def build(input_shape, num_classes, config) -> keras.Model:
  if config.pooling not in ("max", "avg"):
    raise UserError(f"config.pooling={config.pooling!r} must be 'max' or 'avg'.")
  pool = layers.MaxPooling2D if config.pooling == "max" else layers.AveragePooling2D
  inputs, pixels = base.image_input(input_shape)
  x = layers.Rescaling(1 / 255)(pixels)
  for filters in (32, 64, 128):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    # Keras's default momentum (0.99) leaves the moving statistics ~100 steps behind
    # the weights: a short run's evaluations scored a constant class (0.10).
    x = layers.BatchNormalization(momentum=base.SCRATCH_BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    x = pool(2, padding="same")(x)
  x = layers.Flatten()(x)
  x = layers.Dense(128, use_bias=False)(x)
  x = layers.BatchNormalization(momentum=base.SCRATCH_BN_MOMENTUM)(x)
  x = layers.Activation("relu")(x)
  if config.dropout:
    x = layers.Dropout(config.dropout)(x)
  return keras.Model(inputs, base.probabilities(x, num_classes), name="conv_bn")
