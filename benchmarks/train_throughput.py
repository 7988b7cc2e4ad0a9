"""Training examples/s: the tutorials' Keras, the best plain Keras, tpu_trainer, and
the compute limit.

Columns from the same run, same architecture, data, batch and epochs, each
timed the same way: examples trained after the first execution (tracing and
compilation) divided by the time they took.

  tutorial   the seed tutorials' model.fit: float32, one step per call, tf.data
             from numpy arrays.
  +precision the same with the precision tpu_trainer resolves for this model here
             (bf16 on CPUs with bf16 units and on TPUs; float32 for mobilenet_v2
             on a CPU).
  best Keras the same plus steps_per_execution (as ours): the best plain Keras
             one can write on one device.
  ours       tpu_trainer's loop on TFRecords written by its converter.
  ours_jax   the same recipe and data through --config.backend=jax (Keras's JAX
             backend, one jitted call per execution; its own process, as Keras's
             backend is fixed per process; precision auto: float32 on a CPU).
             Only for --jax_models: XLA:CPU has no oneDNN convolutions, the big
             models would take hours.
  limit      the compute limit: ours' train step on one batch held on the device,
             repeated in one compiled loop, no input and no host work
             (tpu_trainer.benchmark.compute_limit).

Ours is reported as a ratio to the best plain Keras and as a share of the limit.
The data: scikit-learn's digits upscaled to 28x28 (Fashion-MNIST's size) for
mlp, cnn, cnn_deep and conv_bn, to --big_image_size (64) for mobilenet_v2 and resnet50
(from scratch: no download here), repeated.

Each model's epochs are at least --epochs (--big_epochs), raised until training at
the compute limit would take --min_seconds; --runs repeats every column, and the
markdown table at the end gives each column's range over the runs.

  python benchmarks/train_throughput.py [--models=cnn,mlp] [--runs=3] [--min_seconds=5]
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tpu_trainer import backends  # pylint: disable=g-import-not-at-top
from tpu_trainer import benchmark  # pylint: disable=g-import-not-at-top
from tpu_trainer import config as config_lib  # pylint: disable=g-import-not-at-top
from tpu_trainer import training  # pylint: disable=g-import-not-at-top
from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
from tpu_trainer.models import build_model  # pylint: disable=g-import-not-at-top

BIG_MODELS = ("mobilenet_v2", "resnet50")
flags.DEFINE_list("models", ["mlp", "cnn", "cnn_deep", "conv_bn", *BIG_MODELS],
                  "Models to compare.")
flags.DEFINE_list("jax_models", ["mlp", "cnn"], "Models also run on the JAX "
                  "backend.")
flags.DEFINE_integer("epochs", 4, "Epochs for every column (28x28 models).")
flags.DEFINE_integer("repeat", 20, "Copies of the digits training set (28x28 models).")
flags.DEFINE_integer("batch_size", 1024, "Global batch for every column (28x28 models).")
flags.DEFINE_integer("steps_per_execution", 20, "For best Keras and ours.")
flags.DEFINE_integer("big_image_size", 64, "Image side for mobilenet_v2 and resnet50.")
flags.DEFINE_integer("big_batch_size", 32, "Global batch for mobilenet_v2 and resnet50.")
flags.DEFINE_integer("big_epochs", 2, "Epochs for mobilenet_v2 and resnet50.")
flags.DEFINE_integer("big_repeat", 1, "Copies of the digits training set for them.")
flags.DEFINE_integer("runs", 1, "Runs of every column per model; the table gives the range.")
flags.DEFINE_float("min_seconds", 5.0, "Epochs are raised until training at the compute "
                   "limit would last this long.")
FLAGS = flags.FLAGS


def digits_at(size, repeat):
  """Digits at size x size, uint8: train (repeated) and test arrays."""
  source = sources.digits()

  def arrays(split, copies):
    s = source.splits[split]
    xs, ys = zip(*s.read(range(s.num_examples)))
    x = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((size, size), Image.BILINEAR))
                  for im in xs])[..., None]
    return np.tile(x, (copies, 1, 1, 1)), np.tile(np.array(ys), copies)

  return arrays("train", repeat), arrays("test", 1)


class AfterFirstExecution(keras.callbacks.Callback):
  """Times training from the end of the first execution to the end: Keras calls
  the batch hooks once per execution (steps_per_execution steps)."""

  def __init__(self):
    super().__init__()
    self.executions, self.start, self.seconds = 0, None, 0.0

  def on_train_batch_end(self, batch, logs=None):
    self.executions += 1
    if self.start is None:
      self.start = time.perf_counter()

  def on_train_end(self, logs=None):
    self.seconds = time.perf_counter() - self.start


def plain_keras(name, train_xy, test_xy, epochs, batch, precision, steps_per_execution):
  keras.mixed_precision.set_global_policy(precision)
  config = config_lib.default_config()
  config.model = name
  keras.utils.set_random_seed(0)
  model = build_model(config, train_xy[0].shape[1:], 10)
  # Adam at the rate tpu_trainer's rule gives this batch (sqrt scaling from 1e-3 at 32).
  model.compile(keras.optimizers.Adam(1e-3 * (batch / 32) ** 0.5),
                "sparse_categorical_crossentropy", metrics=["accuracy"],
                steps_per_execution=steps_per_execution)
  ds = (tf.data.Dataset.from_tensor_slices(train_xy).shuffle(10_000)
        .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
  timer = AfterFirstExecution()
  model.fit(ds, epochs=epochs, verbose=0, callbacks=[timer])
  _, accuracy = model.evaluate(*test_xy, batch_size=batch, verbose=0)
  steps = epochs * (len(train_xy[0]) // batch)
  timed = steps - min(steps_per_execution, steps)
  return timed * batch / timer.seconds, accuracy


def ours_config(name, data_dir, epochs, batch, steps_per_execution):
  config = config_lib.default_config()
  config.update({"model": name, "data_dir": data_dir, "batch_size": batch, "epochs": epochs,
                 "steps_per_execution": steps_per_execution, "eval_every_epochs": epochs})
  return config


def ours(name, data_dir, workdir, epochs, batch, steps_per_execution):
  config = ours_config(name, data_dir, epochs, batch, steps_per_execution)
  metrics = training.run(config, workdir, tf.distribute.get_strategy())
  if metrics["examples_per_second_includes_compilation"]:
    raise SystemExit("Too few steps to time after the first (compiling) execution: raise "
                     "--epochs or --repeat.")
  return metrics["examples_per_second"], metrics["accuracy"], metrics["precision"]


def ours_jax(name, data_dir, workdir, epochs, batch, steps_per_execution):
  """(examples/s, accuracy, precision) of the same run on the JAX backend."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "tpu_trainer.cli.train", "--config=configs/cnn.py",
       "--config.backend=jax", f"--config.model={name}", f"--config.data_dir={data_dir}",
       f"--workdir={workdir}", f"--config.batch_size={batch}", f"--config.epochs={epochs}",
       f"--config.steps_per_execution={steps_per_execution}",
       f"--config.eval_every_epochs={epochs}"],
      cwd=repo, capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit(f"the JAX run failed: {result.stderr[-2000:]}")
  metrics = json.loads(next(line for line in result.stdout.splitlines()
                            if line.startswith("{")))
  return metrics["examples_per_second"], metrics["accuracy"], metrics["precision"]


def compare(name, train_xy, test_xy, data_dir, workdir, epochs, batch, spe, min_seconds):
  """Every column for one model: ({column: (examples/s, accuracy)}, precision, the
  JAX run's precision or None, the epochs every column trained). The limit comes
  first: the epochs are raised until training at it would last min_seconds, so
  that no column is timed over a fraction of a second (the MLP's 4 epochs took
  0.3 s and read 74-101% of the limit from run to run)."""
  strategy = tf.distribute.get_strategy()
  precision = backends.runner(config_lib.default_config(), strategy).precision("auto", name)[0]
  limit = benchmark.compute_limit(ours_config(name, data_dir, epochs, batch, spe), strategy)
  epochs = max(epochs, math.ceil(min_seconds * limit["examples_per_second"]
                                 / len(train_xy[0])))
  columns = {
      "tutorial": plain_keras(name, train_xy, test_xy, epochs, batch, "float32", 1),
      "+precision": plain_keras(name, train_xy, test_xy, epochs, batch, precision, 1),
      "best_keras": plain_keras(name, train_xy, test_xy, epochs, batch, precision, spe)}
  rate, accuracy, _ = ours(name, data_dir, os.path.join(workdir, name), epochs, batch, spe)
  columns["ours"] = (rate, accuracy)
  jax_precision = None
  if name in FLAGS.jax_models:
    jax_rate, jax_accuracy, jax_precision = ours_jax(
        name, data_dir, os.path.join(workdir, f"{name}_jax"), epochs, batch, spe)
    columns["ours_jax"] = (jax_rate, jax_accuracy)
  columns["limit"] = (limit["examples_per_second"], float("nan"))
  return columns, precision, jax_precision, epochs


def row_of(name, size, train_images, batch, epochs, precision, columns, jax_precision):
  """One run of one model: every column's rate and accuracy, and the ratios."""
  rate, best, limit = columns["ours"][0], columns["best_keras"][0], columns["limit"][0]
  row = {"model": name, "image_size": size, "train_images": train_images,
         "batch_size": batch, "epochs": epochs, "precision": precision,
         **{f"{k}_ex_s": round(r) for k, (r, _) in columns.items()},
         **{f"{k}_accuracy": round(a, 4) for k, (_, a) in columns.items() if k != "limit"},
         "gain_precision": round(columns["+precision"][0] / columns["tutorial"][0], 2),
         "gain_steps_per_call": round(best / columns["+precision"][0], 2),
         "ours_vs_best_keras": round(rate / best, 2),
         # Against whichever plain-Keras column was faster in this run.
         "ours_vs_fastest_keras": round(rate / max(
             r for k, (r, _) in columns.items() if k in ("tutorial", "+precision",
                                                         "best_keras")), 2),
         "ours_vs_tutorial": round(rate / columns["tutorial"][0], 2),
         "ours_share_of_limit": round(rate / limit, 2)}
  if "ours_jax" in columns:
    row["jax_precision"] = jax_precision
    row["jax_vs_tensorflow"] = round(columns["ours_jax"][0] / rate, 2)
  return row


def spread(values, fmt, unit=""):
  """'low–high' (or one value) of the runs, e.g. 1.80–2.01×."""
  low, high = fmt.format(min(values)), fmt.format(max(values))
  return (low if low == high else f"{low}–{high}") + unit


def markdown_table(rows) -> str:
  """The README's table: per model, each column's range over the runs (each ratio
  taken within its own run)."""
  lines = ["| model | precision (auto) | tutorial Keras (fit, fp32, 1 step per call) | "
           "+ precision | + steps per call (best plain Keras) | tpu_trainer | compute limit | "
           "ours / best plain Keras | ours / fastest plain column | ours / limit |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name in dict.fromkeys(r["model"] for r in rows):
    runs = [r for r in rows if r["model"] == name]
    first = runs[0]
    cells = [f"{name} ({first['image_size']}×{first['image_size']}, batch "
             f"{first['batch_size']}, {first['epochs']} epochs)",
             first["precision"].replace("mixed_bfloat16", "bf16")]
    cells += [spread([r[f"{k}_ex_s"] for r in runs], "{:,}")
              for k in ("tutorial", "+precision", "best_keras", "ours", "limit")]
    cells += [spread([r[k] for r in runs], "{:.2f}", "×")
              for k in ("ours_vs_best_keras", "ours_vs_fastest_keras")]
    cells.append(spread([round(100 * r["ours_share_of_limit"]) for r in runs], "{}", "%"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(_):
  logging.set_verbosity(logging.WARNING)
  spe = FLAGS.steps_per_execution
  tmp = tempfile.mkdtemp(prefix="bench_train_")
  try:
    workloads = {}  # image side: (train, test, data_dir, epochs, batch)
    for name in FLAGS.models:
      big = name in BIG_MODELS
      size = FLAGS.big_image_size if big else 28
      if size not in workloads:
        train_xy, test_xy = digits_at(size, FLAGS.big_repeat if big else FLAGS.repeat)
        source = sources.Source(f"digits{size}", [str(i) for i in range(10)], (size, size, 1), {
            "train": sources.split_from_arrays(*train_xy),
            "test": sources.split_from_arrays(*test_xy)})
        data_dir = os.path.join(tmp, f"data{size}")
        convert.convert(source, data_dir, min_shards=8)
        workloads[size] = (train_xy, test_xy, data_dir,
                           FLAGS.big_epochs if big else FLAGS.epochs,
                           FLAGS.big_batch_size if big else FLAGS.batch_size)
    print(f"{os.cpu_count()} cores, one device; {spe} steps per execution")
    rows = []
    for name in FLAGS.models:
      size = FLAGS.big_image_size if name in BIG_MODELS else 28
      train_xy, test_xy, data_dir, epochs, batch = workloads[size]
      for run in range(FLAGS.runs):
        columns, precision, jax_precision, epochs = compare(  # a fresh workdir: no resuming
            name, train_xy, test_xy, data_dir, os.path.join(tmp, f"run{run + 1}"), epochs,
            batch, spe, FLAGS.min_seconds if run == 0 else 0)  # the first run's epochs for all
        row = row_of(name, size, len(train_xy[0]), batch, epochs, precision, columns,
                     jax_precision)
        rows.append({**row, "run": run + 1})
        print(f"{name} ({size}x{size}, batch {batch}, {epochs} epochs, {precision}), run "
              f"{run + 1}: " + " | ".join(
                  f"{k} {r:7.0f} ex/s" + (f" (acc {a:.3f})" if k != "limit" else "")
                  for k, (r, a) in columns.items()))
        print(f"{name}: ours / best plain Keras {row['ours_vs_best_keras']:.2f}x (/ the "
              f"fastest plain-Keras column {row['ours_vs_fastest_keras']:.2f}x), ours / compute "
              f"limit {row['ours_share_of_limit']:.0%}; ours / tutorial "
              f"{row['ours_vs_tutorial']:.2f}x = precision {row['gain_precision']:.2f}x * steps "
              f"per call {row['gain_steps_per_call']:.2f}x * input and loop "
              f"{row['ours_vs_best_keras']:.2f}x"
              + (f"; JAX backend / ours {row['jax_vs_tensorflow']:.2f}x"
                 if "jax_vs_tensorflow" in row else ""), flush=True)
    print(f"\n{markdown_table(rows)}\n\n(python benchmarks/train_throughput.py "
          f"{' '.join(sys.argv[1:])}; {FLAGS.runs} run(s), the range over them)")
    print(json.dumps(rows))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
