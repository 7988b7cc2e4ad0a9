"""Writes a Source as a TFDS dataset directory, locally or to gs://.

Shards are named after the conversion's key (source fingerprint, encoding,
image size, seed, shard counts, format version), so shards of another source
or other settings can never be mistaken for this run's. Each shard is written
to a temp file and published whole (rename, or an upload checked by crc32c):
a rerun after a kill keeps the shards that exist under this run's names and
writes the rest. The metadata comes last (see manifest.py); until then a
directory that held a dataset still reads as that dataset. After it, shards of
earlier conversions into the same directory are deleted.
"""
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time

from absl import logging
import numpy as np

from tpu_trainer import storage
from tpu_trainer.data import manifest
from tpu_trainer.data import records
from tpu_trainer.data import sources as sources_lib
from tpu_trainer.errors import UserError
from tpu_trainer.progress import Progress


def _check_output_dir(output_dir: str, client):
  """Fails in seconds, with what to do, when output_dir cannot be written.
  Returns the Cloud Storage client for gs:// paths."""
  if storage.is_gcs(output_dir):
    return storage.require_bucket(output_dir, client)
  try:
    os.makedirs(output_dir, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-probe-")
    probe.close()
  except OSError as e:
    raise UserError(f"Cannot write to --output_dir={output_dir!r}: {e.strerror}.") from None
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


def check_source(source: sources_lib.Source) -> None:
  """What would make a useless or broken dataset, refused before anything is written."""
  if "train" not in source.splits or source.splits["train"].num_examples == 0:
    raise UserError(f"Source {source.name!r} has no train examples (splits: "
                    f"{', '.join(f'{k}={v.num_examples}' for k, v in source.splits.items())});"
                    " lower --test_fraction or add images.")
  empty = [name for name, split in source.splits.items() if split.num_examples == 0]
  if empty:
    raise UserError(f"Source {source.name!r} has no examples in split(s) {', '.join(empty)}.")
  if len(source.class_names) < 2:
    raise UserError(f"Source {source.name!r} has {len(source.class_names)} class(es); a "
                    "classifier needs at least 2.")
  names = [manifest.class_name(n) for n in source.class_names]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise UserError(f"Source {source.name!r} names class(es) {twice} more than once (as "
                    "Unicode NFC, the same text however it was typed): give each class its "
                    "own name.")
  for name, split in source.splits.items():
    if split.labels is None or not len(split.labels):
      continue
    low, high = int(np.min(split.labels)), int(np.max(split.labels))
    if low < 0 or high >= len(source.class_names):
      raise UserError(f"Source {source.name!r}, split {name}: labels span [{low}, {high}] "
                      f"but there are {len(source.class_names)} classes; labels must be in "
                      f"[0, {len(source.class_names)}).")


def _our_shard_pattern(name: str) -> re.Pattern:
  """Shard names this converter makes for a dataset called `name`, any key."""
  return re.compile(re.escape(name) + r"-[^.]+-[0-9a-f]{8}\.tfrecord-\d{5}-of-\d{5}")


def _existing(output_dir: str, client) -> dict | None:
  """The tpu_trainer.json of a dataset already in output_dir, {} for none; refuses
  to overwrite a dataset something else wrote."""
  info_text = storage.read_text_if_exists(storage.join(output_dir, manifest.INFO_FILE), client)
  if info_text is None:
    return {}
  ours = storage.read_text_if_exists(storage.join(output_dir, manifest.OURS_FILE), client)
  if ours is not None:
    # Without it our old shards can't be told from files that are not ours.
    return manifest.parse_json(ours, storage.join(output_dir, manifest.OURS_FILE),
                               "convert into a new directory, or empty this one first")
  if '"format_version"' in info_text:  # our own format 1: replaced like any conversion
    return {"shards": {s["file"]: s for split in json.loads(info_text)["splits"].values()
                       for s in split["shards"]}}
  raise UserError(f"--output_dir={output_dir} holds a TFDS dataset that tpu-trainer-convert "
                  "did not write; convert into another directory (training reads that "
                  "dataset as it is).")


@dataclasses.dataclass(frozen=True)
class ShardJob:
  """One shard to write: the examples (indices into the split) that go into it."""
  split: str
  file: str
  indices: tuple


@dataclasses.dataclass(frozen=True)
class ShardResult:
  """One shard as written (and published)."""
  split: str
  file: str
  num_examples: int
  crc32c: str
  num_bytes: int


def write_shard(source: sources_lib.Source, output_dir: str, job: ShardJob, encoding: str,
                jpeg_quality: int, client=None, staging: str | None = None) -> ShardResult:
  """Writes one shard to a temp file and publishes it whole. Uses no TensorFlow:
  it runs in forked workers and in Beam workers."""
  final = storage.join(output_dir, job.file)
  tmp = storage.local_temp_path(final, staging)
  try:
    with open(tmp, "wb") as f:
      for image, label in source.splits[job.split].read(job.indices):
        if image.shape != tuple(source.image_shape):
          raise UserError(f"{source.name}/{job.split}: an image of shape {image.shape} "
                          f"among images of shape {tuple(source.image_shape)}.")
        f.write(records.frame_record(records.serialize_example(
            image, label, encoding, jpeg_quality)))
    nbytes = os.path.getsize(tmp)
    crc = storage.publish(tmp, final, client)
  except OSError as e:
    raise UserError(f"Cannot write {final}: {e.strerror or e}.") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return ShardResult(job.split, job.file, len(job.indices), crc, nbytes)


def conversion_key(source: sources_lib.Source, encoding: str, seed: int,
                   shard_counts: dict, jpeg_quality: int) -> dict:
  """Everything that decides what the shards hold."""
  return {"format_version": manifest.FORMAT_VERSION, "source": source.name,
          "fingerprint": source.fingerprint, "encoding": encoding,
          "image_shape": list(source.image_shape), "class_names": list(source.class_names),
          "seed": seed, "shard_counts": shard_counts,
          "jpeg_quality": jpeg_quality if encoding == "jpeg" else None}


@dataclasses.dataclass
class Conversion:
  """What a conversion writes, and what an earlier run already wrote."""
  source: sources_lib.Source
  output_dir: str
  encoding: str
  jpeg_quality: int
  key: dict
  template: str
  jobs: list[ShardJob]      # in shard order
  done: list[ShardResult]   # shards kept from an earlier run
  todo: list[ShardJob]      # still to write
  previous: dict  # tpu_trainer.json of the dataset already there, {} for none
  present: dict   # {file name: bytes} in output_dir before this run


def plan(source: sources_lib.Source, output_dir: str, *, encoding: str = "auto",
         num_shards: int = 0, shard_bytes: int = 100 << 20, min_shards: int = 16,
         seed: int = 0, jpeg_quality: int = 95, client=None) -> tuple[Conversion, object]:
  """Checks the source and the output, names every shard after the conversion's
  key and finds the ones an earlier run finished. Returns (plan, client)."""
  check_source(source)
  if shard_bytes < 1 or num_shards < 0 or min_shards < 1:
    raise UserError(f"--shard_bytes={shard_bytes}, --num_shards={num_shards}, "
                    f"--min_shards={min_shards}: shard_bytes and min_shards must be at "
                    "least 1, num_shards at least 0.")
  client = _check_output_dir(output_dir, client)
  encoding = manifest.choose_encoding(encoding, source.image_shape)
  previous = _existing(output_dir, client)
  rng = np.random.default_rng(seed)

  counts = {name: _shard_count(split, encoding, jpeg_quality, num_shards, shard_bytes,
                               min_shards) for name, split in source.splits.items()}
  key = conversion_key(source, encoding, seed, counts, jpeg_quality)
  template = manifest.shard_template(
      hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8])
  jobs = []
  for split_name, split in source.splits.items():
    # Shuffle before sharding so every shard holds a mix of classes. Sources
    # that only stream in order get contiguous ranges (TFDS shuffles at prepare).
    order = (rng.permutation(split.num_examples) if split.random_access
             else np.arange(split.num_examples))
    names = manifest.shard_names(source.name, split_name, template, counts[split_name])
    jobs += [ShardJob(split_name, name, tuple(int(i) for i in part))
             for name, part in zip(names, np.array_split(order, counts[split_name]))]

  present = storage.list_sizes(output_dir, client)
  ours = _our_shard_pattern(source.name)
  if not storage.is_gcs(output_dir):  # temp files of killed runs of ours; nobody else's
    _remove_temp_shards(output_dir, ours.fullmatch)

  done, todo = [], []
  recorded = (previous or {}).get("shards", {})
  for job in jobs:
    # Published whole under this key's name, so complete; unless the metadata of
    # a finished run recorded it otherwise (damaged since): then rewritten.
    crc = (storage.remote_crc32c(storage.join(output_dir, job.file), client)
           if job.file in present else None)
    was = recorded.get(job.file)
    if crc is not None and (was is None or (was.get("crc32c"), was.get("num_bytes")) ==
                            (crc, present[job.file])):
      done.append(ShardResult(job.split, job.file, len(job.indices), crc, present[job.file]))
    else:
      todo.append(job)
  if done:
    logging.info("Kept %d shards an earlier run with the same source and settings wrote.",
                 len(done))
  return Conversion(source, output_dir, encoding, jpeg_quality, key, template, jobs, done,
                    todo, previous or {}, present), client


def publish(conversion: Conversion, results: list[ShardResult],
            client=None) -> manifest.Dataset:
  """Writes the metadata of every shard (dataset_info.json last), then deletes the
  shards of earlier conversions here. Returns the dataset as readers see it."""
  source, output_dir = conversion.source, conversion.output_dir
  order = {job.file: i for i, job in enumerate(conversion.jobs)}
  missing = set(order) - {r.file for r in results}
  if missing:
    raise UserError(f"{len(missing)} shard(s) were not written (e.g. {sorted(missing)[0]}); "
                    "run the same command again to finish them.")
  splits = {name: [{"file": r.file, "num_examples": r.num_examples, "crc32c": r.crc32c,
                    "num_bytes": r.num_bytes}
                   for r in sorted(results, key=lambda r: order[r.file]) if r.split == name]
            for name in source.splits}
  try:
    manifest.write(output_dir, name=source.name, image_shape=source.image_shape,
                   encoding=conversion.encoding, class_names=source.class_names,
                   splits=splits, template=conversion.template, ours={"key": conversion.key},
                   client=client)
  except OSError as e:
    raise UserError(f"Cannot write the metadata into {output_dir}: {e.strerror or e}.") \
        from None
  # Shards of earlier conversions here (a changed source or setting): ours to delete.
  ours = _our_shard_pattern(source.name)
  stale = [n for n in conversion.present if n not in order and
           (ours.fullmatch(n) or n in conversion.previous.get("shards", {}))]
  for name in stale:
    storage.delete(storage.join(output_dir, name), client)
  if stale:
    logging.info("Deleted %d shards of an earlier conversion with another source or "
                 "settings.", len(stale))
  return manifest.read(output_dir, client)


def _remove_temp_shards(output_dir: str, is_our_shard) -> None:
  """Deletes the temp files (ours, named exactly) of the shards is_our_shard(name)
  accepts, in a local dir."""
  for name in os.listdir(output_dir) if os.path.isdir(output_dir) else ():
    match = re.fullmatch(r"\.(.+)\.tmp-[0-9a-f]{8}", name)
    path = os.path.join(output_dir, name)
    if match and is_our_shard(match.group(1)) and os.path.isfile(path) \
        and not os.path.islink(path):
      os.remove(path)


@dataclasses.dataclass
class ShardWriter:
  """write_shard for one conversion, as a function of the job alone."""
  source: sources_lib.Source
  output_dir: str
  encoding: str
  jpeg_quality: int
  client: object = None
  staging: str | None = None  # where gs:// shards are written before their upload

  def __call__(self, job: ShardJob) -> ShardResult:
    if self.client is None and storage.is_gcs(self.output_dir):
      self.client = storage.gcs_client()  # one per worker process
    return write_shard(self.source, self.output_dir, job, self.encoding, self.jpeg_quality,
                       self.client, self.staging)


# The writer forked workers inherit instead of receiving it pickled with every job:
# sources hold closures and memory maps, which pickle badly and copy-on-write well.
_FORKED_WRITER: ShardWriter | None = None


def _write_in_forked_worker(job: ShardJob) -> ShardResult:
  return _FORKED_WRITER(job)


def convert(source: sources_lib.Source, output_dir: str, *, encoding: str = "auto",
            num_shards: int = 0, shard_bytes: int = 100 << 20, min_shards: int = 16,
            seed: int = 0, workers: int = 0, jpeg_quality: int = 95,
            client=None) -> manifest.Dataset:
  """Converts every split of `source` into a TFDS dataset in output_dir.

  Shards are written by `workers` forked processes (default: one per core);
  sources that read through TensorFlow (tfds) are written in this process.
  """
  conversion, client = plan(source, output_dir, encoding=encoding, num_shards=num_shards,
                            shard_bytes=shard_bytes, min_shards=min_shards, seed=seed,
                            jpeg_quality=jpeg_quality, client=client)
  todo = conversion.todo
  total = sum(len(j.indices) for j in conversion.jobs)
  done_before = sum(r.num_examples for r in conversion.done)
  progress = Progress(total, "examples", initial=done_before)
  results, new_bytes = list(conversion.done), 0
  workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
  # fork only on Linux: macOS frameworks are not fork-safe (Python defaults to spawn there).
  forkable = sys.platform.startswith("linux")
  in_process = workers <= 1 or not forkable or not all(
      source.splits[s].process_safe for s in {j.split for j in todo})
  # Workers stopped early (an error elsewhere, Ctrl-C) leave their temp files: gs://
  # shards are staged in a directory of this run's own, removed whatever happens.
  staging = (tempfile.mkdtemp(prefix="tpu_trainer_convert_") if storage.is_gcs(output_dir)
             else None)
  # A client only in this process: a connection pool shared by forks garbles requests.
  writer = ShardWriter(source, output_dir, conversion.encoding, jpeg_quality,
                       client if in_process else None, staging)
  global _FORKED_WRITER
  try:
    if in_process:
      written = map(writer, todo)
    else:
      _FORKED_WRITER = writer
      pool = multiprocessing.get_context("fork").Pool(workers)
      written = pool.imap_unordered(_write_in_forked_worker, todo)
    for result in written:
      results.append(result)
      new_bytes += result.num_bytes
      progress.update(result.num_examples)
      if progress.line_due() and progress.done < total:
        rate = (progress.done - done_before) / (time.perf_counter() - progress.start)
        progress.log("%d/%d examples (%.0f%%), %d/%d shards, %.0f examples/s, ETA %s",
                     progress.done, total, 100 * progress.done / total, len(results),
                     len(conversion.jobs), rate, progress.eta(rate))
  finally:
    progress.close()
    _FORKED_WRITER = None
    if not in_process:
      pool.terminate()
      pool.join()
    if staging:
      shutil.rmtree(staging, ignore_errors=True)
    else:
      _remove_temp_shards(output_dir, {job.file for job in todo}.__contains__)

  dataset = publish(conversion, results, client)
  elapsed = time.perf_counter() - progress.start
  logging.info("Wrote %d examples in %d shards (%.1f MB new) to %s in %.1f s "
               "(%.0f examples/s, %s).", total, len(conversion.jobs),
               new_bytes / 1e6, output_dir, elapsed, total / max(elapsed, 1e-9),
               "1 process" if in_process else f"{workers} worker processes")
  return dataset
