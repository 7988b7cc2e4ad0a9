"""Training configs: defaults, validation and the resolved copy saved in the workdir.

Configs are Python files in configs/ with get_config(arg) -> ConfigDict (the
big_vision way). Every recipe starts from default_config() so all of them are
driven by the same flat keys.
"""
import json

import ml_collections
import tensorflow as tf

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "tpu", "gpu", "cpu", "multiworker")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data: everything about shapes and sizes comes from dataset_info.json.
  c.data_dir = ""
  c.train_split = "train"
  c.eval_split = "test"
  c.cache = True                 # keep records in memory when the split fits
  c.cache_max_bytes = 2 << 30    # ... which it does below this many bytes per host
  c.shuffle_buffer = 10_000
  c.augment = False              # random flip + crop (photos, not digits)
  c.deterministic = False        # True: reproducible order, a little slower
  c.data_threads = 0             # > 0: a private tf.data thread pool of this size
  # Model.
  c.model = "cnn"
  c.dropout = 0.0
  c.pooling = "max"
  c.weights = "none"             # mobilenet_v2 / resnet50: "imagenet" or "none"
  c.fine_tune_layers = 0         # mobilenet_v2: unfreeze this many top layers
  # Optimisation. Learning rate = base_lr * batch_size / 256, linear warmup,
  # then cosine decay to 0 (or constant).
  c.batch_size = 256             # global, over all replicas
  c.epochs = 10
  c.steps = 0                    # > 0 overrides epochs
  c.optimizer = "adam"           # adam | sgd | adamw
  c.base_lr = 1e-3
  c.momentum = 0.9
  c.weight_decay = 0.0
  c.warmup_epochs = 0.0
  c.lr_schedule = "cosine"       # cosine | constant
  c.label_smoothing = 0.0
  c.early_stopping_patience = 0  # evaluations without improvement; 0 = off
  # Execution.
  c.strategy = "auto"
  c.tpu = ""                     # TPU name, or "local" on a TPU VM
  c.tpu_zone = ""
  c.tpu_project = ""
  c.cpu_devices = 0              # > 0: that many logical CPU replicas
  c.precision = "auto"
  c.steps_per_execution = 20     # training steps per tf.function call
  c.log_every_steps = 0          # 0: once per epoch (rounded to executions)
  c.checkpoint_every_steps = 0   # 0: once per epoch
  c.eval_every_epochs = 1
  c.keep_checkpoints = 3
  c.profile_steps = ""           # "START,END": record a TensorBoard profile
  c.seed = 0
  return c


def shrink_for_smoke(config: ml_collections.ConfigDict, batch_size: int = 32,
                     steps: int = 4, steps_per_execution: int = 2) -> None:
  """The `:smoke` variant of a recipe: a few tiny steps, for tests and dry runs."""
  config.batch_size = batch_size
  config.steps = steps
  config.steps_per_execution = steps_per_execution


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad key and what to do."""
  if config.precision not in PRECISIONS:
    raise ValueError(f"config.precision={config.precision!r} is not one of {PRECISIONS}.")
  if config.strategy not in STRATEGIES:
    raise ValueError(f"config.strategy={config.strategy!r} is not one of {STRATEGIES}.")
  for key in ("batch_size", "steps_per_execution"):
    if config[key] < 1:
      raise ValueError(f"config.{key}={config[key]} must be at least 1.")
  if config.epochs < 1 and config.steps < 1:
    raise ValueError("Set config.epochs or config.steps to at least 1.")
  if config.profile_steps:
    parse_profile_steps(config.profile_steps)


def parse_profile_steps(value: str) -> tuple[int, int]:
  try:
    start, end = (int(v) for v in value.split(","))
  except ValueError:
    raise ValueError(f"config.profile_steps={value!r} must be 'START,END', e.g. '10,15'.") from None
  if not 0 <= start < end:
    raise ValueError(f"config.profile_steps={value!r}: need 0 <= START < END.")
  return start, end


def save(config: ml_collections.ConfigDict, path: str) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def load(path: str) -> ml_collections.ConfigDict:
  with tf.io.gfile.GFile(path) as f:
    return ml_collections.ConfigDict(json.load(f))
