"""Adopted shards read as fast as our own: the training input pipeline's
records/s on TFRecords in imagenet_to_gcs.py's layout adopted in place, against
our own JPEG shards of the same images (converted from the same pixels), in the
same run, alternating, uncached (every batch parsed and decoded from the files).
Both hold the same JPEG bytes (the same pixels, encoder and quality); only the
records around them differ.

  python benchmarks/adopted_input.py [--images=8000] [--size=128] [--runs=3]
"""
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import imagenet_layout  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_integer("images", 8000, "Images in the train split (8 files).")
flags.DEFINE_integer("size", 128, "Their height and width (JPEG, quality 95).")
flags.DEFINE_integer("runs", 3, "Alternating measurements of each.")
flags.DEFINE_float("seconds", 5.0, "Seconds per measurement.")
FLAGS = flags.FLAGS


def _convert(*args):
  result = subprocess.run([sys.executable, "-m", "tpu_trainer.cli.convert", *args],
                          capture_output=True, text=True)
  if result.returncode:
    sys.exit(f"error: tpu-trainer-convert {' '.join(args)} failed:\n{result.stderr[-2000:]}")


def main(_):
  import tpu_trainer  # pylint: disable=g-import-not-at-top
  from tpu_trainer import benchmark  # pylint: disable=g-import-not-at-top
  from tpu_trainer import strategy  # pylint: disable=g-import-not-at-top
  per_shard = FLAGS.images // 8
  with tempfile.TemporaryDirectory(prefix="bench_adopted_") as tmp:
    adopted, ours = os.path.join(tmp, "imagenet"), os.path.join(tmp, "ours")
    os.makedirs(adopted)
    written = imagenet_layout.write(adopted, {"train": 8, "validation": 1}, per_shard,
                                    size=(FLAGS.size, FLAGS.size))
    _convert(f"--source=tfrecord:{adopted}", f"--output_dir={adopted}")
    # The same pixels through our converter: the same encoder at the same quality
    # gives the same JPEG bytes; only the records around them differ.
    npz = os.path.join(tmp, "images.npz")
    np.savez(npz, **{f"{x}_{split}": np.stack(written[name][0]) if x == "x" else
                     written[name][1] for split, name in (("train", "train"),
                                                          ("test", "validation"))
                     for x in "xy"})
    _convert(f"--source=npz:{npz}", f"--output_dir={ours}", "--encoding=jpeg",
             "--jpeg_quality=95", "--num_shards=8")
    rates = {"adopted": [], "ours": []}
    for run in range(FLAGS.runs):
      pair = [("adopted", adopted), ("ours", ours)]
      for name, data_dir in pair[::-1] if run % 2 else pair:  # ABBA: no side always first
        config = tpu_trainer.load_config("cnn", data_dir=data_dir, batch_size=128,
                                         **{"input.cache": False})
        rates[name].append(benchmark.input_rates(config, FLAGS.seconds)["steady"])
  cpu = "bf16 units" if strategy.cpu_has_bf16() else "no bf16 units (AVX2)"
  adopted_rate, ours_rate = (statistics.median(rates[k]) for k in ("adopted", "ours"))
  print(f"{os.cpu_count()} cores, CPU with {cpu}; {8 * per_shard} JPEG images "
        f"{FLAGS.size}x{FLAGS.size}, batch 128, uncached, median of {FLAGS.runs}")
  print(f"input pipeline: adopted imagenet_to_gcs shards {adopted_rate:,.0f} records/s | "
        f"our JPEG shards {ours_rate:,.0f} records/s | adopted / ours "
        f"{adopted_rate / ours_rate:.2f}")


if __name__ == "__main__":
  app.run(main)
