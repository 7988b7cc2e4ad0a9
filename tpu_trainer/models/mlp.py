"""The seed MLP: Flatten-Dense128-Dense10 (Fashion-MNIST tutorial)."""
import keras
from keras import layers

from tpu_trainer.models import base


def build(input_shape, num_classes, config) -> keras.Model:
  inputs, pixels = base.image_input(input_shape)
  x = layers.Rescaling(1 / 255)(pixels)
  x = layers.Flatten()(x)
  x = layers.Dense(128, activation="relu")(x)
  if config.dropout:
    x = layers.Dropout(config.dropout)(x)
  return keras.Model(inputs, base.probabilities(x, num_classes), name="mlp")
