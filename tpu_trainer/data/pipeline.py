"""tf.data input for training and evaluation, one pipeline per host.

Order (the TPU guide / Model Garden way): list files -> seeded file shuffle ->
shard per input pipeline -> interleave reads -> shuffle -> batch -> parse the
whole batch -> decode -> augment -> prefetch. A split whose share fits in memory
(input.cache) is read and decoded once into one tensor instead, and each epoch
is a seeded permutation of it gathered a batch at a time: no per-example work.
Shapes are static: TPUs need them.
Images stay uint8 to the model (4x less host-to-device traffic); the model
rescales them.
"""
import json
import math
import os
import zlib

from absl import logging
import tensorflow as tf

from tpu_trainer import memory
from tpu_trainer.data import position as position_lib
from tpu_trainer.data import records
from tpu_trainer.data import service
from tpu_trainer.data.manifest import Dataset
from tpu_trainer.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
# tf.data converts every function it is given with autograph: seconds of Python
# the first time in a process; ours have no Python control flow on tensors.
plain = tf.autograph.experimental.do_not_convert


def num_input_pipelines(strategy) -> int:
  """How many input pipelines distribute_datasets_from_function will make."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return strategy.extended.num_hosts
  resolver = getattr(strategy, "cluster_resolver", None)
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver:
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, [])) for job in ("chief", "worker")) or 1
  return 1


# What the input may hold in this host's memory: the rest is the model's, the
# runtime's and the other splits'.
MEMORY_SHARE = 0.5
THREADS_PER_CORE = 4  # more input threads than this only queue


def check_fits_host(dataset: Dataset, input_config) -> None:
  """Refuses input settings this machine cannot hold, in one line with the
  numbers, before any work: a thread pool of 100,000 or a shuffle buffer of
  a dataset's size grew past the memory with no message (then the kernel's kill)."""
  cores = os.cpu_count() or 1
  if input_config.threads > THREADS_PER_CORE * cores:
    raise UserError(f"config.input.threads={input_config.threads} is more than this machine "
                    f"can use: at most {THREADS_PER_CORE} per CPU core "
                    f"({THREADS_PER_CORE * cores} here); 0 lets tf.data size its own pool.")
  split = dataset.split(input_config.train_split)
  record_bytes = (split.num_bytes / max(1, split.num_examples)
                  or math.prod(dataset.image_shape))  # TFDS's size unknown: decoded
  buffered = min(input_config.shuffle_buffer, split.num_examples) * record_bytes
  host = memory.host_bytes()
  if buffered > MEMORY_SHARE * host:
    fits = max(1, int(MEMORY_SHARE * host / record_bytes))
    raise UserError(f"config.input.shuffle_buffer={input_config.shuffle_buffer} would hold "
                    f"{buffered / 2**30:.1f} GiB of {dataset.data_dir}'s records "
                    f"({record_bytes / 2**10:.0f} KiB each), more than half this machine's "
                    f"{host / 2**30:.1f} GiB: at most {fits} here.")


def fits_cache(dataset: Dataset, split: str, pipelines: int, input_config) -> bool:
  """Whether one pipeline's share of a split's records is cached: input.cache on and
  the share (decoded size, what the cache holds) within input.cache_max_bytes and
  half this host's memory (said when the memory decides)."""
  share = dataset.split(split).num_examples * (math.prod(dataset.image_shape) + 64) / pipelines
  if not input_config.cache or share > input_config.cache_max_bytes:
    return False
  host = memory.host_bytes()
  if share > MEMORY_SHARE * host:
    logging.warning("The %s split's %.1f GiB (decoded) is within config.input.cache_max_bytes "
                    "but more than half this machine's %.1f GiB of memory: streamed, not "
                    "cached.", split, share / 2**30, host / 2**30)
    return False
  return True


def file_dataset(files, pipelines, index, seed=None, epoch=0):
  """This pipeline's share of the files (every pipelines-th, the same every
  epoch: its count of examples is then known, position.py), in epoch `epoch`'s
  order of the seed when seed is set."""
  share = tf.constant(files[index::pipelines] if len(files) >= pipelines else files)
  if seed is not None:
    share = tf.gather(share, tf.random.experimental.stateless_shuffle(
        tf.range(tf.shape(share)[0]), seed=tf.stack([tf.constant(seed, tf.int64),
                                                     tf.cast(epoch, tf.int64)])))
  return tf.data.Dataset.from_tensor_slices(share)


def _records(files, pipelines, index, deterministic, seed=None, epoch=0):
  """The records of one pipeline: its own files, or every n-th record when
  there are fewer files than pipelines."""
  ds = file_dataset(files, pipelines, index, seed, epoch)
  if len(files) >= pipelines:
    return ds.interleave(
        plain(lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20)),
        cycle_length=min(math.ceil(len(files) / pipelines), 16), block_length=1,
        num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  logging.warning("%d files for %d input pipelines: every pipeline reads every file "
                  "and keeps 1/%d of the records. Convert with more shards.",
                  len(files), pipelines, pipelines)
  return tf.data.TFRecordDataset(ds, buffer_size=8 << 20).shard(pipelines, index)


def _streamed_records(files, pipelines, index, deterministic, shuffle_buffer, seed,
                      first_epoch, skip):
  """Endless records of one pipeline from epoch first_epoch on, `skip` records
  into it: each epoch's file order and shuffle are the seed's and the epoch's
  alone (position.py), and no epoch's records mix with the next's."""
  seed = tf.constant(seed, tf.int64)

  def epoch(number):
    # Traced in a graph of its own, which inherits the process's global seed:
    # cleared, so that the order is our seed's alone (and a global seed of 0
    # does not make Dataset.shuffle compare our seed tensor in Python).
    tf.compat.v1.set_random_seed(None)
    ds = _records(files, pipelines, index, deterministic, seed, number)
    ds = ds.shuffle(shuffle_buffer, seed=seed * 1_000_003 + number,
                    reshuffle_each_iteration=False)
    return ds.skip(tf.where(number == first_epoch, tf.constant(skip, tf.int64), 0))

  return tf.data.Dataset.range(first_epoch, 2**62).flat_map(plain(epoch))


def _options(deterministic, threads=0):
  options = tf.data.Options()
  options.deterministic = deterministic
  options.autotune.enabled = True
  if threads:  # a private pool: input work does not queue behind the host's other ops
    options.threading.private_threadpool_size = threads
  return options


def augment_batch(images: tf.Tensor, seed) -> tf.Tensor:
  """Random resized crop (area 35-100%, aspect 3/4-4/3) and random left-right
  flip for a whole uint8 batch at once, as in ImageNet recipes. seed: int64[2],
  the draws' alone (stateless: a resumed run draws what the uninterrupted one did)."""
  batch = tf.shape(images)[0]
  height, width = images.shape[1], images.shape[2]
  seeds = tf.random.experimental.stateless_split(seed, 6)
  uniform = lambda i, low=0.0, high=1.0: tf.random.stateless_uniform([batch], seeds[i], low, high)
  area = uniform(0, 0.35, 1.0)
  ratio = tf.exp(uniform(1, math.log(3 / 4), math.log(4 / 3)))
  h = tf.minimum(tf.sqrt(area / ratio), 1.0)
  w = tf.minimum(tf.sqrt(area * ratio), 1.0)
  y0 = uniform(2) * (1.0 - h)
  x0 = uniform(3) * (1.0 - w)
  flip = uniform(4) < 0.5
  # crop_and_resize flips a box whose x1 > x2: crop and flip in one op.
  x_start, x_end = tf.where(flip, x0 + w, x0), tf.where(flip, x0, x0 + w)
  boxes = tf.stack([y0, x_start, y0 + h, x_end], axis=1)
  out = tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(batch),
                                 [height, width])
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def layout(dataset: Dataset, global_batch: int, pipelines: int, replicas: int, input_config,
           seed: int) -> position_lib.Layout:
  """What decides the batches a run reads at each step (saved with its checkpoints).
  replicas: the input context's (the JAX runner's is one per pipeline)."""
  split = input_config.train_split
  order = zlib.crc32(json.dumps([seed, split, input_config.shuffle_buffer,
                                 bool(input_config.augment)]).encode())
  return position_lib.Layout(global_batch, pipelines, replicas,
                             bool(fits_cache(dataset, split, pipelines, input_config)), order)


def train_input_fn(dataset: Dataset, global_batch: int, input_config, seed: int = 0,
                   position: position_lib.Position | None = None, step: int = 0):
  """Returns fn(input_context) -> endless dataset of (uint8 images, int32 labels),
  from `step` on, where `position` (position.py; by default a run from step 0
  with this layout) puts it.

  input_config: the config's `input` section (train_split, cache, cache_max_bytes,
  shuffle_buffer, augment, deterministic, threads, service, service_job).
  """
  split, deterministic = input_config.train_split, input_config.deterministic
  files = dataset.split(split).files

  def dataset_fn(ctx: tf.distribute.InputContext):
    pipelines, index = ctx.num_input_pipelines, ctx.input_pipeline_id
    batch = ctx.get_per_replica_batch_size(global_batch)
    where = position or position_lib.Position(
        layout(dataset, global_batch, pipelines, ctx.num_replicas_in_sync, input_config, seed))
    if (where.layout.pipelines, where.layout.batch) != (pipelines, batch):
      raise ValueError(f"input position for {where.layout.describe()}, read with batch "
                       f"{batch} per replica over {pipelines} pipelines")
    from_memory, epoch, skip = where.start(dataset, split, step, index)
    if from_memory:
      count = position_lib.pipeline_counts(dataset, split, pipelines)[index]
      # Read once, in order: the epochs' permutations are then the seed's alone.
      ds = _batches_from_memory(_records(files, pipelines, index, deterministic=True), count,
                                batch, dataset, seed, epoch, skip)
    else:
      ds = _streamed_records(files, pipelines, index, deterministic,
                             input_config.shuffle_buffer, seed, epoch, skip)
      ds = ds.batch(batch, drop_remainder=True)
      ds = ds.map(plain(lambda b: records.decode_batch(b, dataset)),
                  num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if input_config.augment:  # each batch's draws from the seed, the pipeline and the batch
      numbers = tf.data.Dataset.range(step * (ctx.num_replicas_in_sync // pipelines), 2**62)
      ds = tf.data.Dataset.zip((ds, numbers)).map(
          plain(lambda xy, n: (augment_batch(xy[0], tf.stack(
              [tf.constant(seed, tf.int64), n * 4096 + index])), xy[1])),
          num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.with_options(_options(deterministic, input_config.threads))
    if input_config.get("service"):  # all of the above runs on the service's workers
      job = input_config.get("service_job", "")
      # A resumed run's shared job is a new one: the old job serves the old position.
      ds = service.distribute(ds, input_config.service,
                              f"{job}-from-step-{step}" if job and step else job)
    return ds.prefetch(AUTOTUNE)

  return dataset_fn


def _batches_from_memory(records_ds, count: int, batch: int, dataset: Dataset, seed: int,
                         first_epoch: int = 0, skip: int = 0):
  """Endless (images, labels) batches of a pipeline's whole share, read and
  decoded once into one tensor: each epoch a seeded permutation of it, cut into
  batches (the remainder left out, a different one every epoch) and gathered,
  from epoch first_epoch on, `skip` batches into it.
  No per-example tf.data work is left; per example it bounded small models
  (the MLP trained at 59% of its compute limit: README Speed)."""
  # Decoded in parallel batches, then put together once (the cache keeps the result).
  whole = records_ds.batch(256).map(plain(lambda b: records.decode_batch(b, dataset)),
                                    num_parallel_calls=AUTOTUNE, deterministic=True)
  whole = whole.unbatch().batch(count)

  def epoch(number, images, labels):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(tf.shape(labels)[0]), seed=tf.stack([tf.constant(seed, tf.int64), number]))
    steps = tf.shape(order)[0] // batch
    picks = tf.reshape(order[:steps * batch], [steps, batch])
    picks = picks[tf.where(number == first_epoch, skip, 0):]
    return tf.data.Dataset.from_tensor_slices(picks).map(
        plain(lambda i: (tf.gather(images, i), tf.gather(labels, i))))

  epochs = tf.data.Dataset.range(first_epoch, 2**62)
  return tf.data.Dataset.zip((epochs, whole.take(1).cache().repeat())).flat_map(
      plain(lambda number, data: epoch(number, *data)))


def eval_steps(dataset: Dataset, split: str, global_batch: int, pipelines: int) -> int:
  """Steps that cover every example of the split, whatever its size."""
  per_pipeline_batch = global_batch // pipelines
  return max(math.ceil(c / per_pipeline_batch)
             for c in position_lib.pipeline_counts(dataset, split, pipelines))


def eval_input_fn(dataset: Dataset, global_batch: int, pipelines: int, split: str,
                  input_config):
  """Returns (fn(input_context) -> endless dataset of (images, labels, weights),
  steps): every `steps` batches are one pass over the split.

  Every example is seen exactly once a pass: the last batches are padded with
  weight-0 examples, so every replica runs the same number of steps with
  static shapes and metrics count only real examples. Endless, so that one
  iterator serves every evaluation of a run (making one costs more than
  evaluating a small split). Of input_config, only
  cache and cache_max_bytes apply: evaluation reads in order, unaugmented.
  """
  files = dataset.split(split).files
  shape = tuple(dataset.image_shape)
  steps = eval_steps(dataset, split, global_batch, pipelines)

  def dataset_fn(ctx: tf.distribute.InputContext):
    if ctx.num_input_pipelines != pipelines:
      raise UserError(f"eval expected {pipelines} input pipelines, got "
                      f"{ctx.num_input_pipelines}.")
    batch = ctx.get_per_replica_batch_size(global_batch)
    replicas_here = global_batch // pipelines // batch
    ds = _records(files, pipelines, ctx.input_pipeline_id, deterministic=True)
    if fits_cache(dataset, split, pipelines, input_config):
      ds = ds.cache()

    def decode_and_pad(serialized):
      images, labels = records.decode_batch(serialized, dataset)
      n = tf.shape(labels)[0]
      pad = batch - n
      images = tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]])
      labels = tf.pad(labels, [[0, pad]])
      weights = tf.pad(tf.ones([n], tf.float32), [[0, pad]])
      return (tf.ensure_shape(images, (batch,) + shape), tf.ensure_shape(labels, [batch]),
              tf.ensure_shape(weights, [batch]))

    ds = ds.batch(batch).map(plain(decode_and_pad), num_parallel_calls=AUTOTUNE)
    padding = tf.data.Dataset.from_tensors((
        tf.zeros((batch,) + shape, tf.uint8), tf.zeros([batch], tf.int32),
        tf.zeros([batch], tf.float32))).repeat()
    return ds.concatenate(padding).take(steps * replicas_here).repeat().prefetch(AUTOTUNE)

  return dataset_fn, steps


def sample(dataset: Dataset, split: str, count: int):
  """The first `count` examples of a split, as (uint8 images, int32 labels) numpy
  arrays: for pictures of predictions."""
  ds = _records(dataset.split(split).files, 1, 0, deterministic=True).take(count)
  ds = ds.batch(count).map(plain(lambda b: records.decode_batch(b, dataset)))
  images, labels = next(iter(ds))
  return images.numpy(), labels.numpy()
