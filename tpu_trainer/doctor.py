"""Preflight checks before spending TPU money: data, manifest, shards, region,
batch, model compilation, input rate. Each failing check says what to change."""
import dataclasses
import math
import os
import time

import keras
import ml_collections
import tensorflow as tf

from tpu_trainer import loop
from tpu_trainer import memory
from tpu_trainer import metrics
from tpu_trainer import optimizer as optimizer_lib
from tpu_trainer import scaling
from tpu_trainer import storage
from tpu_trainer import tpus
from tpu_trainer import versions
from tpu_trainer.data import manifest
from tpu_trainer.errors import MissingError
from tpu_trainer.errors import UserError
from tpu_trainer.models import build_model
from tpu_trainer.models import check_model_name
from tpu_trainer.models import custom

_ASSUMED_UTILISATION = 0.4
_MIN_STEP_SECONDS = 1e-3  # per-step overhead: small models do not reach peak FLOPs


@dataclasses.dataclass
class Check:
  name: str
  status: str  # OK | WARN | FAIL | SKIP
  detail: str


Slice = tpus.Slice
parse_accelerator = tpus.parse_accelerator


def _data_checks(config, tpu_slice, client):
  """Reachability, manifest vs shards, shard count and sizes, bucket region."""
  checks = []
  data_dir = config.data_dir
  start = time.perf_counter()
  try:
    files = storage.list_files(data_dir, client, fail_fast=True)
    if manifest.INFO_FILE not in files:
      raise MissingError(f"no {manifest.INFO_FILE}")
    dataset = manifest.read(data_dir, client)
  except Exception as e:  # unreachable, no credentials, missing: all the same to the user
    checks.append(Check("data reachable", "FAIL",
                        f"{data_dir}: {type(e).__name__}: {str(e).splitlines()[0][:200]}. "
                        "Check the path, `gcloud auth application-default login`, and "
                        "that tpu-trainer-convert (or TFDS) wrote there."))
    return checks, None
  checks.append(Check("data reachable", "OK", f"{data_dir} listed in "
                      f"{time.perf_counter() - start:.1f} s"))

  problems = []
  try:
    manifest.check_shards(dataset, list(dataset.splits), client,
                          sizes={name: size for name, (size, _) in files.items()})
  except ValueError as e:
    problems.append(str(e))
  if dataset.ours is not None:
    for name, shard in dataset.ours["shards"].items():
      if name in files and files[name][1] != shard["crc32c"]:
        problems.append(f"{name} crc32c {files[name][1]} != metadata {shard['crc32c']}")
  shard_count = sum(len(s.files) for s in dataset.splits.values())
  if problems:
    checks.append(Check("metadata matches shards", "FAIL",
                        f"{'; '.join(problems)[:600]}. Convert again."))
  else:
    checks.append(Check("metadata matches shards", "OK", f"{shard_count} shards, "
                        + ("sizes and crc32c as recorded" if dataset.ours is not None else
                           "sizes as TFDS recorded (no checksums: not converted here)")))

  split = config.input.train_split
  train_files = dataset.splits[split].files if split in dataset.splits else []
  if len(train_files) < tpu_slice.hosts:
    checks.append(Check("shards >= hosts", "FAIL",
                        f"{len(train_files)} {split} shards for {tpu_slice.hosts} "
                        f"hosts: convert with --min_shards={tpu_slice.hosts * 4}."))
  else:
    checks.append(Check("shards >= hosts", "OK", f"{len(train_files)} {split} "
                        f"shards for {tpu_slice.hosts} host(s)"))
  train_sizes = [files[os.path.basename(f)][0] for f in train_files
                 if os.path.basename(f) in files]
  if train_sizes:
    mean, total = sum(train_sizes) / len(train_sizes), sum(train_sizes)
    if max(train_sizes) > 1 << 30:
      checks.append(Check("shard sizes", "WARN", f"largest shard {max(train_sizes) / 2**20:.0f} "
                          "MiB: use --shard_bytes=200000000 for 10-200 MiB shards."))
    elif mean < 10 << 20 and total > 16 * (10 << 20):
      checks.append(Check("shard sizes", "WARN", f"mean shard {mean / 2**20:.1f} MiB over "
                          f"{len(train_sizes)} files: fewer, larger shards read faster "
                          "(--shard_bytes=100000000)."))
    else:
      checks.append(Check("shard sizes", "OK", f"mean {mean / 2**20:.2f} MiB, total "
                          f"{total / 2**20:.1f} MiB"))

  if storage.is_gcs(data_dir) and config.tpu_zone:
    region = config.tpu_zone.rsplit("-", 1)[0].lower()
    try:
      bucket = (client or storage.gcs_client()).get_bucket(
          storage.split_gcs(data_dir)[0], timeout=15, retry=None)
      checks.append(region_check((bucket.location or "").lower(), region))
    except Exception as e:  # pylint: disable=broad-except
      checks.append(Check("bucket region", "WARN", f"could not read the bucket's location "
                          f"({type(e).__name__}); keep it in {region}."))
  else:
    checks.append(Check("bucket region", "SKIP", "local data_dir or no config.tpu_zone"))
  return checks, dataset


def region_check(location: str, region: str) -> Check:
  """A bucket's location (lower case, as Cloud Storage reports it) vs the TPU's region."""
  if location == region:
    return Check("bucket region", "OK", f"bucket in {location}, TPU in {region}")
  if location and region.startswith(location + "-") or location in ("us", "eu", "asia"):
    return Check("bucket region", "WARN", f"multi-region bucket ({location}) for a TPU in "
                 f"{region}: a {region} bucket is faster and cheaper.")
  return Check("bucket region", "FAIL", f"bucket in {location}, TPU in {region}: copy the data "
               f"to a bucket in {region} (cross-region reads cost money and speed).")


def _batch_check(config, tpu_slice):
  batch, replicas = config.batch_size, tpu_slice.replicas
  if batch % replicas:
    return Check("batch per replica", "FAIL", f"batch_size={batch} does not divide over "
                 f"{replicas} replicas of {tpu_slice.accelerator}: use a multiple of "
                 f"{replicas * 8}.")
  per_replica = batch // replicas
  if per_replica % 8:
    return Check("batch per replica", "FAIL", f"{per_replica} per replica is not a multiple "
                 f"of 8 (TPU tiles): use batch_size={max(8, per_replica // 8 * 8) * replicas}.")
  if per_replica % 128:
    return Check("batch per replica", "WARN", f"{per_replica} per replica: a multiple of 128 "
                 f"fills the MXU best (batch_size={replicas * 128 * max(1, per_replica // 128)}).")
  return Check("batch per replica", "OK", f"{per_replica} per replica over {replicas} replicas")


def forward_flops(model, input_shape) -> float:
  """FLOPs of one forward pass on one example (TF's graph profiler)."""
  from tensorflow.python.profiler import model_analyzer  # pylint: disable=g-import-not-at-top
  from tensorflow.python.profiler import option_builder  # pylint: disable=g-import-not-at-top
  fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      tf.TensorSpec([1] + list(input_shape), tf.float32))
  from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top
  options = option_builder.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  with deprecation.silence():  # TF's own profiler calls its own deprecated helpers
    return float(model_analyzer.profile(fn.graph, options=options).total_float_ops)


def _jax_step(config, model, optimizer, shape, num_classes: int, per_replica: int,
              from_logits: bool):
  """(loss, diverged, forward FLOPs per example) from one step of the JAX backend's
  own execution (backends/jax.py), compiled by XLA."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tpu_trainer.backends import jax as jax_backend  # pylint: disable=g-import-not-at-top
  execution = jax.jit(jax_backend.execution_fn(model, optimizer, config.batch_size,
                                               config.label_smoothing, num_classes,
                                               from_logits))
  state = jax.tree_util.tree_map(lambda v: v.value, (
      model.trainable_variables, model.non_trainable_variables, optimizer.variables))
  _, sums, agreed = execution(state, jnp.zeros((1, per_replica) + tuple(shape), jnp.uint8),
                              jnp.zeros((1, per_replica), jnp.int32), 1, jnp.zeros((1, 3)))
  forward = jax.jit(lambda t, n, x: model.stateless_call(t, n, x)[0]).lower(
      state[0], state[1], jnp.zeros((1,) + tuple(shape), jnp.float32)).compile().cost_analysis()
  forward = forward[0] if isinstance(forward, list) else forward
  return (float(sums[0] / sums[2]), bool(agreed[0] or agreed[1]),
          float(forward.get("flops", 0.0)))


def memory_check(model, config, per_replica: int, tpu_slice) -> Check:
  """The training step's memory on one device (memory.py), against the
  generation's HBM per device."""
  need = memory.step_memory(model, config.optimizer, config.precision, per_replica)
  hbm = tpu_slice.generation.hbm_bytes_per_device
  detail = (f"{need.describe()} of {tpu_slice.generation.name}'s {memory.gib(hbm)} HBM per "
            "device")
  if need.total > hbm:
    return Check("memory per device", "WARN", detail + ": it will not fit; lower "
                 "config.batch_size, use a smaller model, or a slice with more HBM per "
                 "device")
  if need.total > 0.8 * hbm:
    return Check("memory per device", "WARN", detail + ": close to the limit (an estimate)")
  return Check("memory per device", "OK", detail)


def _model_checks(config, dataset, tpu_slice):
  """XLA-compiles, in bf16 with static shapes, the very step a training run uses
  (loop.train_step, or the JAX backend's execution), on one replica's batch."""
  shape, num_classes = dataset.image_shape, dataset.num_classes
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = build_model(config, shape, num_classes)
    from_logits = custom.output_kind(model, shape) == "logits"
    optimizer = optimizer_lib.make_optimizer(config, config.base_lr, "mixed_bfloat16")
    optimizer.build(model.trainable_variables)
    per_replica = max(1, config.batch_size // tpu_slice.replicas)
    start = time.perf_counter()
    if keras.backend.backend() == "jax":
      loss, diverged, flops = _jax_step(config, model, optimizer, shape, num_classes,
                                        per_replica, from_logits)
    else:
      strategy = tf.distribute.get_strategy()
      totals, signals = metrics.Totals(strategy, "doctor"), loop.Signals(strategy)
      step = tf.function(loop.train_step(model, optimizer, config.batch_size,
                                         config.label_smoothing, num_classes, totals, signals,
                                         from_logits), jit_compile=True)
      step(tf.zeros([per_replica] + list(shape), tf.uint8), tf.zeros([per_replica], tf.int32))
      agreed = signals.read(1)
      loss, diverged = totals.result()["loss"], agreed.nonfinite or agreed.exploded_share > 0
      flops = forward_flops(model, shape)
    if not math.isfinite(loss) or diverged:
      raise UserError(f"loss is {loss} on zero images: diverged at the first step")
  except Exception as e:  # pylint: disable=broad-except
    return [Check("model compiles (bf16, XLA)", "FAIL",
                  f"{config.model}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")], None
  finally:
    keras.mixed_precision.set_global_policy(policy)
  return [Check("model compiles (bf16, XLA)", "OK",
                f"{config.model}, {model.count_params():,} parameters, the training step "
                f"at static batch {per_replica}, compiled in "
                f"{time.perf_counter() - start:.1f} s"),
          memory_check(model, config, per_replica, tpu_slice)], flops


def _input_check(config, tpu_slice, forward, input_seconds):
  # Training costs ~3x the forward FLOPs.
  compute = 3 * forward * config.batch_size / (
      tpu_slice.generation.peak_bf16_tflops * 1e12 * _ASSUMED_UTILISATION * tpu_slice.chips)
  step_seconds = max(compute, _MIN_STEP_SECONDS)
  need = config.batch_size / step_seconds / tpu_slice.hosts
  if storage.is_gcs(config.data_dir):
    return Check("input rate vs step rate", "SKIP",
                 f"the TPU would consume ~{need:,.0f} examples/s per host; measure on the "
                 "TPU VM: tpu-trainer-benchmark input --config=...")
  from tpu_trainer import benchmark  # pylint: disable=g-import-not-at-top
  rates = benchmark.input_rates(config, input_seconds)
  # Every epoch of an uncached split reads the files; the steady rate is that of epochs 2+.
  have = rates["steady"]
  detail = (f"one host's pipeline here {have:,.0f} ex/s "
            f"({'cached; first pass ' + format(rates['first_pass'], ',.0f') if rates['cached'] else 'uncached'}); "
            f"{tpu_slice.accelerator} would consume "
            f"~{need:,.0f} ex/s per host ({step_seconds * 1e3:.1f} ms per step: "
            f"{forward / 1e6:.1f} MFLOP forward per example at {_ASSUMED_UTILISATION:.0%} of "
            f"peak bf16, at least {_MIN_STEP_SECONDS * 1e3:.0f} ms)")
  if have < need:
    worker = benchmark.service_worker_rate(config, input_seconds)
    return Check("input rate vs step rate", "WARN", detail + ": input-bound; use raw encoding "
                 "for small images, cache, or tf.data service: "
                 + benchmark.workers_needed(need * tpu_slice.hosts, worker))
  return Check("input rate vs step rate", "OK", detail)


def _service_check(address: str) -> Check:
  from tpu_trainer.data import service  # pylint: disable=g-import-not-at-top
  try:
    service.check_reachable(address, timeout_s=5.0)
  except ValueError as e:
    return Check("tf.data service reachable", "FAIL", str(e))
  return Check("tf.data service reachable", "OK",
               f"a dispatcher answers at {address} (its workers are not checked: a training "
               "run that waits on them says so)")


def backend_check(backend: str, tpu_slice: tpus.Slice) -> Check:
  """The support table's row for this accelerator and backend."""
  generation = tpu_slice.generation
  row = tpus.support(generation)
  if backend == "tensorflow" and generation.tensorflow == "none":
    return Check("backend", "FAIL", f"{row}: pass --config.backend=jax.")
  if backend == "tensorflow" and generation.tensorflow == "experimental":
    return Check("backend", "WARN", row)
  if backend == "jax" and not generation.jax_runtime:
    return Check("backend", "WARN", row)
  return Check("backend", "OK", f"{backend} on {generation.name}. {row}")


def _versions_check(found: dict) -> Check:
  message = versions.problem(found["tensorflow"], found["keras"])
  return Check("versions", "FAIL" if message else "OK", message or versions.describe(found))


def run_checks(config, accelerator: str = "v4-8", input_seconds: float = 3.0,
               client=None) -> list[Check]:
  tpu_slice = parse_accelerator(accelerator)
  checks = [_versions_check(versions.installed()), backend_check(config.backend, tpu_slice)]
  model_known = True
  try:
    check_model_name(config.model)
  except ValueError as e:
    model_known = False
    checks.append(Check("model known", "FAIL", str(e)))
  data_checks, dataset = _data_checks(config, tpu_slice, client)
  checks += data_checks
  if config.input.service:
    checks.append(_service_check(config.input.service))
    # What follows measures this host's own pipeline: waiting on a service
    # (perhaps without workers) would measure nothing, or hang.
    config = ml_collections.ConfigDict(config.to_dict())
    config.input.service = ""
  if not config.batch_size:  # chosen for the dataset and the slice, as training will
    examples = (dataset.splits[config.input.train_split].num_examples
                if dataset is not None and config.input.train_split in dataset.splits else 0)
    config = ml_collections.ConfigDict(config.to_dict())
    config.batch_size = (scaling.resolve(config, examples, tpu_slice.replicas)[0] if examples
                         else config.max_batch_size)
  checks.append(_batch_check(config, tpu_slice))
  if dataset is None or not model_known:
    checks.append(Check("model compiles (bf16, XLA)", "SKIP", "needs the data's manifest"))
    return checks
  model_checks, flops = _model_checks(config, dataset, tpu_slice)
  checks += model_checks
  if any(c.status == "FAIL" for c in data_checks):
    checks.append(Check("input rate vs step rate", "SKIP", "fix the data first"))
  elif flops:
    checks.append(_input_check(config, tpu_slice, flops, input_seconds))
  return checks


def format_table(checks: list[Check]) -> str:
  width = max(len(c.name) for c in checks)
  return "\n".join(f"{c.status:<4}  {c.name:<{width}}  {c.detail}" for c in checks)
