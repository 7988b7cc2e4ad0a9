"""tpu-trainer-data-service: a tf.data service dispatcher or worker, so that the
training input is prepared on other machines' CPUs (tpu_trainer/data/service.py).

Examples:
  tpu-trainer-data-service --role=dispatcher --port=5050 --work_dir=gs://B/data-service
  tpu-trainer-data-service --role=worker --dispatcher=grpc://10.0.0.5:5050
  tpu-trainer-train --config=configs/resnet50.py --config.data_dir=gs://B/imagenet \\
      --workdir=gs://B/runs/r1 --config.input.service=grpc://10.0.0.5:5050

Workers read the shards themselves: the dataset must be readable from them
(gs:// in the cloud). Runs until SIGTERM or Ctrl-C, then stops cleanly (exit 0).
"""
import signal
import socket
import time

from absl import flags
from absl import logging

from tpu_trainer import cli
from tpu_trainer import stopping
from tpu_trainer.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_enum("role", None, ["dispatcher", "worker"], "What this process serves.",
                  required=True)
flags.DEFINE_integer("port", 0, "Port to serve on (dispatcher: default 5050; worker: default "
                     "any free port).")
flags.DEFINE_string("work_dir", "", "dispatcher: a local dir or gs:// prefix where it journals "
                    "its state; a dispatcher restarted with the same work_dir carries on "
                    "with the running jobs.")
flags.DEFINE_float("worker_timeout_s", 10, "dispatcher: seconds without a heartbeat before "
                   "a worker's share goes to the others.")
flags.DEFINE_string("dispatcher", "", "worker: the dispatcher, grpc://HOST:PORT.")
flags.DEFINE_string("worker_host", "", "worker: the name trainers reach this machine by "
                    "(default: its hostname).")


def main(argv):
  del argv
  cli.import_tensorflow_quietly()
  from tpu_trainer.data import service  # pylint: disable=g-import-not-at-top
  if FLAGS.port < 0 or FLAGS.port > 65535:
    raise UserError(f"--port={FLAGS.port} must be a port number (0-65535).")
  port = FLAGS.port or (service.DEFAULT_PORT if FLAGS.role == "dispatcher" else 0)
  if port:
    service.check_port_free(port)
  if FLAGS.role == "dispatcher":
    if FLAGS.dispatcher:
      raise UserError("--dispatcher is for --role=worker; a dispatcher takes --port.")
    try:  # the server lives as long as this object does
      server = service.start_dispatcher(port, cli.expand_path(FLAGS.work_dir),
                                        FLAGS.worker_timeout_s)
    except Exception as e:  # pylint: disable=broad-except  (TensorFlow's status errors)
      raise UserError(f"Cannot start a dispatcher on port {port}: "
                      f"{(str(e).splitlines() or [''])[0][:300]}") from None
    logging.info("tf.data service dispatcher on port %d%s; trainers pass "
                 "--config.input.service=grpc://%s:%d.", port,
                 f", journal in {FLAGS.work_dir}" if FLAGS.work_dir else
                 " (no --work_dir: a restart forgets its jobs)", socket.gethostname(), port)
  else:
    if not FLAGS.dispatcher:
      raise UserError("--role=worker needs --dispatcher=grpc://HOST:PORT.")
    service.check_reachable(FLAGS.dispatcher, "--dispatcher")
    try:
      server = service.start_worker(FLAGS.dispatcher, port, FLAGS.worker_host)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"Cannot start a worker: {(str(e).splitlines() or [''])[0][:300]}") \
          from None
  signals = stopping.StopSignals()
  while not signals.received:
    time.sleep(0.2)
  logging.info("Stopped (%s).", signal.Signals(signals.signum).name)
  del server


def run():
  cli.run(main, record_stop_signals=True)


if __name__ == "__main__":
  run()
