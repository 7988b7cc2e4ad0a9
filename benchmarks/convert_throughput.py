"""Conversion examples/s: tpu-trainer-convert vs a bare single-threaded
tf.io.TFRecordWriter writing the same records from the same arrays.

  python benchmarks/convert_throughput.py [--examples=60000] [--encodings=raw,png]
"""
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tpu_trainer.data import convert, records, sources  # pylint: disable=g-import-not-at-top

flags.DEFINE_integer("examples", 60_000, "28x28 images to write.")
flags.DEFINE_list("encodings", ["raw", "png"], "Encodings to compare.")
FLAGS = flags.FLAGS


def main(_):
  logging.set_verbosity(logging.WARNING)
  rng = np.random.default_rng(0)
  # Smooth-ish images so PNG compresses as it would on real digits.
  x = (rng.integers(0, 4, (FLAGS.examples, 28, 28)) * 60).astype(np.uint8)
  y = rng.integers(0, 10, FLAGS.examples)
  tmp = tempfile.mkdtemp(prefix="bench_convert_")
  print(f"{FLAGS.examples} images 28x28, {os.cpu_count()} cores")
  for encoding in FLAGS.encodings:
    start = time.perf_counter()
    with tf.io.TFRecordWriter(os.path.join(tmp, f"bare-{encoding}.tfrecord")) as writer:
      for image, label in zip(x, y):
        writer.write(records.serialize_example(image[..., None], int(label), encoding))
    bare = FLAGS.examples / (time.perf_counter() - start)
    source = sources.Source("bench", [str(i) for i in range(10)], (28, 28, 1),
                            {"train": sources.split_from_arrays(x, y)})
    start = time.perf_counter()
    convert.convert(source, os.path.join(tmp, encoding), encoding=encoding, min_shards=16)
    ours = FLAGS.examples / (time.perf_counter() - start)
    print(f"{encoding}: bare TFRecordWriter {bare:9.0f} ex/s | tpu-trainer-convert "
          f"{ours:9.0f} ex/s (16 shards, verified manifest) | ratio {ours / bare:.2f}x")


if __name__ == "__main__":
  app.run(main)
