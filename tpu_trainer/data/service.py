"""Input at pod scale: the training pipeline run on other machines' CPUs through
tf.data service, TensorFlow's own distributed input engine.

A dispatcher keeps track of workers and jobs; each worker runs the pipeline it is
sent (reading the shards itself, so data_dir must be readable from the workers:
gs:// on Cloud TPU) and streams finished batches to the trainers. Each trainer
host sends its own per-host share of the data (the same graph the local pipeline
runs, up to the parsed, augmented batches) as its own job, in parallel-epochs
mode: every worker runs the whole share, shuffled by its own seed, and the host
reads from whichever worker has a batch ready. A worker lost mid-run costs its
rate, not the job; a dispatcher restarted with the same work_dir (its journal)
picks its jobs up again. Evaluation stays local: exactly every example once is a
guarantee the service's streaming cannot keep through a lost worker.
"""
import contextlib
import socket
import time
import urllib.parse

from absl import logging
import tensorflow as tf

from tpu_trainer.errors import UserError

DEFAULT_PORT = 5050
# How long the dispatcher waits for a silent worker before giving its work to the
# others: TensorFlow's default is an hour; a lost VM should cost seconds.
WORKER_TIMEOUT_S = 10


def parse_address(address: str) -> tuple[str, str, int]:
  """'grpc://HOST:PORT' or 'HOST:PORT' -> ('grpc', HOST, PORT); anything else is
  a UserError saying the form."""
  text = address if "://" in address else f"grpc://{address}"
  parsed = urllib.parse.urlsplit(text)
  try:
    port = parsed.port
  except ValueError:
    port = None
  if parsed.scheme not in ("grpc", "grpc+loas") or not parsed.hostname or not port \
      or parsed.path not in ("", "/"):
    raise UserError(f"tf.data service address {address!r}: expected grpc://HOST:PORT (the "
                    "dispatcher's, e.g. grpc://10.0.0.5:5050).")
  return parsed.scheme, parsed.hostname, port


def host_port(host: str, port) -> str:
  """HOST:PORT as gRPC takes it: an IPv6 address in brackets ([::1]:5050)."""
  return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_reachable(address: str, flag: str = "config.input.service",
                    timeout_s: float = 10.0) -> None:
  """One TCP connection to the dispatcher. tf.data service itself retries an
  unreachable dispatcher for as long as the job runs, silently: a wrong address
  or a dispatcher that is not up must be one error line before the first step."""
  _, host, port = parse_address(address)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise UserError(
            f"No tf.data service dispatcher answers at {address} ({e.strerror or e}): start "
            f"one there (tpu-trainer-data-service --role=dispatcher --port={port}), or "
            f"fix {flag}.") from None
      time.sleep(0.5)


def explain_lost_job(address: str, last_checkpoint: str) -> UserError:
  """What a trainer says when its dispatcher came back without its journal
  ("Unknown iteration client id ... not configured to be fault tolerant")."""
  return UserError(f"The tf.data service dispatcher at {address} restarted without its "
                   "journal: the jobs this run read from are gone. Restart it with "
                   "--work_dir=DIR (a local dir or gs:// prefix it journals to; "
                   "scripts/launch_tpu.sh always gives one), then rerun the same command: "
                   f"it resumes from the last checkpoint ({last_checkpoint}).")


def check_port_free(port: int) -> None:
  """gRPC binds with SO_REUSEPORT: a second server on a taken port would start and
  share it with the first, each answering some of the connections. Refused here."""
  with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
    # SO_REUSEADDR: connections of a server just stopped (TIME_WAIT) don't hold the
    # port; a listening one still does.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind(("::" if socket.has_ipv6 else "", port))
    except OSError as e:
      raise UserError(f"Port {port} is taken ({e.strerror or e}): is a dispatcher or worker "
                      "already running here? Stop it, or pass another --port.") from None


def distribute(dataset: tf.data.Dataset, address: str, job_name: str = "") -> tf.data.Dataset:
  """`dataset`, produced by the service's workers instead of this host.

  Without a job name every iterator is its own job (one per trainer host); with
  one, iterators with the same name share a job (each batch goes to one of them).
  """
  protocol, host, port = parse_address(address)
  return dataset.apply(tf.data.experimental.service.distribute(
      processing_mode=tf.data.experimental.service.ShardingPolicy.OFF,
      service=f"{protocol}://{host_port(host, port)}", job_name=job_name or None))


def start_dispatcher(port: int, work_dir: str = "",
                     worker_timeout_s: float = WORKER_TIMEOUT_S):
  """A dispatcher serving on `port`; with work_dir (local or gs://) it journals its
  state there, and a restarted one carries on with the same jobs."""
  config = tf.data.experimental.service.DispatcherConfig(
      port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir),
      worker_timeout_ms=int(worker_timeout_s * 1000))
  return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher: str, port: int = 0, host: str = ""):
  """A worker registered with `dispatcher`, serving on `port` (0: any free one) and
  known to trainers as host:port (host: this machine's name by default)."""
  _, dispatcher_host, dispatcher_port = parse_address(dispatcher)
  config = tf.data.experimental.service.WorkerConfig(
      dispatcher_address=host_port(dispatcher_host, dispatcher_port),
      worker_address=host_port(host or socket.gethostname(), "%port%"), port=port)
  server = tf.data.experimental.service.WorkerServer(config)
  logging.info("Worker registered with the dispatcher at %s.",
               host_port(dispatcher_host, dispatcher_port))
  return server


@contextlib.contextmanager
def local_service(workers: int = 1):
  """A dispatcher and `workers` workers in this process, on free ports: the
  address to distribute to. For measuring what one worker delivers."""
  dispatcher = tf.data.experimental.service.DispatchServer(
      tf.data.experimental.service.DispatcherConfig(port=0))
  address = dispatcher.target  # grpc://localhost:PORT
  servers = [tf.data.experimental.service.WorkerServer(
      tf.data.experimental.service.WorkerConfig(dispatcher_address=address.split("://")[1]))
             for _ in range(workers)]
  try:
    yield address
  finally:
    del servers, dispatcher  # the servers stop with their objects
