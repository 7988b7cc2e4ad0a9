"""tpu-trainer-eval: evaluate a training run's saved model on every example of a split.

Examples:
  tpu-trainer-eval --workdir=/tmp/run1
  tpu-trainer-eval --workdir=/tmp/run1 --model=/tmp/run1/saved_model --split=train
  tpu-trainer-train --config=configs/cnn.py --show_config   # every config key

Prints the loss and accuracy as JSON and writes them, with per-class accuracy,
to WORKDIR/eval_SPLIT.json.
"""
import json

from absl import flags
from absl import logging

from tpu_trainer import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A tpu-trainer-train workdir.", required=True)
flags.DEFINE_string("model", "", "A .keras file or SavedModel dir; default WORKDIR/model.keras.")
flags.DEFINE_string("split", "", "Default: the config's input.eval_split.")
flags.DEFINE_string("data_dir", "", "Default: the config's data_dir.")
flags.DEFINE_integer("batch_size", 0, "Default: the config's batch_size.")


def main(argv):
  del argv
  cli.import_tensorflow_quietly()
  from tpu_trainer import evaluation  # pylint: disable=g-import-not-at-top
  workdir = cli.expand_path(FLAGS.workdir)
  result = evaluation.evaluate(workdir, model_path=cli.expand_path(FLAGS.model),
                             split=FLAGS.split, data_dir=cli.expand_path(FLAGS.data_dir),
                             batch_size=FLAGS.batch_size)
  print(json.dumps(result))
  logging.info("Per-class accuracy, confusion matrix and predictions: %s/eval_*.json, "
               "eval_*_confusion.png, eval_*_predictions.png", workdir)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
