"""The batch and learning-rate rule: values chosen for small and large datasets,
explicit settings obeyed, reasons logged and saved."""
import json
import logging

import pytest
import tensorflow as tf

from configs import cnn as cnn_config
from configs import conv_bn as conv_bn_config
from configs import mlp as mlp_config
from tpu_trainer import scaling
from tpu_trainer import training


@pytest.mark.parametrize("examples,replicas,expected", [
    (1_437, 1, 32),        # digits: the seed tutorials' batch, 44 steps per epoch
    (1_437, 8, 32),        # a v3-8's 8 replicas still divide it
    (7_000, 1, 32),
    (60_000, 1, 256),      # Fashion-MNIST: 234 steps per epoch
    (60_000, 3, 258),      # rounded up to a multiple of the replicas
    (1_281_167, 32, 1024), # ImageNet: capped at max_batch_size
])
def test_auto_batch_size(examples, replicas, expected):
  assert scaling.auto_batch_size(examples, replicas, 1024, 200) == expected


def test_adam_scales_by_the_square_root_sgd_linearly():
  adam = cnn_config.get_config()
  assert scaling.peak_learning_rate(adam, 32) == pytest.approx(1e-3)
  assert scaling.peak_learning_rate(adam, 128) == pytest.approx(2e-3)
  sgd = conv_bn_config.get_config()
  assert scaling.peak_learning_rate(sgd, 1024) == pytest.approx(0.4)
  assert scaling.peak_learning_rate(sgd, 32) == pytest.approx(0.0125)
  adam.lr_scaling = "none"
  assert scaling.peak_learning_rate(adam, 1024) == pytest.approx(1e-3)
  adam.lr_scaling = "linear"
  assert scaling.peak_learning_rate(adam, 64) == pytest.approx(2e-3)


def test_explicit_batch_is_obeyed_and_reasons_are_given(caplog):
  config = mlp_config.get_config()
  caplog.set_level(logging.INFO)
  batch, peak, reasons = scaling.resolve(config, 60_000, 2)
  assert (batch, peak) == (256, pytest.approx(1e-3 * 8 ** 0.5))
  assert "auto" in reasons["batch_size"] and "200 steps per epoch" in reasons["batch_size"]
  assert "square root" in reasons["learning_rate"]
  config.batch_size = 96
  batch, _, reasons = scaling.resolve(config, 60_000, 2)
  assert batch == 96 and reasons["batch_size"] == "as given (config.batch_size)"


def test_a_run_saves_what_the_defaults_decided(digits_dir, tmp_path):
  config = mlp_config.get_config()
  config.update(data_dir=digits_dir, epochs=1)
  workdir = tmp_path / "w"
  metrics = training.run(config, str(workdir), tf.distribute.get_strategy())
  with open(workdir / "config.json") as f:
    saved = json.load(f)
  assert saved["batch_size"] == 32 and saved["peak_learning_rate"] == pytest.approx(1e-3)
  assert "auto" in saved["decisions"]["batch_size"]
  assert "Only 44 optimizer steps" in saved["decisions"]["steps"]  # warned: too few
  assert metrics["examples_per_second"] > 0


def test_a_run_too_short_to_time_still_reports_a_rate(digits_dir, tmp_path, caplog):
  config = mlp_config.get_config()
  config.update(data_dir=digits_dir, steps=3, steps_per_execution=5)
  metrics = training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())
  assert metrics["examples_per_second"] > 0
  assert metrics["examples_per_second_includes_compilation"] is True
  with open(tmp_path / "w" / "metrics.json") as f:
    assert json.load(f)["examples_per_second"] == metrics["examples_per_second"]
