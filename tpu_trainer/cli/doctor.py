"""tpu-trainer-doctor: preflight checks before launching on a Cloud TPU.

Examples:
  tpu-trainer-doctor --config=configs/cnn.py --config.data_dir=/tmp/digits
  tpu-trainer-doctor --config=configs/resnet50.py --config.data_dir=gs://B/imagenet \\
      --config.tpu_zone=us-central2-b --accelerator=v4-32
  tpu-trainer-doctor --config=configs/resnet50.py --show_config   # every config key

Prints one line per check (OK / WARN / FAIL / SKIP, and what to change); exits
1 when any check fails.
"""
import sys

from absl import flags

from tpu_trainer import cli
from tpu_trainer.errors import UserError


FLAGS = flags.FLAGS
cli.define_config_flags()
flags.DEFINE_string("accelerator", "v4-8", "The TPU slice the job will run on.")
flags.DEFINE_float("input_seconds", 3.0, "How long to time the input pipeline (local data).")


def main(argv):
  del argv
  config = cli.config_from_flags(FLAGS)
  if config is None:
    return
  if not config.data_dir:
    raise UserError("Pass --config.data_dir=DIR (local or gs://).")
  from tpu_trainer import doctor  # pylint: disable=g-import-not-at-top
  checks = doctor.run_checks(config, FLAGS.accelerator, FLAGS.input_seconds)
  print(doctor.format_table(checks))
  failed = [c.name for c in checks if c.status == "FAIL"]
  print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}" if failed
        else "\nReady to launch.")
  sys.exit(1 if failed else 0)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
