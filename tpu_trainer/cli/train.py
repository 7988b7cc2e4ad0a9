"""tpu-trainer-train: train a config's model; everything lands in --workdir.

  tpu-trainer-train --config=configs/cnn.py --config.data_dir=DIR --workdir=W
  tpu-trainer-train --config=configs/cnn.py:smoke --config.cpu_devices=2 ...

Rerun the same command after a kill or preemption to resume from the last
checkpoint. Exit status 143 means SIGTERM arrived and a checkpoint was saved.
"""
import json
import sys

from absl import flags
from ml_collections import config_flags

from tpu_trainer import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file[:arg].", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs, the exported "
                    "model and metrics.json go (local or gs://).", required=True)


def main(argv):
  del argv
  if FLAGS.config is None:
    raise ValueError("--config is required, e.g. --config=configs/cnn.py.")
  from tpu_trainer import train  # pylint: disable=g-import-not-at-top
  try:
    result = train.run(FLAGS.config, FLAGS.workdir)
  except train.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(143)
  print(json.dumps(result))
  print(f"Model, checkpoints and metrics in {FLAGS.workdir}; "
        f"TensorBoard: scripts/tensorboard.sh {FLAGS.workdir}")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
