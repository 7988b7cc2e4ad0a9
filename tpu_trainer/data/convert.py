"""Writes a Source as sharded TFRecords plus dataset_info.json, locally or to gs://.

Each shard is written to a temp file and published whole (rename, or an upload
checked by crc32c), so a shard is never visible half written. A rerun after a
kill skips shards that exist and read back with the expected count; the
manifest is written last, with a crc32c per shard.
"""
import concurrent.futures
import glob
import json
import math
import os
import re
import tempfile
import threading
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
  def __init__(self, total):
    self.total, self.examples, self.shards, self.bytes = total, 0, 0, 0
    self.start = time.time()
    self.lock = threading.Lock()

  def add(self, examples=0, shards=0, nbytes=0):
    with self.lock:
      self.examples += examples
      self.shards += shards
      self.bytes += nbytes

  def log(self, total_shards):
    elapsed = time.time() - self.start
    logging.info("%d/%d examples, %d/%d shards, %.0f examples/s",
                 self.examples, self.total, self.shards, total_shards,
                 self.examples / max(elapsed, 1e-9))


def convert(source: sources_lib.Source, output_dir: str, *, encoding: str = "auto",
            num_shards: int = 0, shard_bytes: int = 100 << 20, min_shards: int = 16,
            seed: int = 0, workers: int = 0, jpeg_quality: int = 95,
            client=None) -> dict:
  """Converts every split of `source`; returns the dataset_info written."""
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

  progress = _Progress(sum(len(j[3]) for j in jobs))

  def write_shard(job):
    split_name, index, count, indices = job
    name = records.shard_name(source.name, split_name, index, count)
    final = storage.join(output_dir, name)
    existing_crc = storage.remote_crc32c(final, client)
    if existing_crc is not None:  # from a killed earlier run: keep it if it reads back whole
      try:
        if count_records(final, client) == len(indices):
          progress.add(len(indices), 1)
          return split_name, index, name, len(indices), existing_crc
      except ValueError as e:
        logging.warning("Rewriting %s", e)
    tmp = storage.local_temp_path(final)
    try:
      with tf.io.TFRecordWriter(tmp) as writer:
        for image, label in split_read[split_name](indices):
          if image.shape != tuple(source.image_shape):
            raise ValueError(f"{source.name}/{split_name}: an image of shape {image.shape} "
                             f"among images of shape {tuple(source.image_shape)}.")
          writer.write(records.serialize_example(image, label, encoding, jpeg_quality))
      nbytes = os.path.getsize(tmp)
      crc = storage.publish(tmp, final, client)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    progress.add(len(indices), 1, nbytes)
    return split_name, index, name, len(indices), crc

  split_read = {name: split.read for name, split in source.splits.items()}
  results = []
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
    pending = {pool.submit(write_shard, job) for job in jobs}
    try:
      while pending:
        done, pending = concurrent.futures.wait(
            pending, timeout=10, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in done:
          results.append(future.result())
        if pending:
          progress.log(len(jobs))
    except BaseException:
      for future in pending:
        future.cancel()
      raise

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
  logging.info("Wrote %d examples in %d shards (%.1f MB) to %s in %.1f s (%.0f examples/s).",
               progress.examples, len(jobs), progress.bytes / 1e6, output_dir, elapsed,
               progress.examples / max(elapsed, 1e-9))
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
