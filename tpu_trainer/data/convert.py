"""Writes a Source as sharded TFRecords plus dataset_info.json, locally or to gs://.

Each shard is written to a temp file and published whole (rename, or an upload
checked by crc32c), so a shard is never visible half written. A rerun after a
kill skips shards that exist and read back with the expected count; the
manifest is written last, with a crc32c per shard.
"""
import glob
import json
import math
import multiprocessing
import os
import re
import sys
import tempfile
import time

from absl import logging
import numpy as np
import tensorflow as tf

from tpu_trainer import storage
from tpu_trainer.data import records
from tpu_trainer.data import sources as sources_lib

FORMAT_VERSION = 1


def count_records(path: str, client=None) -> int:
  """Reads a shard back (TFRecord CRCs checked); raises ValueError naming a bad file."""
  local, tmp = path, None
  if storage.is_gcs(path) and os.environ.get("STORAGE_EMULATOR_HOST"):
    # TensorFlow's gs:// filesystem cannot be pointed at an emulator.
    bucket, name = storage.split_gcs(path)
    fd, tmp = tempfile.mkstemp(suffix=".tfrecord")
    os.close(fd)
    (client or storage.gcs_client()).bucket(bucket).blob(name).download_to_filename(tmp)
    local = tmp
  try:
    ds = tf.data.TFRecordDataset(local, buffer_size=8 << 20)
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))
  except tf.errors.OpError as e:
    reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", e.message.splitlines()[0])
    raise ValueError(f"Shard {path} is corrupt or truncated ({reason}); "
                     "delete it and convert again.") from None
  finally:
    if tmp:
      os.remove(tmp)


def _check_output_dir(output_dir: str, client):
  """Fails in seconds, with what to do, when output_dir cannot be written.
  Returns the Cloud Storage client for gs:// paths."""
  if storage.is_gcs(output_dir):
    bucket_name, _ = storage.split_gcs(output_dir)
    try:
      client = client or storage.gcs_client()
      exists = client.bucket(bucket_name).exists(timeout=15, retry=None)
    except Exception as e:  # credentials missing, network, permissions
      raise ValueError(f"Cannot reach bucket gs://{bucket_name}: {type(e).__name__}: "
                       f"{str(e).splitlines()[0]} (run `gcloud auth application-default "
                       "login` or check the bucket name).") from None
    if not exists:
      raise ValueError(f"Bucket gs://{bucket_name} does not exist; create it "
                       f"(gcloud storage buckets create gs://{bucket_name} --location=REGION).")
    return client
  try:
    os.makedirs(output_dir, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-probe-")
    probe.close()
  except OSError as e:
    raise ValueError(f"Cannot write to --output_dir={output_dir!r}: {e.strerror}.") from None
  # Temp files of a killed earlier run.
  for stale in glob.glob(os.path.join(output_dir, ".*.tmp-*")):
    os.remove(stale)
  return None


def _shard_count(split: sources_lib.Split, encoding, jpeg_quality, num_shards,
                 shard_bytes, min_shards) -> int:
  if num_shards:
    count = num_shards
  else:
    sample = list(split.read(range(min(8, split.num_examples))))
    per_example = np.mean([len(records.serialize_example(im, l, encoding, jpeg_quality))
                           for im, l in sample])
    count = max(min_shards, math.ceil(split.num_examples * per_example / shard_bytes))
  return max(1, min(count, split.num_examples))


class _Progress:
  """Examples and shards done; logs a line at most every `every` seconds."""

  def __init__(self, total_examples, total_shards, every=10.0):
    self.total_examples, self.total_shards, self.every = total_examples, total_shards, every
    self.examples = self.shards = self.bytes = 0
    self.start = self.last_log = time.time()

  def add(self, examples, nbytes=0):
    self.examples += examples
    self.shards += 1
    self.bytes += nbytes
    if time.time() - self.last_log >= self.every:
      self.last_log = time.time()
      logging.info("%d/%d examples, %d/%d shards, %.0f examples/s", self.examples,
                   self.total_examples, self.shards, self.total_shards,
                   self.examples / max(time.time() - self.start, 1e-9))


# What forked workers inherit instead of receiving it pickled: sources hold
# closures and memory maps, which pickle badly and copy-on-write well.
_WORK = {}


def _write_shard(job):
  """Writes one shard to a temp file and publishes it. Runs in a forked worker:
  no TensorFlow runtime (not fork-safe), only numpy, PIL, protobuf and files."""
  split_name, index, count, indices = job
  source, output_dir = _WORK["source"], _WORK["output_dir"]
  name = records.shard_name(source.name, split_name, index, count)
  final = storage.join(output_dir, name)
  tmp = storage.local_temp_path(final)
  try:
    with open(tmp, "wb") as f:
      for image, label in source.splits[split_name].read(indices):
        if image.shape != tuple(source.image_shape):
          raise ValueError(f"{source.name}/{split_name}: an image of shape {image.shape} "
                           f"among images of shape {tuple(source.image_shape)}.")
        f.write(records.frame_record(records.serialize_example(
            image, label, _WORK["encoding"], _WORK["jpeg_quality"])))
    nbytes = os.path.getsize(tmp)
    if storage.is_gcs(final) and "client" not in _WORK:
      _WORK["client"] = storage.gcs_client()  # one per worker process
    crc = storage.publish(tmp, final, _WORK.get("client"))
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return split_name, index, name, len(indices), crc, nbytes


def _existing_shard(job, source_name, output_dir, client):
  """The result of a complete shard left by an earlier run, or None."""
  split_name, index, count, indices = job
  name = records.shard_name(source_name, split_name, index, count)
  final = storage.join(output_dir, name)
  crc = storage.remote_crc32c(final, client)
  if crc is None:
    return None
  try:
    if count_records(final, client) == len(indices):
      return split_name, index, name, len(indices), crc, 0
  except ValueError as e:
    logging.warning("Rewriting %s", e)
  return None


def convert(source: sources_lib.Source, output_dir: str, *, encoding: str = "auto",
            num_shards: int = 0, shard_bytes: int = 100 << 20, min_shards: int = 16,
            seed: int = 0, workers: int = 0, jpeg_quality: int = 95,
            client=None) -> dict:
  """Converts every split of `source`; returns the dataset_info written.

  Shards are written by `workers` forked processes (default: one per core);
  sources that read through TensorFlow (tfds) are written in this process.
  """
  empty = [name for name, split in source.splits.items() if split.num_examples == 0]
  if not source.splits or empty:
    raise ValueError(f"Source {source.name!r} has no examples"
                     f"{' in split(s) ' + ', '.join(empty) if empty else ''}; nothing to convert.")
  client = _check_output_dir(output_dir, client)
  encoding = records.choose_encoding(encoding, source.image_shape)
  rng = np.random.default_rng(seed)

  jobs = []  # (split, index, count, example indices)
  for split_name, split in source.splits.items():
    count = _shard_count(split, encoding, jpeg_quality, num_shards, shard_bytes, min_shards)
    # Shuffle before sharding so every shard holds a mix of classes. Sources
    # that only stream in order get contiguous ranges (TFDS shuffles at prepare).
    order = (rng.permutation(split.num_examples) if split.random_access
             else np.arange(split.num_examples))
    for i, part in enumerate(np.array_split(order, count)):
      jobs.append((split_name, i, count, part))

  progress = _Progress(sum(len(j[3]) for j in jobs), len(jobs))
  results, todo = [], []
  for job in jobs:  # a rerun keeps what an earlier run finished
    done = _existing_shard(job, source.name, output_dir, client)
    if done:
      results.append(done)
      progress.add(done[3])
    else:
      todo.append(job)
  if len(results):
    logging.info("Kept %d complete shards from an earlier run.", len(results))

  workers = min(workers or os.cpu_count() or 1, len(todo))
  # fork only on Linux: macOS frameworks are not fork-safe (Python defaults to spawn there).
  forkable = sys.platform.startswith("linux")
  in_process = workers <= 1 or not forkable or not all(
      source.splits[s].process_safe for s in {j[0] for j in todo})
  _WORK.update(source=source, output_dir=output_dir, encoding=encoding,
               jpeg_quality=jpeg_quality)
  if client is not None and in_process:
    # Never into forked workers: a shared connection pool garbles requests.
    _WORK["client"] = client
  try:
    if in_process:
      written = map(_write_shard, todo)
    else:
      pool = multiprocessing.get_context("fork").Pool(workers)
      written = pool.imap_unordered(_write_shard, todo)
    for result in written:
      results.append(result)
      progress.add(result[3], result[5])
  finally:
    _WORK.clear()
    if not in_process:
      pool.terminate()
      pool.join()

  splits = {}
  for split_name in source.splits:
    shards = sorted((r for r in results if r[0] == split_name), key=lambda r: r[1])
    splits[split_name] = {
        "num_examples": sum(r[3] for r in shards),
        "shards": [{"file": r[2], "num_examples": r[3], "crc32c": r[4]} for r in shards],
    }
  info = {
      "name": source.name,
      "format_version": FORMAT_VERSION,
      "features": {"image": {"shape": list(source.image_shape), "dtype": "uint8",
                             "encoding": encoding},
                   "label": {"num_classes": len(source.class_names)}},
      "class_names": list(source.class_names),
      "splits": splits,
  }
  storage.write_text(storage.join(output_dir, records.INFO_FILE),
                     json.dumps(info, indent=2) + "\n", client)
  elapsed = time.time() - progress.start
  logging.info("Wrote %d examples in %d shards (%.1f MB new) to %s in %.1f s "
               "(%.0f examples/s, %s).", progress.examples, len(jobs), progress.bytes / 1e6,
               output_dir, elapsed, progress.examples / max(elapsed, 1e-9),
               "1 process" if in_process else f"{workers} worker processes")
  return info


def verify(data_dir: str, client=None) -> dict:
  """Reads every shard back: counts and checksums must match dataset_info.json.

  Returns {"examples": n, "shards": n}; raises ValueError naming each bad file.
  """
  client = client or (storage.gcs_client() if storage.is_gcs(data_dir) else None)
  info = records.read_info(data_dir)
  problems, examples, shards = [], 0, 0
  for split_name, split in info["splits"].items():
    for shard in split["shards"]:
      path = storage.join(data_dir, shard["file"])
      crc = storage.remote_crc32c(path, client)
      if crc is None:
        problems.append(f"{path} is missing")
        continue
      if crc != shard["crc32c"]:
        problems.append(f"{path} has crc32c {crc}, manifest says {shard['crc32c']}")
        continue
      try:
        n = count_records(path, client)
      except ValueError as e:
        problems.append(str(e))
        continue
      if n != shard["num_examples"]:
        problems.append(f"{path} holds {n} examples, manifest says {shard['num_examples']}")
      examples += n
      shards += 1
  if problems:
    raise ValueError(f"{len(problems)} bad shard(s) in {data_dir}: " + "; ".join(problems))
  return {"examples": examples, "shards": shards}


def explain_data_loss(data_dir: str, error: Exception) -> ValueError:
  """Turns TensorFlow's DataLossError, which names no file, into one that does."""
  try:
    verify(data_dir)
  except ValueError as bad:
    return bad
  return ValueError(f"Reading {data_dir} failed ({error}); run "
                    f"tpu-trainer-convert --verify --output_dir={data_dir}.")
