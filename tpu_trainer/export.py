"""A trained model, exported: model.keras, and a SavedModel whose serving signature
takes `image` (uint8, as the data pipeline feeds it) and returns named outputs:
`probabilities`, `class_id` and `class_name` (from the dataset's class names)."""
import contextlib
import io

import keras
import tensorflow as tf

from tpu_trainer import storage


def export(model: keras.Model, workdir: str, class_names: list[str]) -> None:
  keras_path = storage.join(workdir, "model.keras")
  model.save(keras_path)
  # Reloaded outside the strategy: the served graph holds plain variables.
  save_serving_model(keras.models.load_model(keras_path), class_names,
                     storage.join(workdir, "saved_model"))


def save_serving_model(model: keras.Model, class_names: list[str], path: str) -> None:
  names = tf.constant(class_names)
  image_spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.uint8, name="image")

  def serve(image):
    probabilities = tf.cast(model(image, training=False), tf.float32)
    class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {"probabilities": probabilities, "class_id": class_id,
            "class_name": tf.gather(names, class_id)}

  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serve", serve, input_signature=[image_spec])
  # Keras (3.6 at least) prints every endpoint's signature to stdout, which
  # belongs to our results; the saved signature is in the README.
  with contextlib.redirect_stdout(io.StringIO()):
    archive.write_out(path)


def load_serving_fn(path: str):
  """A .keras file or an exported SavedModel -> fn(uint8 images) -> probabilities."""
  if path.endswith(".keras"):
    model = keras.models.load_model(path)
    return lambda images: model(images, training=False)
  loaded = tf.saved_model.load(path)
  # `loaded` is bound into the function: it keeps the variables alive.
  return lambda images, loaded=loaded: loaded.signatures["serving_default"](
      image=images)["probabilities"]
