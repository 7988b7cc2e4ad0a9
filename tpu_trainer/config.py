"""Training configs: defaults, validation and the resolved copy saved in the workdir.

Configs are Python files in configs/ with get_config(arg) -> ConfigDict (the
big_vision way). Every recipe starts from default_config() so all of them are
driven by the same flat keys.
"""
import json
import math

import ml_collections

from tpu_trainer import storage
from tpu_trainer.errors import UserError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "tpu", "gpu", "cpu", "multiworker")
BACKENDS = ("tensorflow", "jax")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data: shapes, classes and sizes come from the dataset's TFDS metadata.
  c.data_dir = ""                # a TFDS dataset directory, local or gs://
  c.input = ml_collections.ConfigDict()  # how the pipeline reads it (data/pipeline.py)
  c.input.train_split = "train"  # the split to train on
  c.input.eval_split = "test"    # the split evaluated every eval_every_epochs and at the end
  c.input.cache = True           # keep records in memory when the split fits
  c.input.cache_max_bytes = 2 << 30  # ... which it does below this many bytes per host
  c.input.shuffle_buffer = 10_000  # examples; a cached split is shuffled whole
  c.input.augment = False        # random flip + crop (photos, not digits)
  c.input.deterministic = False  # True: reproducible order, a little slower
  c.input.threads = 0            # > 0: a private tf.data thread pool of this size
  c.input.service = ""           # grpc://HOST:PORT: train input from tf.data service workers
  c.input.service_job = ""       # a job name trainers share (default: one job per host)
  # Model.
  # Any callable too (config.model = build, a def in the config file): models/custom.py.
  c.model = ml_collections.FieldReference("cnn", field_type=object)  # mlp, cnn, cnn_deep, conv_bn, mobilenet_v2, resnet50; or yours: PATH.py:FUNCTION, package.module:FUNCTION, applications:NAME (keras.applications)
  c.dropout = 0.0                # dropout rate before the classifier
  c.pooling = "max"              # conv_bn: max | avg
  c.weights = "none"             # mobilenet_v2 / resnet50 / applications:NAME: "imagenet", "none" or a file
  c.fine_tune_layers = 0         # mobilenet_v2: unfreeze this many top layers
  # Optimisation (see tpu_trainer/scaling.py). Peak learning rate = base_lr at
  # base_batch_size, scaled to the batch (sqrt for Adam, linear for SGD), linear
  # warmup, then constant (or cosine decay to 0).
  c.batch_size = 0               # global, over all replicas; 0 = chosen for the dataset
  c.max_batch_size = 1024        # batch_size=0: at most this ...
  c.min_steps_per_epoch = 200    # ... and at least this many steps per epoch
  c.epochs = 10                  # passes over the train split
  c.steps = 0                    # > 0 overrides epochs
  c.optimizer = "adam"           # sgd: Nesterov momentum; adamw: decoupled weight decay
  c.base_lr = 1e-3               # the learning rate at base_batch_size
  c.base_batch_size = 32         # the batch base_lr is given for
  c.lr_scaling = "auto"          # of base_lr to the batch; auto: sqrt for adam(w), linear for sgd
  c.momentum = 0.9               # sgd (Nesterov)
  c.weight_decay = 0.0           # adamw / sgd / adam decoupled weight decay
  c.warmup_epochs = 0.0          # linear warmup from 0 to the peak learning rate
  # constant: the seed tutorials' Adam; at 10 epochs cosine's half-as-large mean
  # rate costs accuracy (measured: benchmarks/accuracy.py). SGD recipes use cosine.
  c.lr_schedule = "constant"     # after warmup: constant, or cosine decay to 0
  c.label_smoothing = 0.0        # of the one-hot targets
  c.early_stopping_patience = 0  # evaluations without improvement; 0 = off
  c.init_from = ""               # a model.keras whose weights start the run (same model and data)
  # Execution.
  c.backend = "tensorflow"       # Keras's backend; jax for every TPU (TPU7x too)
  c.strategy = "auto"            # auto: TPU > GPUs > GPU > CPU; multiworker: TF_CONFIG
  c.tpu = ""                     # TPU name, or "local" on a TPU VM
  c.tpu_zone = ""                # for a named TPU, and the doctor's bucket-region check
  c.tpu_project = ""             # for a named TPU in another project
  c.cpu_devices = 0              # > 0: that many logical CPU replicas
  c.precision = "auto"           # auto: the platform's (bf16 on TPU; see the log)
  c.steps_per_execution = 20     # training steps per tf.function call
  c.log_every_steps = 0          # 0: once per epoch (rounded to executions)
  c.checkpoint_every_steps = 0   # 0: once per epoch, at most every checkpoint_min_secs
  c.checkpoint_min_secs = 60.0   # between per-epoch checkpoints (the end and SIGTERM always save)
  c.eval_every_epochs = 1        # evaluate the eval split this often
  c.keep_checkpoints = 3         # the newest checkpoints kept
  c.storage_timeout_secs = 300.0 # a wait (a write to the workdir, a step for its input or the other processes) not done by then ends the run (exit 75)
  c.profile_steps = ""           # "START,END": record a TensorBoard profile
  c.seed = 0                     # initial weights and the input order
  return c


def check_variant(arg, recipe: str, variants=("smoke",)) -> None:
  """A recipe's --config=FILE:ARG must be one it knows: an unknown one would
  silently run the full recipe."""
  if arg is not None and arg not in variants:
    raise UserError(f"--config={recipe}:{arg}: this recipe knows "
                    f"{', '.join(':' + v for v in variants)} (or none).")


def shrink_for_smoke(config: ml_collections.ConfigDict, batch_size: int = 32,
                     steps: int = 4, steps_per_execution: int = 2) -> None:
  """The `:smoke` variant of a recipe: a few tiny steps, for tests and dry runs."""
  config.batch_size = batch_size
  config.steps = steps
  config.steps_per_execution = steps_per_execution


def choices() -> dict:
  """The keys that take one of a set, with the set: defined where the code that
  acts on them is (validation and --show_config read them here)."""
  from tpu_trainer import optimizer  # pylint: disable=g-import-not-at-top
  from tpu_trainer import scaling  # pylint: disable=g-import-not-at-top
  return {"optimizer": tuple(optimizer.OPTIMIZERS), "lr_schedule": tuple(optimizer.SCHEDULES),
          "lr_scaling": scaling.SCALINGS, "precision": PRECISIONS, "strategy": STRATEGIES,
          "backend": BACKENDS}


def flat(config, prefix: str = "") -> dict:
  """{key: value} of a config (a ConfigDict or its to_dict()), a section's keys
  as input.cache."""
  out = {}
  for key, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad key and what to do."""
  for key, value in flat(config).items():
    # NaN passes every comparison below (a NaN learning rate would train, then
    # end as "diverged"); an infinite one as well.
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f"config.{key}={value} must be a finite number.")
  for key in ("steps_per_execution", "base_batch_size", "max_batch_size",
              "min_steps_per_epoch"):
    if config[key] < 1:
      raise UserError(f"config.{key}={config[key]} must be at least 1.")
  if config.batch_size < 0:
    raise UserError(f"config.batch_size={config.batch_size} must be at least 1, or 0 to "
                    "choose one for the dataset.")
  for key, allowed in choices().items():
    if config[key] not in allowed:
      raise UserError(f"config.{key}={config[key]!r} is not one of {', '.join(allowed)}.")
  if config.base_lr <= 0:
    raise UserError(f"config.base_lr={config.base_lr} must be positive.")
  ranges = {"momentum": (0, 1), "label_smoothing": (0, 1), "dropout": (0, 1)}
  for key, (low, high) in ranges.items():
    if not low <= config[key] < high:
      raise UserError(f"config.{key}={config[key]} must be in [{low}, {high}).")
  for key in ("weight_decay", "warmup_epochs", "epochs", "steps", "cpu_devices",
              "early_stopping_patience", "log_every_steps", "checkpoint_every_steps",
              "checkpoint_min_secs", "input.threads", "input.cache_max_bytes"):
    if config[key] < 0:
      raise UserError(f"config.{key}={config[key]} must not be negative.")
  if config.input.shuffle_buffer < 1:
    raise UserError(f"config.input.shuffle_buffer={config.input.shuffle_buffer} must be at "
                    "least 1.")
  if config.keep_checkpoints < 1:
    raise UserError(f"config.keep_checkpoints={config.keep_checkpoints} must be at least 1.")
  if config.storage_timeout_secs <= 0:
    raise UserError(f"config.storage_timeout_secs={config.storage_timeout_secs} must be "
                    "positive.")
  if config.eval_every_epochs <= 0:
    raise UserError(f"config.eval_every_epochs={config.eval_every_epochs} must be positive.")
  if config.epochs < 1 and config.steps < 1:
    raise UserError("Set config.epochs or config.steps to at least 1.")
  if config.profile_steps:
    parse_profile_steps(config.profile_steps)
  if config.input.service:
    from tpu_trainer.data import service  # pylint: disable=g-import-not-at-top
    service.parse_address(config.input.service)


def parse_profile_steps(value: str) -> tuple[int, int]:
  try:
    start, end = (int(v) for v in value.split(","))
  except ValueError:
    raise UserError(f"config.profile_steps={value!r} must be 'START,END', e.g. '10,15'.") from None
  if not 0 <= start < end:
    raise UserError(f"config.profile_steps={value!r}: need 0 <= START < END.")
  return start, end


def meanings() -> dict:
  """{key: what it means}: the comment beside each key in default_config, and the
  choices of the keys that take one of a set (--show_config and the docs' config
  reference read them here)."""
  import inspect  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  meaning = dict(re.findall(r"^  c\.([\w.]+) = .*?#\s*(.+)$",
                            inspect.getsource(default_config), re.MULTILINE))
  for key, allowed in choices().items():
    meaning[key] = f"{' | '.join(allowed)}: {meaning.get(key, '')}".rstrip(" :")
  return meaning


def describe(config: ml_collections.ConfigDict) -> str:
  """Every key with its value here and its meaning."""
  meaning, leaves = meanings(), flat(config)
  width = max(len(k) + len(repr(v)) for k, v in leaves.items()) + 3
  return "\n".join(f"{f'{k} = {v!r}':<{width}}  # {meaning.get(k, '')}".rstrip(" #:")
                    for k, v in leaves.items())


def save(config: ml_collections.ConfigDict, path: str) -> None:
  storage.write_text(path, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def load_if_exists(path: str) -> ml_collections.ConfigDict | None:
  """A saved config.json, or None when there is none."""
  text = storage.read_text_if_exists(path)
  return None if text is None else ml_collections.ConfigDict(json.loads(text))
