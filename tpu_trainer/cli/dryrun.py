"""tpu-trainer-dryrun: the main job on this machine, in one process.

Converts the built-in digits (as tpu-trainer-convert does), trains a recipe on
logical CPU replicas (as tpu-trainer-train does: the multi-replica path a TPU
runs) and evaluates the exported SavedModel (as tpu-trainer-eval does): the same
library calls as the three tools, with one Python start and one TensorFlow import.
The data is read in a fixed order (--reproducible): a rerun on the same machine
gives the same numbers.

Examples:
  tpu-trainer-dryrun
  tpu-trainer-dryrun --output_dir=/tmp/dry --config.cpu_devices=8
  tpu-trainer-dryrun --config=configs/conv_bn.py --config.epochs=3
  tpu-trainer-dryrun --config.backend=jax
"""
import getpass
import json
import os
import tempfile

from absl import flags

from tpu_trainer import cli

cli.define_config_flags(default=cli.packaged_recipe("cnn.py"))
FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", os.path.join(tempfile.gettempdir(),
                                               f"tpu_trainer_dryrun-{getpass.getuser()}"),
                    "Where data/ (the converted digits) and workdir/ (the run) go.")
flags.DEFINE_bool("reproducible", True, "Read the data in a fixed order "
                  "(config.input.deterministic): a rerun gives the same numbers.")


def main(argv):
  del argv
  config = cli.config_from_flags(FLAGS)
  if config is None:
    return
  from tpu_trainer import evaluation  # pylint: disable=g-import-not-at-top
  from tpu_trainer import lock  # pylint: disable=g-import-not-at-top
  from tpu_trainer import training  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import convert  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import sources  # pylint: disable=g-import-not-at-top
  out = cli.expand_path(FLAGS.output_dir)
  data, workdir = os.path.join(out, "data"), os.path.join(out, "workdir")
  # A fresh run each time, but never under another live one: the lock first.
  workdir_lock = lock.WorkdirLock(workdir).acquire()
  try:
    training.clear_workdir(workdir)
    # One writer process: TensorFlow is loaded here, and forking after that is unsafe.
    dataset = convert.convert(sources.digits(), data, workers=1)
    cli.print_written(dataset, data)
    with config.unlocked():
      config.data_dir = data
      if FLAGS.reproducible:
        config.input.deterministic = True
      if not config.cpu_devices and config.backend == "tensorflow":
        config.cpu_devices = 2  # the multi-replica path; JAX runs one process per device
    print(json.dumps(training.run(config, workdir)))
    print(json.dumps(evaluation.evaluate(workdir,
                                       model_path=os.path.join(workdir, "saved_model"))))
  finally:
    workdir_lock.release()


def run():
  cli.run(main, record_stop_signals=True)


if __name__ == "__main__":
  run()
