"""The two ends every model shares: uint8 images in, float32 probabilities out."""
import keras
from keras import layers


def image_input(input_shape):
  """uint8 images, the dtype the pipeline feeds and the exported model serves."""
  return keras.Input(shape=tuple(input_shape), dtype="uint8", name="image")


def probabilities(x, num_classes: int):
  # float32 whatever the policy: softmax and the loss need the range.
  return layers.Dense(num_classes, activation="softmax", dtype="float32",
                      name="probabilities")(x)
