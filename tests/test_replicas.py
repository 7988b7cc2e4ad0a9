"""Replica-count equivalence: N steps on 2 replicas of batch B/2 end with the same
weights as N steps on 1 replica of batch B, on the same examples in the same order.

This catches gradients that are not summed across replicas (each replica would
apply its own half and drift; replica 0's weights would be saved) or summed
twice, on whatever Keras and strategy this runs on. SGD sees a wrong gradient
scale; Adam, which is nearly scale-free, sees drifting replicas.
"""
import numpy as np
import pytest
import tensorflow as tf

from configs import cnn as cnn_config
from tpu_trainer import strategy as strategy_lib
from tpu_trainer import training

pytestmark = pytest.mark.core


def _final_weights(digits_dir, workdir, strategy, optimizer):
  config = cnn_config.get_config()
  config.update(data_dir=digits_dir, batch_size=64, steps=10, steps_per_execution=5,
                optimizer=optimizer, base_lr=0.05 if optimizer == "sgd" else 0.01,
                precision="float32", seed=3)
  config.input.deterministic = True
  training.run(config, str(workdir), strategy)
  import keras  # pylint: disable=g-import-not-at-top
  return keras.models.load_model(str(workdir / "model.keras")).get_weights()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_replicas_match_one(digits_dir, tmp_path, optimizer):
  one = _final_weights(digits_dir, tmp_path / "one", tf.distribute.get_strategy(),
                       optimizer)
  two_replicas = strategy_lib.get_strategy("cpu")
  assert two_replicas.num_replicas_in_sync == 2
  two = _final_weights(digits_dir, tmp_path / "two", two_replicas, optimizer)

  initial = _initial_weights()
  for w1, w2, w0 in zip(one, two, initial):
    moved = np.max(np.abs(w1 - w0))
    assert moved > 1e-3  # training did change the weights
    # Far below what a missing or doubled sum gives (the size of the update itself).
    np.testing.assert_allclose(w2, w1, rtol=0, atol=max(1e-5, 1e-3 * moved))


def _initial_weights():
  import keras  # pylint: disable=g-import-not-at-top
  from tpu_trainer.models import build_model  # pylint: disable=g-import-not-at-top
  config = cnn_config.get_config()
  keras.mixed_precision.set_global_policy("float32")
  keras.utils.set_random_seed(3)
  return build_model(config, (8, 8, 1), 10).get_weights()
