"""The Python API, for notebooks and scripts: the tools' library calls, with
their logs, resume, checkpoints and export.

  import tpu_trainer

  def build(input_shape, num_classes, config):   # models/custom.py: the contract
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    ...
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

  tpu_trainer.convert("digits", "/tmp/digits")
  metrics = tpu_trainer.train("cnn", workdir="/tmp/run", data_dir="/tmp/digits",
                              model=build, epochs=3)
  tpu_trainer.evaluate("/tmp/run")

Keras fixes its backend when first imported: train() selects config.backend
when Keras is not loaded yet; otherwise set KERAS_BACKEND before importing it.
Errors a user can fix raise tpu_trainer.UserError with the tools' one line.
"""
import importlib.util
import os

from tpu_trainer.errors import UserError


def load_config(config="cnn", **overrides):
  """A training config: a recipe name or file ("cnn", "configs/cnn.py:smoke",
  "my_config.py"), a ConfigDict or a dict of keys to change in the defaults;
  then `overrides` (model=build, epochs=3, input={"cache": False} or
  **{"input.cache": False})."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from tpu_trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  if isinstance(config, str):
    config = _config_file(config)
  elif isinstance(config, dict):
    defaults = config_lib.default_config()
    _update(defaults, config)
    config = defaults
  elif not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config={config!r}: pass a recipe name or file (e.g. 'cnn'), a "
                    "ConfigDict or a dict.")
  _update(config, overrides)
  return config


def _config_file(spec: str):
  from tpu_trainer import cli  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  found = path if os.path.isfile(path) else cli.packaged_recipe(path)
  if not found:
    raise UserError(f"config={spec!r}: no config file {path} here nor a shipped recipe of "
                    "that name (cnn, mlp, conv_bn, cnn_deep, mobilenet_v2, resnet50).")
  module_spec = importlib.util.spec_from_file_location(
      "tpu_trainer_config_" + os.path.splitext(os.path.basename(found))[0], found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _update(config, values: dict) -> None:
  for key, value in values.items():
    if isinstance(value, dict):
      for sub, sub_value in value.items():
        _update(config, {f"{key}.{sub}": sub_value})
      continue
    *sections, name = key.split(".")
    target = config
    for section in sections:
      target = target[section] if section in target else None
      if target is None:
        break
    if target is None or name not in target:
      raise UserError(f"No such config key {key!r}: see tpu-trainer-train --config=cnn "
                      "--show_config.")
    target[name] = value


def train(config="cnn", workdir: str = "", **overrides) -> dict:
  """Trains as tpu-trainer-train does; returns what metrics.json holds. Rerun the
  same call to resume (a finished run's metrics are returned as they are).
  config.model may be a Python function (built inside the strategy's scope)."""
  from tpu_trainer import backends  # pylint: disable=g-import-not-at-top
  from tpu_trainer import logs  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise UserError("workdir is required: where the run's checkpoints, logs and model go.")
  config = load_config(config, **overrides)
  backends.select(config.backend)
  logs.use_short_lines()
  from tpu_trainer import training  # pylint: disable=g-import-not-at-top
  return training.run(config, os.path.expanduser(workdir))


def evaluate(workdir: str, **options) -> dict:
  """tpu-trainer-eval: a run's exported model on a split (options: model_path,
  split, data_dir, batch_size, report)."""
  from tpu_trainer import logs  # pylint: disable=g-import-not-at-top
  logs.use_short_lines()
  from tpu_trainer import evaluation  # pylint: disable=g-import-not-at-top
  return evaluation.evaluate(os.path.expanduser(workdir), **options)


def convert(source: str, output_dir: str, **options):
  """tpu-trainer-convert: `source` as --source takes it (digits, folder:DIR,
  tfds:NAME, ...); options: image_size, test_fraction, seed, tfds_data_dir
  (reading) and encoding, num_shards, shard_bytes, min_shards, workers,
  jpeg_quality (writing). Returns the written dataset's metadata."""
  from tpu_trainer import logs  # pylint: disable=g-import-not-at-top
  logs.use_short_lines()
  from tpu_trainer.data import convert as convert_lib  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import sources  # pylint: disable=g-import-not-at-top
  load_keys = ("image_size", "test_fraction", "seed", "tfds_data_dir")
  load_args = {k: options[k] for k in load_keys if k in options}
  write_args = {k: v for k, v in options.items() if k not in load_keys or k == "seed"}
  return convert_lib.convert(sources.load(sources.expand(source), **load_args),
                             os.path.expanduser(output_dir), **write_args)
