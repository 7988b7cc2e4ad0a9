"""Conversion speed as a user sees it: whole processes, start to exit.

`tpu-trainer-convert --source=npz:FILE` against a bare single-threaded
tf.io.TFRecordWriter script writing the same records from the same arrays, each
run as its own Python process on the same machine in the same run. Verification
(`--verify`, every shard read back and checksummed) is timed on its own.

  python benchmarks/convert_throughput.py [--examples=200000] [--encodings=raw,png]
"""
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

flags.DEFINE_integer("examples", 200_000, "28x28 grayscale images to convert.")
flags.DEFINE_list("encodings", ["raw", "png"], "Encodings to compare.")
flags.DEFINE_bool("beam", True, "Also time the Beam DirectRunner (2 worker processes).")
FLAGS = flags.FLAGS

# The baseline: what one would write by hand, one process, one writer, the same records.
BARE = """
import sys
import numpy as np
import tensorflow as tf
from tpu_trainer.data import records
arrays = np.load(sys.argv[1])
x, y = arrays["x_train"], arrays["y_train"]
with tf.io.TFRecordWriter(sys.argv[2]) as writer:
  for image, label in zip(x, y):
    writer.write(records.serialize_example(image[..., None], int(label), sys.argv[3]))
"""


def _timed(cmd) -> float:
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  start = time.perf_counter()
  result = subprocess.run(cmd, capture_output=True, text=True, env=env)
  elapsed = time.perf_counter() - start
  if result.returncode:
    sys.exit(f"error: {' '.join(cmd[:4])}... failed:\n{result.stderr[-2000:]}")
  return elapsed


def main(_):
  n = FLAGS.examples
  rng = np.random.default_rng(0)
  # Smooth-ish images, so PNG compresses as it would on real digits.
  x = (rng.integers(0, 4, (n, 28, 28)) * 60).astype(np.uint8)
  y = rng.integers(0, 10, n)
  with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
    npz = os.path.join(tmp, "images.npz")
    np.savez(npz, x_train=x, y_train=y)
    print(f"{n} images 28x28 from an .npz, {os.cpu_count()} cores, whole processes "
          "(Python start, imports and all)")
    for encoding in FLAGS.encodings:
      bare = _timed([sys.executable, "-c", BARE, npz, os.path.join(tmp, "bare.tfrecord"),
                     encoding])
      out = os.path.join(tmp, encoding)
      ours = _timed([sys.executable, "-m", "tpu_trainer.cli.convert", f"--source=npz:{npz}",
                     f"--output_dir={out}", f"--encoding={encoding}"])
      verify = _timed([sys.executable, "-m", "tpu_trainer.cli.convert", "--verify",
                       f"--output_dir={out}"])
      print(f"{encoding:>4}: bare TFRecordWriter {n / bare:8.0f} ex/s ({bare:5.1f} s) | "
            f"tpu-trainer-convert {n / ours:8.0f} ex/s ({ours:5.1f} s) | ratio "
            f"{bare / ours:.2f}x | --verify {n / verify:8.0f} ex/s ({verify:4.1f} s)")
      if FLAGS.beam:
        beam = _timed([sys.executable, "-m", "tpu_trainer.cli.convert", f"--source=npz:{npz}",
                       f"--output_dir={out}-beam", f"--encoding={encoding}",
                       "--runner=DirectRunner", "--", "--direct_num_workers=2",
                       "--direct_running_mode=multi_processing"])
        print(f"{encoding:>4}: Beam DirectRunner, 2 worker processes {n / beam:8.0f} ex/s "
              f"({beam:5.1f} s) | local converter / Beam {beam / ours:.2f}x")


if __name__ == "__main__":
  app.run(main)
