"""The seed CNNs of the Fashion-MNIST tutorials.

cnn:      Conv32-MaxPool-Conv64-MaxPool-Dense128-Dense10.
cnn_deep: two Conv-Conv-MaxPool-Dropout blocks (32, 64), Dense256-Dropout-Dense10.
'same' padding so small images (8x8 digits) keep a spatial extent to pool.
"""
import keras
from keras import layers

from tpu_trainer.models import base


def build(input_shape, num_classes, config) -> keras.Model:
  inputs, pixels = base.image_input(input_shape)
  x = layers.Rescaling(1 / 255)(pixels)
  for filters in (32, 64):
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
  x = layers.Flatten()(x)
  x = layers.Dense(128, activation="relu")(x)
  if config.dropout:
    x = layers.Dropout(config.dropout)(x)
  return keras.Model(inputs, base.probabilities(x, num_classes), name="cnn")


def build_deep(input_shape, num_classes, config) -> keras.Model:
  dropout = config.dropout or 0.25
  inputs, pixels = base.image_input(input_shape)
  x = layers.Rescaling(1 / 255)(pixels)
  for filters in (32, 64):
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Dropout(dropout)(x)
  x = layers.Flatten()(x)
  x = layers.Dense(256, activation="relu")(x)
  x = layers.Dropout(2 * dropout)(x)
  return keras.Model(inputs, base.probabilities(x, num_classes), name="cnn_deep")
