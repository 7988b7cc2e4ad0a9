"""Do the recipes' defaults learn as well as the plain-Keras seed recipe?

For each recipe, on digits and on any npz/idx dataset given, in the same run:
  plain Keras: the same architecture, float32, model.fit(batch 32, Adam 1e-3,
               constant rate), the seed tutorials' recipe;
  ours:        tpu-trainer's training.run with the recipe's defaults (batch and
               learning rate chosen for the dataset), at the same epochs.
Wall time is the whole call each: setup, training and the final evaluation.

  python benchmarks/accuracy.py [--datasets=digits,npz:fashion_mnist.npz] \
      [--recipes=mlp,cnn,cnn_deep,conv_bn,mobilenet_v2] [--epochs=10] [--seeds=5] \
      [--override=input.augment=False,precision=float32]
"""
import ast
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("datasets", ["digits"], "digits, shifted_digits:COPIES (synthetic, larger: "
                  "digits at 28x28, each copy shifted by up to 3 pixels), npz:FILE or idx:DIR.")
flags.DEFINE_list("recipes", ["mlp", "cnn", "cnn_deep", "conv_bn"],
                  "configs/NAME.py[:arg] to compare; mobilenet_v2 and resnet50 train from "
                  "scratch here (no weights download), slowly on a CPU.")
flags.DEFINE_integer("epochs", 10, "Epochs for both (the seed tutorials' 10).")
flags.DEFINE_integer("seeds", 5, "Runs per side, averaged: one digits test example is "
                     "0.28 points, and this VM's timings move by 25%.")
flags.DEFINE_list("override", [], "KEY=VALUE config settings for our side, e.g. "
                  "input.augment=False (the photo recipes' crops and flips on digits).")
FLAGS = flags.FLAGS


def shifted_digits(copies: int):
  """A larger dataset made here (nothing downloads): digits upscaled to 28x28
  (Fashion-MNIST's size), `copies` of the train split each shifted at random by
  up to 3 pixels; the test split likewise, 5 copies."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import sources  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  digits = sources.digits()

  def arrays(split, n):
    x, y = _arrays(digits.splits[split])
    x = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((22, 22), Image.BILINEAR))
                  for im in x])
    out = np.zeros((n * len(x), 28, 28, 1), np.uint8)
    for i in range(n):
      for j, (dy, dx) in enumerate(rng.integers(0, 7, (len(x), 2))):
        out[i * len(x) + j, dy:dy + 22, dx:dx + 22, 0] = x[j]
    return out, np.tile(y, n)

  (x_train, y_train), (x_test, y_test) = arrays("train", copies), arrays("test", 5)
  return sources.Source(f"shifted_digits{copies}", digits.class_names, (28, 28, 1), {
      "train": sources.split_from_arrays(x_train, y_train),
      "test": sources.split_from_arrays(x_test, y_test)})


def _arrays(split):
  images, labels = zip(*split.read(range(split.num_examples)))
  return np.stack(images), np.array(labels)


def _recipe(spec, data_dir):
  import importlib.util  # pylint: disable=g-import-not-at-top
  name, _, arg = spec.partition(":")
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      f"{name}.py")
  module_spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.data_dir = data_dir
  if config.weights != "none":
    config.weights = "none"  # nothing downloads here: both sides train from scratch
  return config


def _override(config, settings):
  for setting in settings:
    key, _, value = setting.partition("=")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a string, e.g. precision=float32
    config.update_from_flattened_dict({key: value})
  return config


def plain_keras(config, source, epochs, seed):
  """The seed tutorials' way: fit on numpy arrays, batch 32, Adam 1e-3, float32."""
  import keras  # pylint: disable=g-import-not-at-top
  from tpu_trainer.models import build_model  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy("float32")
  keras.utils.set_random_seed(seed)
  x_train, y_train = _arrays(source.splits["train"])
  x_test, y_test = _arrays(source.splits["test"])
  start = time.perf_counter()
  model = build_model(config, source.image_shape, len(source.class_names))
  model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                metrics=["accuracy"])
  if config.steps:  # smoke recipes: the same number of steps, not epochs
    model.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0,
              steps_per_epoch=config.steps)
  else:
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
  accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]
  return accuracy, time.perf_counter() - start


def ours(config, epochs, seed):
  from tpu_trainer import training  # pylint: disable=g-import-not-at-top
  config.epochs = epochs
  config.seed = seed
  with tempfile.TemporaryDirectory(prefix="bench_accuracy_") as workdir:
    start = time.perf_counter()
    metrics = training.run(config, workdir)
    elapsed = time.perf_counter() - start
    import json  # pylint: disable=g-import-not-at-top
    with open(os.path.join(workdir, "config.json")) as f:
      resolved = json.load(f)
  return metrics["accuracy"], elapsed, resolved


def main(_):
  logging.set_verbosity(logging.WARNING)
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  print(f"Mean of {FLAGS.seeds} seeds each, {FLAGS.epochs} epochs.")
  print(f"| dataset | recipe | plain Keras acc | time | ours acc | time | ours: batch, "
        f"peak lr, precision | Δ acc (points) | speed-up |")
  print("|---|---|---|---|---|---|---|---|---|")
  for spec in FLAGS.datasets:
    source = (shifted_digits(int(spec.split(":")[1])) if spec.startswith("shifted_digits:")
              else sources.load(spec))
    with tempfile.TemporaryDirectory(prefix="bench_accuracy_data_") as data_dir:
      convert.convert(source, data_dir)
      for recipe in FLAGS.recipes:
        plain, our = [], []
        for seed in range(FLAGS.seeds):
          plain.append(plain_keras(_recipe(recipe, data_dir), source, FLAGS.epochs, seed))
          our.append(ours(_override(_recipe(recipe, data_dir), FLAGS.override), FLAGS.epochs,
                          seed))
        plain_acc, plain_s = np.mean([p[0] for p in plain]), np.mean([p[1] for p in plain])
        our_acc, our_s = np.mean([o[0] for o in our]), np.mean([o[1] for o in our])
        resolved = our[0][2]
        print(f"| {source.name} ({source.splits['train'].num_examples} train) | {recipe} | "
              f"{plain_acc:.4f} | {plain_s:.1f} s | {our_acc:.4f} | {our_s:.1f} s | "
              f"{resolved['batch_size']}, {resolved['peak_learning_rate']:.2g}, "
              f"{resolved['precision']} | {100 * (our_acc - plain_acc):+.1f} | "
              f"{plain_s / our_s:.2f}x |", flush=True)


if __name__ == "__main__":
  app.run(main)
