"""Conversion streams: peak memory for 4N examples is about that for N."""
import os
import subprocess
import sys

import numpy as np

from conftest import REPO

# Runs the CLI as a child and prints the largest RSS (KiB) of any descendant.
_MEASURE = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "print(r.stderr[-2000:], file=sys.stderr)")


def _folder(root, n):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for c in range(4):
    os.makedirs(os.path.join(root, f"class{c}"))
  base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  for i in range(n):
    Image.fromarray(np.roll(base, i, axis=1)).save(os.path.join(root, f"class{i % 4}", f"{i}.png"))


def _peak_kib(folder, out):
  result = subprocess.run(
      [sys.executable, "-c", _MEASURE, sys.executable, "-m", "tpu_trainer.cli.convert",
       f"--source=folder:{folder}", f"--output_dir={out}", "--encoding=raw", "--num_shards=8"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  status, peak = result.stdout.split()
  assert status == "0", result.stderr
  return int(peak)


def test_peak_memory_does_not_grow_with_dataset_size(tmp_path):
  n = 1500  # 64x64x3 images: 18 MB of pixels for N, 74 MB for 4N
  _folder(str(tmp_path / "small"), n)
  _folder(str(tmp_path / "large"), 4 * n)
  small = _peak_kib(str(tmp_path / "small"), str(tmp_path / "out_small"))
  large = _peak_kib(str(tmp_path / "large"), str(tmp_path / "out_large"))
  held_if_not_streaming = 3 * n * 64 * 64 * 3 / 1024
  assert large - small < 0.3 * held_if_not_streaming, (small, large)
