"""Training examples/s of tpu_trainer vs the plain-Keras seed recipe, same run.

tpu_trainer: 28x28 records from TFRecords, our loop (precision auto,
steps_per_execution 20). Plain Keras: the seed tutorials' way — tf.data from
numpy, batch 1024, float32, model.fit. Same architecture, data and epochs.
The data: scikit-learn's digits upscaled to 28x28 (Fashion-MNIST's size),
repeated to make longer epochs.

  python benchmarks/train_throughput.py [--models=cnn,mlp] [--epochs=4] [--repeat=20]
"""
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tpu_trainer import config as config_lib  # pylint: disable=g-import-not-at-top
from tpu_trainer import train  # pylint: disable=g-import-not-at-top
from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
from tpu_trainer.models import build_model  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("models", ["cnn", "mlp"], "Models to compare.")
flags.DEFINE_integer("epochs", 4, "Epochs for both.")
flags.DEFINE_integer("repeat", 20, "Copies of the digits training set.")
flags.DEFINE_integer("batch_size", 1024, "Global batch for both.")
FLAGS = flags.FLAGS


def digits28(repeat):
  """Digits at 28x28: train (repeated) and test arrays."""
  source = sources.digits()
  def arrays(split, copies):
    s = source.splits[split]
    xs, ys = zip(*s.read(range(s.num_examples)))
    x = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((28, 28), Image.BILINEAR))
                  for im in xs])[..., None]
    return np.tile(x, (copies, 1, 1, 1)), np.tile(np.array(ys), copies)
  return arrays("train", repeat), arrays("test", 1)


def plain_keras(name, train_xy, test_xy, epochs, batch):
  keras.mixed_precision.set_global_policy("float32")
  config = config_lib.default_config()
  config.model = name
  model = build_model(config, (28, 28, 1), 10)
  model.compile(keras.optimizers.Adam(1e-3 * batch / 256), "sparse_categorical_crossentropy",
                metrics=["accuracy"])
  ds = tf.data.Dataset.from_tensor_slices(train_xy).shuffle(10_000).batch(batch).prefetch(2)
  times = []

  class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      times.append(time.perf_counter() - self.start)

  model.fit(ds, epochs=epochs, verbose=0, callbacks=[Timer()])
  _, accuracy = model.evaluate(*test_xy, batch_size=batch, verbose=0)
  # First epoch excluded (tracing), as tpu_trainer's examples_per_second does.
  return len(train_xy[0]) * (epochs - 1) / sum(times[1:]), accuracy


def ours(name, data_dir, workdir, epochs, batch):
  config = config_lib.default_config()
  config.update({"model": name, "data_dir": data_dir, "batch_size": batch, "epochs": epochs,
                 "base_lr": 1e-3, "steps_per_execution": 20, "eval_every_epochs": epochs})
  metrics = train.run(config, workdir, tf.distribute.OneDeviceStrategy("/cpu:0"))
  if metrics["examples_per_second"] is None:
    raise SystemExit("Too few steps to time after the first (compiling) call: raise "
                     "--epochs or --repeat.")
  return metrics["examples_per_second"], metrics["accuracy"], metrics["precision"]


def main(_):
  logging.set_verbosity(logging.WARNING)
  train_xy, test_xy = digits28(FLAGS.repeat)
  tmp = tempfile.mkdtemp(prefix="bench_train_")
  source = sources.Source("digits28", [str(i) for i in range(10)], (28, 28, 1), {
      "train": sources.split_from_arrays(*train_xy), "test": sources.split_from_arrays(*test_xy)})
  convert.convert(source, os.path.join(tmp, "data"), min_shards=8)
  print(f"{len(train_xy[0])} train images 28x28, batch {FLAGS.batch_size}, "
        f"{FLAGS.epochs} epochs, {os.cpu_count()} cores")
  rows = []
  for name in FLAGS.models:
    base_rate, base_acc = plain_keras(name, train_xy, test_xy, FLAGS.epochs, FLAGS.batch_size)
    rate, acc, precision = ours(name, os.path.join(tmp, "data"), os.path.join(tmp, name),
                                FLAGS.epochs, FLAGS.batch_size)
    rows.append({"model": name, "plain_keras_ex_s": round(base_rate),
                 "plain_keras_accuracy": round(base_acc, 4), "tpu_trainer_ex_s": round(rate),
                 "tpu_trainer_accuracy": round(acc, 4), "precision": precision,
                 "ratio": round(rate / base_rate, 2)})
    print(f"{name}: plain Keras {base_rate:8.0f} ex/s (acc {base_acc:.4f}) | "
          f"tpu_trainer {rate:8.0f} ex/s (acc {acc:.4f}, {precision}) | "
          f"ratio {rate / base_rate:.2f}x")
  print(json.dumps(rows))


if __name__ == "__main__":
  app.run(main)
