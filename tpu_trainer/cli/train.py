"""tpu-trainer-train: train a config's model; everything lands in --workdir.

Examples:
  tpu-trainer-train --config=configs/cnn.py --config.data_dir=/tmp/digits --workdir=/tmp/run1
  tpu-trainer-train --config=configs/cnn.py:smoke --config.cpu_devices=2 \\
      --config.data_dir=/tmp/digits --workdir=/tmp/smoke
  tpu-trainer-train --config=configs/cnn.py --show_config   # every config key: value, meaning
  tpu-trainer-train --config=cnn --config.model=my_models.py:build ...  # your own model
  tpu-trainer-train --config=cnn --config.model=applications:EfficientNetV2B0 ...

config.model: a built-in name, PATH.py:FUNCTION, package.module:FUNCTION,
applications:NAME (keras.applications), or a function in the config file
(config.model = build); the builder's contract: README, "Your own model".

Any config key can be set with --config.KEY=VALUE. Rerun the same command after
a kill or preemption to resume from the last checkpoint. Exit status: 0 done;
2 bad input (one error: line); 3 the loss became NaN/Inf (nothing exported);
143 SIGTERM (130 SIGINT, Ctrl-C) arrived and a checkpoint was saved: rerun to resume
(a second Ctrl-C quits at once, unsaved).
"""
import json

from absl import flags

from tpu_trainer import cli
from tpu_trainer.errors import UserError


FLAGS = flags.FLAGS
cli.define_config_flags()
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs, the exported "
                    "model and metrics.json go (local or gs://).")


def main(argv):
  del argv
  config = cli.config_from_flags(FLAGS)
  if config is None:
    return
  if not FLAGS.workdir:
    raise UserError("--workdir is required: where the run's checkpoints, logs and model go.")
  workdir = cli.expand_path(FLAGS.workdir)
  from tpu_trainer import training  # pylint: disable=g-import-not-at-top
  result = training.run(config, workdir, started=cli.process_started())
  print(json.dumps(result))
  print(f"Model, checkpoints and metrics in {workdir}; "
        f"TensorBoard: scripts/tensorboard.sh {workdir}")


def run():
  cli.run(main, record_stop_signals=True)


if __name__ == "__main__":
  run()
