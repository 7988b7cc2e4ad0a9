"""A trained model, exported: model.keras, and a SavedModel whose serving signature
takes `image` (float32 pixels, 0-255 or 0-1: models.base.image_input's rule) and
returns named outputs: `probabilities`, `class_id` and `class_name` (from the
dataset's class names). A float signature, not uint8: clients that cast to the
signature's dtype (saved_model_cli, TF Serving's JSON) would turn 0-1 floats into
a black uint8 image without a word.

Both are written under temp names and published whole: model.keras by rename
(or one upload on gs://), saved_model/ by renaming its directory (on gs://,
uploaded file by file; there metrics.json, written after the export, is the
mark of a complete one). A kill during export leaves the previous files or
none, never a half-written one.
"""
import glob
import os
import shutil
import tempfile
import uuid
import zipfile

from absl import logging
import keras
import tensorflow as tf

from tpu_trainer import storage
from tpu_trainer.errors import UserError


def export(model: keras.Model, workdir: str, class_names: list[str], save_serving=None,
           safe_point=lambda: None, from_logits: bool = False, image_shape=None) -> None:
  """save_serving(model, class_names, path, from_logits, image_shape): the backend's
  SavedModel writer (save_serving_model here by default); image_shape (H, W, C)
  for a model without a fixed input (subclassed), else its input's. safe_point() runs between the
  steps, where a stop (SIGTERM) may raise: nothing is half published then.
  model.keras is the model as built (a logits model returns logits); the
  SavedModel's `probabilities` are probabilities either way."""
  logging.info("Exporting model.keras and saved_model/ to %s.", workdir)
  with tempfile.TemporaryDirectory(prefix="tpu_trainer_export_") as staging:
    local_keras = os.path.join(staging, "model.keras")
    model.save(local_keras)
    safe_point()
    # Reloaded outside the strategy: the served graph holds plain variables.
    local_saved = os.path.join(staging, "saved_model")
    (save_serving or save_serving_model)(keras.models.load_model(local_keras), class_names,
                                         local_saved, from_logits, image_shape)
    safe_point()
    storage.publish_copy(local_keras, storage.join(workdir, "model.keras"))
    safe_point()
    publish_directory(local_saved, storage.join(workdir, "saved_model"))


def publish_directory(local_dir: str, final: str) -> None:
  """Puts a finished local directory at `final`, replacing what was there."""
  if storage.is_gcs(final):
    for root, _, names in os.walk(local_dir):
      for name in names:
        rel = os.path.relpath(os.path.join(root, name), local_dir)
        storage.publish_copy(os.path.join(root, name), storage.join(final, rel))
    return
  parent = os.path.dirname(final) or "."
  prefix = f".{os.path.basename(final)}.tmp-"
  for stale in glob.glob(os.path.join(parent, glob.escape(prefix) + "*")):  # killed exports'
    shutil.rmtree(stale, ignore_errors=True)
  incoming = os.path.join(parent, prefix + uuid.uuid4().hex[:8])
  try:
    shutil.copytree(local_dir, incoming)
    if os.path.exists(final):  # the old one out of the way, then the new one in: renames
      outgoing = incoming + "-old"
      os.replace(final, outgoing)
      os.replace(incoming, final)
      shutil.rmtree(outgoing, ignore_errors=True)
    else:
      os.replace(incoming, final)
  finally:  # interrupted (SIGTERM), nothing of this attempt stays
    shutil.rmtree(incoming, ignore_errors=True)


def serving_shape(model: keras.Model, image_shape=None) -> tuple:
  """(None, H, W, C): the signature's image shape."""
  return (None,) + tuple(image_shape or model.input_shape[1:])


def save_serving_model(model: keras.Model, class_names: list[str], path: str,
                       from_logits: bool = False, image_shape=None) -> None:
  """The serving signature alone, over the model's variables. Saved with
  tf.saved_model.save directly: keras.export.ExportArchive writes the same
  signature more slowly, walking the model's objects for resources a plain Keras
  model does not have."""
  names = tf.constant(class_names)
  image_spec = tf.TensorSpec(serving_shape(model, image_shape), tf.float32, name="image")

  @tf.function(input_signature=[image_spec], autograph=False)
  def serve(image):
    probabilities = tf.cast(model(image, training=False), tf.float32)
    if from_logits:
      probabilities = tf.nn.softmax(probabilities)
    class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {"probabilities": probabilities, "class_id": class_id,
            "class_name": tf.gather(names, class_id)}

  module = tf.Module()
  # The tf.Variables the graph reads (not Keras's wrappers of them): TF1-style
  # loaders such as saved_model_cli create exactly these.
  module.model_variables = list(serve.get_concrete_function().variables)
  module.serve = serve
  tf.saved_model.save(module, path, signatures={"serving_default": serve})


def load_serving_fn(path: str, from_logits: bool = False):
  """A .keras file or an exported SavedModel -> fn(images) -> probabilities, for
  images of any numeric dtype (uint8 as the pipeline feeds them). from_logits:
  the .keras model returns logits (config.json's model_output)."""
  if path.endswith(".keras"):
    with tf.io.gfile.GFile(path, "rb") as f:  # Keras says "File not found" of any other file
      if not zipfile.is_zipfile(f):
        raise UserError(f"{path} is not a .keras model (a Keras zip archive): pass a "
                        "workdir's model.keras or saved_model/.")
    model = keras.models.load_model(path)

    def predict(images):
      outputs = model(tf.cast(images, tf.float32), training=False)
      return tf.nn.softmax(tf.cast(outputs, tf.float32)) if from_logits else outputs

    return predict
  if not any(tf.io.gfile.exists(f"{path.rstrip('/')}/saved_model.{ext}")
             for ext in ("pb", "pbtxt")):
    raise UserError(f"{path} is neither a .keras file nor a SavedModel directory: pass a "
                    "workdir's model.keras or saved_model/.")
  loaded = tf.saved_model.load(path)
  if "serving_default" not in loaded.signatures:
    raise UserError(f"{path} is a SavedModel without a serving_default signature: pass the "
                    "saved_model/ a training run exported.")
  serve = loaded.signatures["serving_default"]

  def predict(images, loaded=loaded):  # `loaded` bound in: it keeps the variables alive
    del loaded
    return serve(image=tf.cast(images, tf.float32))["probabilities"]

  return predict
