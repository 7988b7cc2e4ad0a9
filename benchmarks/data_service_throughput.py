"""The training input pipeline through tf.data service: examples/s with 0 (the
pipeline on the trainer itself), 1 and 2 worker processes, in the same run.

The pipeline is the photo one (JPEG decode, random crop and flip, batch), not
cached: what an ImageNet-sized job runs every epoch. A dispatcher and the
workers are real `tpu-trainer-data-service` processes on this machine, so here
they share its cores with the trainer; the rate per worker process is the
number that scales on real machines, one worker VM each.

  python benchmarks/data_service_throughput.py [--examples=2000] [--image_size=224]
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging
import numpy as np

flags.DEFINE_integer("examples", 2000, "Synthetic photos in the dataset.")
flags.DEFINE_integer("image_size", 224, "Their height and width.")
flags.DEFINE_integer("batch_size", 128, "The training batch.")
flags.DEFINE_float("seconds", 10.0, "How long each rate is timed.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Worker processes to compare (0: no service).")
FLAGS = flags.FLAGS


def _photos(directory, n, size):
  """n JPEG photos (smooth colour fields with noise: JPEG sizes like real ones)."""
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
  images = np.repeat(np.repeat(base, size // 8 + 1, 1), size // 8 + 1, 2)[:, :size, :size]
  images = np.clip(images + rng.normal(0, 12, images.shape), 0, 255).astype(np.uint8)
  labels = rng.integers(0, 10, n)
  split = sources.split_from_arrays(images, labels)
  source = sources.Source("photos", [str(i) for i in range(10)], (size, size, 3),
                          {"train": split, "test": split}, "bench-photos")
  convert.convert(source, directory, encoding="jpeg", min_shards=16)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _service(workers, tmp):
  """A dispatcher and `workers` worker processes: the address."""
  port = _free_port()
  address = f"grpc://localhost:{port}"
  cli = [sys.executable, "-m", "tpu_trainer.cli.data_service"]
  procs, logs = [], []
  try:
    for i, args in enumerate([["--role=dispatcher", f"--port={port}"]] +
                             [["--role=worker", f"--dispatcher={address}",
                               "--worker_host=localhost"]] * workers):
      logs.append(os.path.join(tmp, f"service{i}.log"))
      with open(logs[-1], "w") as log:
        procs.append(subprocess.Popen(cli + args, stdout=subprocess.DEVNULL, stderr=log))
      ready = "dispatcher on port" if i == 0 else "Worker registered"
      deadline = time.time() + 120
      while ready not in open(logs[-1]).read():
        if procs[-1].poll() is not None or time.time() > deadline:
          sys.exit(f"error: the data service did not start:\n{open(logs[-1]).read()[-2000:]}")
        time.sleep(0.1)
    yield address
  finally:
    for proc in procs:
      proc.kill()
      proc.wait()


def main(_):
  logging.set_verbosity(logging.WARNING)  # the rates, not each run's setup lines
  from tpu_trainer import benchmark  # pylint: disable=g-import-not-at-top
  from tpu_trainer.configs import mobilenet_v2  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix="bench_service_") as tmp:
    data = os.path.join(tmp, "photos")
    _photos(data, FLAGS.examples, FLAGS.image_size)
    config = mobilenet_v2.get_config()
    config.data_dir, config.batch_size = data, FLAGS.batch_size
    config.input.cache, config.input.augment = False, True
    print(f"{FLAGS.examples} JPEG photos {FLAGS.image_size}x{FLAGS.image_size}, batch "
          f"{FLAGS.batch_size}, decode + crop + flip, uncached; {os.cpu_count()} cores shared "
          "by the trainer and every service process")
    rows = []
    for workers in (int(w) for w in FLAGS.workers):
      if workers == 0:
        rate = benchmark.input_rates(config, FLAGS.seconds)["steady"]
      else:
        with _service(workers, tmp) as address:
          config.input.service = address
          rate = benchmark.input_rates(config, FLAGS.seconds)["steady"]
          config.input.service = ""
      rows.append({"workers": workers, "examples_per_second": round(rate),
                   "per_worker": round(rate / workers) if workers else None})
      print(f"{workers} worker process(es): {rate:8,.0f} examples/s"
            + (f" ({rate / workers:,.0f} per worker)" if workers else " (the trainer's own "
               "pipeline)"))
    print(json.dumps(rows))


if __name__ == "__main__":
  app.run(main)
