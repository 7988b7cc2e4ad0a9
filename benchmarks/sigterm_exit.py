"""SIGTERM to exit, per recipe: how long a preempted run takes from the signal to
its final checkpoint written and its process gone, against the notice a
preemption gives (GKE Spot: 15 s of its ~30 s to the pods; Compute Engine and
Cloud TPU spot VMs: 30 s).

Each recipe trains on random images of --size (a dataset made here, converted
with tpu-trainer-convert), is sent SIGTERM once it has trained for --seconds,
and must exit 143; the run's own line gives the checkpoint's time, the clock
here the exit's.

  python benchmarks/sigterm_exit.py [--recipes=mlp,cnn,...] [--backends=tensorflow,jax]
      [--size=64] [--seconds=20]
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

RECIPES = ("mlp", "cnn", "cnn_deep", "conv_bn", "mobilenet_v2", "resnet50")
flags.DEFINE_list("recipes", list(RECIPES), "configs/NAME.py to measure.")
flags.DEFINE_list("backends", ["tensorflow", "jax"], "tensorflow, jax.")
flags.DEFINE_integer("size", 64, "Image height and width (RGB).")
flags.DEFINE_float("seconds", 20.0, "Training time (after compilation) before the SIGTERM.")
FLAGS = flags.FLAGS
NOTICES = "GKE Spot 15 s, spot VMs 30 s"


def _dataset(directory: str) -> str:
  rng = np.random.default_rng(0)
  arrays = {f"x_{split}": rng.integers(0, 256, (n, FLAGS.size, FLAGS.size, 3), np.uint8)
            for split, n in (("train", 512), ("test", 128))}
  arrays.update({f"y_{split}": rng.integers(0, 10, len(arrays[f"x_{split}"]))
                 for split in ("train", "test")})
  np.savez(os.path.join(directory, "random.npz"), **arrays)
  data = os.path.join(directory, "data")
  result = subprocess.run([sys.executable, "-m", "tpu_trainer.cli.convert",
                           f"--source=npz:{directory}/random.npz", f"--output_dir={data}"],
                          capture_output=True, text=True)
  if result.returncode:
    sys.exit(f"error: converting the random images failed:\n{result.stderr[-2000:]}")
  return data


def measure(recipe: str, backend: str, data: str, workdir: str) -> tuple[float, float]:
  """(SIGTERM to checkpoint written as the run logs it, SIGTERM to exit) in seconds."""
  log_path = os.path.join(workdir + ".log")
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tpu_trainer.cli.train", f"--config=configs/{recipe}.py",
         f"--workdir={workdir}", f"--config.data_dir={data}", f"--config.backend={backend}",
         "--config.batch_size=32", "--config.steps=100000", "--config.steps_per_execution=1",
         "--config.log_every_steps=1", "--config.checkpoint_every_steps=100000",
         # Random labels: the recipes' own rates blow the MLP up on 64x64x3 inputs.
         "--config.base_lr=0.0001", "--config.weights=none"],  # offline: no download
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  read = lambda: open(log_path).read()
  while "First execution" not in read():
    if proc.poll() is not None:
      sys.exit(f"error: {recipe} on {backend} ended before training:\n{read()[-2000:]}")
    time.sleep(0.1)
  time.sleep(FLAGS.seconds)
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  code = proc.wait(timeout=600)
  exited = time.monotonic() - sent
  found = re.search(r"checkpoint written (\d+\.\d) s after it", read())
  if code != 143 or not found:
    sys.exit(f"error: {recipe} on {backend} exited {code} after SIGTERM:\n{read()[-2000:]}")
  return float(found.group(1)), exited


def main(_):
  from tpu_trainer import strategy  # pylint: disable=g-import-not-at-top
  cpu = "bf16 units" if strategy.cpu_has_bf16() else "no bf16 units (AVX2)"
  print(f"SIGTERM to exit on this machine: {os.cpu_count()} CPU cores, {cpu}; "
        f"{FLAGS.size}x{FLAGS.size} RGB, batch 32, after {FLAGS.seconds:.0f} s of training.")
  print(f"| recipe | backend | SIGTERM → checkpoint written | SIGTERM → exit | notice ({NOTICES}) |")
  print("|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as directory:
    data = _dataset(directory)
    for recipe in FLAGS.recipes:
      for backend in FLAGS.backends:
        saved, exited = measure(recipe, backend, data,
                                os.path.join(directory, f"{recipe}-{backend}"))
        fits = "within both" if exited < 15 else ("spot VMs only" if exited < 30 else "neither")
        print(f"| {recipe} | {backend} | {saved:.1f} s | {exited:.1f} s | {fits} |", flush=True)


if __name__ == "__main__":
  app.run(main)
