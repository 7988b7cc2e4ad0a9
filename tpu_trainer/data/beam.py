"""The same conversion as an Apache Beam pipeline: DirectRunner here, Dataflow in
the cloud, for datasets one machine converts too slowly (ImageNet).

The driver plans exactly as the local converter does (convert.plan: the same
split rule, shard names from the same key, shards an earlier run finished are
kept); the pipeline writes the remaining shards, one per element, each worker
reopening the source from its --source spec; the driver then publishes the
metadata (convert.publish: dataset_info.json last). A killed pipeline leaves
whole shards and no new metadata: the same command completes it.

On Dataflow, workers install this package: pass --setup_file=./setup.py.
"""
import logging as std_logging
import os
import time

from absl import logging

from tpu_trainer import storage
from tpu_trainer.data import convert
from tpu_trainer.data import manifest
from tpu_trainer.data import sources
from tpu_trainer.errors import UserError


class _WriteShard:
  """A Beam DoFn body: reopens the source once per worker, writes one shard per element."""

  def __init__(self, spec: str, load_args: dict, output_dir: str, encoding: str,
               jpeg_quality: int):
    self.spec, self.load_args, self.output_dir = spec, load_args, output_dir
    self.encoding, self.jpeg_quality = encoding, jpeg_quality
    self.writer = None

  def setup(self):
    self.writer = convert.ShardWriter(sources.load(self.spec, **self.load_args),
                                      self.output_dir, self.encoding, self.jpeg_quality)

  def process(self, job):
    yield self.writer(job)


def build_pipeline(pipeline, jobs, spec: str, load_args: dict, output_dir: str,
                   encoding: str, jpeg_quality: int):
  """Adds the shard-writing transforms to `pipeline`; returns the written results."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  write = type("WriteShard", (_WriteShard, beam.DoFn), {})
  return (pipeline
          | "Shards" >> beam.Create(jobs)
          | "Spread" >> beam.Reshuffle()
          | "Write" >> beam.ParDo(write(spec, load_args, output_dir, encoding, jpeg_quality)))


def pipeline_options(runner: str, pipeline_args):
  """Beam's options from the arguments after `--`, with --runner."""
  from apache_beam.options import pipeline_options as options_lib  # pylint: disable=g-import-not-at-top
  return options_lib.PipelineOptions(list(pipeline_args) + [f"--runner={runner}"])


def convert_with_beam(spec: str, output_dir: str, *, runner: str = "DirectRunner",
                      pipeline_args=(), load_args=None, encoding: str = "auto",
                      num_shards: int = 0, shard_bytes: int = 100 << 20,
                      min_shards: int = 16, seed: int = 0, jpeg_quality: int = 95,
                      client=None) -> manifest.Dataset:
  """Converts the --source `spec` into a TFDS dataset in output_dir with Beam."""
  try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("--runner needs Apache Beam: pip install -e '.[beam]'.") from None
  load_args = dict(load_args or {})
  load_args.setdefault("seed", seed)
  source = sources.load(spec, **load_args)
  load_args.update(source.reopen)
  conversion, client = convert.plan(source, output_dir, encoding=encoding,
                                    num_shards=num_shards, shard_bytes=shard_bytes,
                                    min_shards=min_shards, seed=seed,
                                    jpeg_quality=jpeg_quality, client=client)
  start = time.time()
  if conversion.todo:
    logging.info("Writing %d of %d shards with Beam's %s.", len(conversion.todo),
                 len(conversion.jobs), runner)
    # The portable runner relays every worker log line ("Worker: severity: WARN …",
    # Beam's own start-up notes) through this logger; a worker's error still shows.
    std_logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
        std_logging.ERROR)
    with beam.Pipeline(options=pipeline_options(runner, pipeline_args)) as pipeline:
      build_pipeline(pipeline, conversion.todo, spec, load_args, output_dir,
                     conversion.encoding, jpeg_quality)
  # What the workers wrote, as it now stands in output_dir: one listing, which on
  # gs:// carries every object's crc32c (local shards are read back for theirs).
  if storage.is_gcs(output_dir):
    written = storage.list_files(output_dir, client)
  else:
    written = {name: (size, None) for name, size in storage.list_sizes(output_dir).items()}
  results = list(conversion.done)
  for job in conversion.todo:
    if job.file in written:
      size, crc = written[job.file]
      crc = crc or storage.file_crc32c(os.path.join(output_dir, job.file))
      results.append(convert.ShardResult(job.split, job.file, len(job.indices), crc, size))
  dataset = convert.publish(conversion, results, client)
  examples = sum(s.num_examples for s in dataset.splits.values())
  logging.info("Wrote %d examples in %d shards to %s in %.1f s with Beam (%s).", examples,
               len(conversion.jobs), output_dir, time.time() - start, runner)
  return dataset

