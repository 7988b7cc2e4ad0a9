"""Every model family builds, takes uint8 images, and trains a few steps in
each precision that runs on CPU (mixed_float16 is for GPUs)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tpu_trainer.config import default_config
from tpu_trainer.models import BUILDERS
from tpu_trainer.models import build_model
from tpu_trainer.optimizer import make_optimizer

SHAPES = {"mobilenet_v2": (32, 32, 3), "resnet50": (32, 32, 1)}


@pytest.fixture(autouse=True)
def restore_policy():
  yield
  keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_model_trains_in_precision(name, precision):
  keras.mixed_precision.set_global_policy(precision)
  config = default_config()
  config.model = name
  shape = SHAPES.get(name, (12, 12, 1))
  model = build_model(config, shape, 5)
  assert model.inputs[0].dtype == "float32"  # uint8 or float pixels, 0-255 or 0-1
  assert model.outputs[0].dtype == "float32"  # the head stays float32
  optimizer = make_optimizer(config, 1e-3, precision)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(0, 256, (4,) + shape, np.uint8))
  labels = tf.one_hot(rng.integers(0, 5, 4), 5)
  loss_fn = keras.losses.CategoricalCrossentropy()
  before = [v.numpy().copy() for v in model.trainable_variables]
  losses = []
  for _ in range(3):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    losses.append(float(loss))
  assert all(np.isfinite(losses))
  changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
  assert all(changed)
  probs = model(images, training=False).numpy()
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-3)
  # x / 255 is the same image: the same answer (to the precision's rounding).
  scaled = model(tf.cast(images, tf.float32) / 255, training=False).numpy()
  np.testing.assert_allclose(scaled, probs, atol=2e-2 if precision != "float32" else 1e-5)


def test_conv_bn_pooling_choice():
  config = default_config()
  config.model = "conv_bn"
  config.pooling = "avg"
  model = build_model(config, (16, 16, 1), 3)
  assert any(isinstance(l, keras.layers.AveragePooling2D) for l in model.layers)
  config.pooling = "median"
  with pytest.raises(ValueError, match="pooling"):
    build_model(config, (16, 16, 1), 3)


def test_mobilenet_pretrained_base_is_frozen_but_top_layers_fine_tune(tmp_path):
  # A weights file stands in for the ImageNet download (same code path:
  # keras.applications loads a path or "imagenet" the same way).
  weights = str(tmp_path / "base.weights.h5")
  keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None,
                                 pooling="avg").save_weights(weights)
  config = default_config()
  config.model = "mobilenet_v2"
  config.weights = weights
  frozen = build_model(config, (32, 32, 3), 3)
  head_only = {v.path for v in frozen.trainable_variables}
  assert head_only and all("probabilities" in p for p in head_only)
  config.fine_tune_layers = 10
  tuned = build_model(config, (32, 32, 3), 3)
  base = next(l for l in tuned.layers if isinstance(l, keras.Model))
  assert [l.trainable for l in base.layers[-10:]] == [True] * 10
  assert not any(l.trainable and l.weights for l in base.layers[:-10])
  assert len(tuned.trainable_variables) > len(frozen.trainable_variables)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_bases_trained_from_scratch_use_a_fast_batch_norm_momentum(name):
  config = default_config()
  config.model, config.weights = name, "none"
  model = build_model(config, (32, 32, 3), 5)
  momenta = {l.momentum for l in model._flatten_layers()  # pylint: disable=protected-access
             if isinstance(l, keras.layers.BatchNormalization)}
  assert momenta == {0.9}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_model_saves_loads_and_serves_the_same_answers(name, tmp_path):
  """keras-hub's per-model harness, the rest of it: a .keras round trip and the
  exported serving signature give the built model's probabilities."""
  from tpu_trainer import export  # pylint: disable=g-import-not-at-top
  config = default_config()
  config.model = name
  shape = SHAPES.get(name, (12, 12, 1))
  model = build_model(config, shape, 5)
  images = np.random.default_rng(1).integers(0, 256, (3,) + shape, np.uint8)
  expected = model(images, training=False).numpy()
  model.save(tmp_path / "m.keras")
  loaded = keras.models.load_model(tmp_path / "m.keras")
  np.testing.assert_allclose(loaded(images, training=False).numpy(), expected, atol=1e-5)
  export.save_serving_model(loaded, list("abcde"), str(tmp_path / "served"))
  serve = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"]
  out = serve(image=tf.constant(images, tf.float32))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
  assert [n.decode() for n in out["class_name"].numpy()] == [
      "abcde"[i] for i in expected.argmax(-1)]
