"""tpu-trainer-eval: evaluate a training run's saved model on every example of a split.

  tpu-trainer-eval --workdir=W [--model=W/saved_model] [--split=test]
"""
import json

from absl import flags

from tpu_trainer import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A tpu-trainer-train workdir.", required=True)
flags.DEFINE_string("model", "", "A .keras file or SavedModel dir; default WORKDIR/model.keras.")
flags.DEFINE_string("split", "", "Default: the config's eval_split.")
flags.DEFINE_string("data_dir", "", "Default: the config's data_dir.")
flags.DEFINE_integer("batch_size", 0, "Default: the config's batch_size.")


def main(argv):
  del argv
  from tpu_trainer import evaluate  # pylint: disable=g-import-not-at-top
  result = evaluate.evaluate(FLAGS.workdir, model_path=FLAGS.model, split=FLAGS.split,
                             data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size)
  print(json.dumps(result))


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
