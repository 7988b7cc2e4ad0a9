"""Every recipe in configs/ loads, validates, and names a model that exists."""
import glob
import importlib.util
import os

import pytest

from conftest import REPO
from tpu_trainer import config as config_lib
from tpu_trainer.models import BUILDERS

CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith("__init__.py"))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_recipe_and_its_smoke_variant(path):
  module = _load(path)
  full, smoke = module.get_config(), module.get_config("smoke")
  for config in (full, smoke):
    config_lib.validate(config)
    assert config.model in BUILDERS
    assert set(config.keys()) == set(config_lib.default_config().keys())  # same flat keys
  assert 0 < smoke.steps <= 4 and smoke.batch_size <= 32
  assert smoke.weights == "none"  # smoke runs never download
  with pytest.raises(ValueError, match="this recipe knows :smoke"):
    module.get_config("smok")  # never the full recipe, silently


def test_every_model_has_a_recipe():
  models = {_load(p).get_config().model for p in CONFIGS}
  assert models == set(BUILDERS)


def test_saved_config_round_trips(tmp_path):
  config = config_lib.default_config()
  config.model = "conv_bn"
  path = str(tmp_path / "config.json")
  config_lib.save(config, path)
  assert config_lib.load_if_exists(path).to_dict() == config.to_dict()
  assert config_lib.load_if_exists(str(tmp_path / "none.json")) is None


@pytest.mark.parametrize("key, value", [("base_lr", "nan"), ("weight_decay", "inf"),
                                        ("warmup_epochs", "nan"), ("label_smoothing", "nan"),
                                        ("momentum", "-inf")])
def test_a_nan_or_infinite_setting_is_one_line_before_any_work(key, value, tmp_path):
  """--config.base_lr=nan used to train, then end as "diverged"."""
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  result = run_cli("train", "--config=configs/mlp.py", f"--workdir={tmp_path / 'w'}",
                   f"--config.{key}={value}", "--config.data_dir=/nonexistent")
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert errors == [f"error: config.{key}={float(value)} must be a finite number."]
  assert not (tmp_path / "w").exists()
