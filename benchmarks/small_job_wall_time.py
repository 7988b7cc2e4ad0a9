"""Wall time of a whole small job: tpu_trainer's training process vs plain Keras's.

For every recipe, on scikit-learn's digits (1,437 train / 360 test images, 8x8),
10 epochs, each process timed from its start to its exit:

  ours        tpu-trainer-train --config=configs/RECIPE.py on the converted digits:
              evaluation every epoch, checkpoints, model.keras + SavedModel export,
              metrics.json, learning curves. The recipe's augmentation off: the
              plain process has none (it costs time, but is the recipe's, not the
              framework's). Its label smoothing and weight decay stay on: nearly
              free, and resnet50 without them diverged on digits.
  plain Keras the same model, optimizer, batch, peak learning rate, precision,
              steps_per_execution and epochs in model.fit on numpy arrays with
              validation every epoch, then model.save("model.keras") and a
              metrics json: the best plain Keras process one would write for
              this job.

The runs alternate (ours, plain, ours, ...) so that both see the same machine.

  python benchmarks/small_job_wall_time.py [--models=cnn,mlp] [--runs=3]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("mlp", "cnn", "conv_bn", "mobilenet_v2", "resnet50")
flags.DEFINE_list("models", list(RECIPES), "Recipes to time.")
flags.DEFINE_integer("runs", 3, "Runs of each process per recipe.")
FLAGS = flags.FLAGS

# Keras's own way, with what tpu_trainer resolved for the run (batch, precision,
# peak learning rate, steps per execution) passed in argv[1] as JSON.
PLAIN_KERAS = r"""
import json, os, runpy, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
from sklearn.datasets import load_digits
from tpu_trainer.models import build_model
run = json.loads(sys.argv[1])
digits = load_digits()
x = np.round(digits.images * (255 / 16)).astype("uint8")[..., None]
y = digits.target
order = np.random.default_rng(0).permutation(len(x))
test, train = order[:360], order[360:]
keras.mixed_precision.set_global_policy(run["precision"])
config = runpy.run_path(run["recipe"])["get_config"]()
config.weights = "none"
model = build_model(config, (8, 8, 1), 10)
optimizer = (keras.optimizers.Adam(run["peak_lr"]) if config.optimizer.startswith("adam")
             else keras.optimizers.SGD(run["peak_lr"], momentum=0.9, nesterov=True))
model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"],
              steps_per_execution=run["steps_per_execution"])
model.fit(x[train], y[train], batch_size=run["batch_size"], epochs=10,
          validation_data=(x[test], y[test]), verbose=0)
loss, accuracy = model.evaluate(x[test], y[test], batch_size=run["batch_size"], verbose=0)
model.save(os.path.join(run["workdir"], "model.keras"))
with open(os.path.join(run["workdir"], "metrics.json"), "w") as f:
  json.dump({"loss": loss, "accuracy": accuracy}, f)
"""


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
  start = time.perf_counter()
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  seconds = time.perf_counter() - start
  if result.returncode:
    raise SystemExit(f"{' '.join(cmd[:4])} failed: {result.stderr[-2000:]}")
  return seconds, result


def spread(values: list[float], digits: int = 1) -> str:
  low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
  return low if low == high else f"{low}-{high}"


def main(_):
  tmp = tempfile.mkdtemp(prefix="bench_wall_")
  try:
    data = os.path.join(tmp, "digits")
    timed([sys.executable, "-m", "tpu_trainer.cli.convert", "--source=digits",
           f"--output_dir={data}"])
    rows = []
    for name in FLAGS.models:
      ours, plain, accuracy = [], [], {"ours": [], "plain": []}
      for i in range(FLAGS.runs):
        workdir = os.path.join(tmp, f"{name}_{i}")
        # Pretrained weights can't be downloaded here: mobilenet_v2 from scratch.
        offline = ["--config.weights=none"] if name == "mobilenet_v2" else []
        seconds, result = timed([
            sys.executable, "-m", "tpu_trainer.cli.train", f"--config=configs/{name}.py",
            f"--config.data_dir={data}", f"--workdir={workdir}", "--config.epochs=10",
            "--config.input.augment=False", *offline])
        ours.append(seconds)
        metrics = json.loads(next(line for line in result.stdout.splitlines()
                                  if line.startswith("{")))
        accuracy["ours"].append(metrics["accuracy"])
        with open(os.path.join(workdir, "config.json")) as f:
          resolved = json.load(f)
        plain_dir = os.path.join(tmp, f"{name}_plain_{i}")
        os.makedirs(plain_dir)
        run = {"recipe": os.path.join(REPO, "configs", f"{name}.py"),
               "precision": resolved["precision"], "batch_size": resolved["batch_size"],
               "peak_lr": resolved["peak_learning_rate"],
               "steps_per_execution": resolved["steps_per_execution"], "workdir": plain_dir}
        seconds, _ = timed([sys.executable, "-c", PLAIN_KERAS, json.dumps(run)])
        plain.append(seconds)
        with open(os.path.join(plain_dir, "metrics.json")) as f:
          accuracy["plain"].append(json.load(f)["accuracy"])
      row = {"model": name, "ours_s": [round(s, 1) for s in ours],
             "plain_keras_s": [round(s, 1) for s in plain],
             "plain_over_ours": round(sorted(plain)[len(plain) // 2]
                                      / sorted(ours)[len(ours) // 2], 2),
             "ours_accuracy": accuracy["ours"], "plain_accuracy": accuracy["plain"]}
      rows.append(row)
      print(f"{name}: ours {spread(ours)} s, plain Keras {spread(plain)} s: plain / ours "
            f"{row['plain_over_ours']:.2f}x (medians; >1: ours is faster); accuracy ours "
            f"{spread(accuracy['ours'], 3)}, plain {spread(accuracy['plain'], 3)}",
            flush=True)
    print(json.dumps(rows))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
