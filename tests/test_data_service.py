"""Training input through tf.data service: a dispatcher and two workers as real
processes on localhost (tpu-trainer-data-service), trainers reading from them."""
import json
import re
import signal
import socket
import time

import pytest
import tensorflow as tf

from conftest import run_cli
from conftest import start_cli
from conftest import wait_for
from tpu_trainer import training



def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Service:
  """A dispatcher (journal in work_dir) and `workers` workers on localhost."""

  def __init__(self, tmp_path, workers=2, host="localhost"):
    """host: the name (or address) trainers and workers reach this machine by."""
    self.tmp_path, self.port, self.host = tmp_path, _free_port(), host
    self.address = f"grpc://{f'[{host}]' if ':' in host else host}:{self.port}"
    self.dispatcher = self._dispatcher()
    self.workers = [self.add_worker(i) for i in range(workers)]
    self.trainers = []  # stopped with the service, whatever the test's outcome

  def start_trainer(self, *args, log):
    self.trainers.append(start_cli("train", *args, f"--config.input.service={self.address}",
                                   log=log))
    return self.trainers[-1]

  def _dispatcher(self, journal=True):
    log = self.tmp_path / "dispatcher.log"
    proc = start_cli("data_service", "--role=dispatcher", f"--port={self.port}",
                     *([f"--work_dir={self.tmp_path / 'journal'}"] if journal else []),
                     "--worker_timeout_s=2", log=log)
    wait_for(lambda: "dispatcher on port" in log.read_text(), proc, log, timeout=120)
    return proc

  def add_worker(self, i):
    log = self.tmp_path / f"worker{i}.log"
    proc = start_cli("data_service", "--role=worker", f"--dispatcher={self.address}",
                     f"--worker_host={self.host}", log=log)
    wait_for(lambda: "Worker registered" in log.read_text(), proc, log, timeout=120)
    return proc

  def restart_dispatcher(self, journal=True):
    self.dispatcher.kill()
    self.dispatcher.wait()
    self.dispatcher = self._dispatcher(journal)

  def stop(self):
    for proc in [*self.trainers, self.dispatcher, *self.workers]:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def data_service(tmp_path):
  service = Service(tmp_path)
  yield service
  service.stop()


def _config(digits_dir, **overrides):
  from configs import cnn  # pylint: disable=g-import-not-at-top
  config = cnn.get_config()
  # 440 steps: both runs reach the plateau (~0.97), so the comparison is not between two
  # points on a steep curve (88 steps left 0.88-0.93, order-dependent).
  config.data_dir, config.batch_size, config.epochs = digits_dir, 32, 10
  for key, value in overrides.items():
    (config.input if key in config.input else config)[key] = value
  return config


def test_training_through_the_service_reaches_the_local_pipelines_accuracy(
    digits_dir, tmp_path, data_service):
  one_device = tf.distribute.get_strategy()
  local = training.run(_config(digits_dir), str(tmp_path / "local"), one_device)
  served = training.run(_config(digits_dir, service=data_service.address),
                     str(tmp_path / "served"), one_device)
  assert served["step"] == local["step"] == 10 * (1437 // 32)
  assert local["accuracy"] > 0.93 and served["accuracy"] > 0.93
  assert abs(served["accuracy"] - local["accuracy"]) < 0.03
  assert served["eval_examples"] == 360  # evaluation stays local and exact


def test_a_lost_worker_and_a_restarted_dispatcher_do_not_stop_training(digits_dir, tmp_path,
                                                                        data_service):
  log = tmp_path / "train.log"
  trainer = data_service.start_trainer(
      "--config=configs/cnn.py", f"--config.data_dir={digits_dir}", f"--workdir={tmp_path / 'w'}",
      "--config.batch_size=64", "--config.steps=2500", "--config.log_every_steps=100", log=log)
  wait_for(lambda: "step 100/" in log.read_text(), trainer, log, timeout=300)
  data_service.workers[0].kill()
  data_service.restart_dispatcher()
  assert trainer.wait(timeout=300) == 0, log.read_text()[-3000:]
  metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
  assert metrics["step"] == 2500 and metrics["accuracy"] > 0.9
  # The remaining worker stops cleanly on SIGTERM.
  worker = data_service.workers[1]
  worker.send_signal(signal.SIGTERM)
  assert worker.wait(timeout=60) == 0
  assert "Stopped (SIGTERM)" in (tmp_path / "worker1.log").read_text()


def test_workers_do_the_work(digits_dir, tmp_path):
  """With a dispatcher and no worker, a run waits; the first worker that joins
  feeds it to the end: the batches come from the workers, not this host."""
  service = Service(tmp_path, workers=0)
  try:
    log = tmp_path / "train.log"
    trainer = service.start_trainer("--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
                                    f"--workdir={tmp_path / 'w'}", "--config.steps=200", log=log)
    wait_for(lambda: "Compiling" in log.read_text(), trainer, log, timeout=300)
    time.sleep(5)
    assert not re.search(r"step \d+/", log.read_text()) and trainer.poll() is None
    service.workers.append(service.add_worker(0))
    assert trainer.wait(timeout=300) == 0, log.read_text()[-3000:]
  finally:
    service.stop()


@pytest.mark.parametrize("given,parsed,target", [
    ("grpc://10.0.0.5:5050", ("grpc", "10.0.0.5", 5050), "10.0.0.5:5050"),
    ("10.0.0.5:5050", ("grpc", "10.0.0.5", 5050), "10.0.0.5:5050"),  # the scheme implied
    ("data-0:5050", ("grpc", "data-0", 5050), "data-0:5050"),
    ("grpc://data-0.example.com:5050/", ("grpc", "data-0.example.com", 5050),
     "data-0.example.com:5050"),
    ("grpc+loas://data-0:5050", ("grpc+loas", "data-0", 5050), "data-0:5050"),
    ("grpc://[::1]:5050", ("grpc", "::1", 5050), "[::1]:5050"),  # IPv6 keeps its brackets
    ("[fe80::1]:6000", ("grpc", "fe80::1", 6000), "[fe80::1]:6000"),
])
def test_the_address_forms_a_user_writes(given, parsed, target):
  from tpu_trainer.data import service  # pylint: disable=g-import-not-at-top
  assert service.parse_address(given) == parsed
  assert service.host_port(*parsed[1:]) == target


@pytest.mark.parametrize("given", ["http://data-0:5050", "grpc://data-0", "data-0",
                                   "grpc://data-0:5050/jobs", "grpc://:5050",
                                   "grpc://data-0:99999"])
def test_addresses_that_are_not_one_are_refused_saying_the_form(given):
  from tpu_trainer.data import service  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"expected grpc://HOST:PORT"):
    service.parse_address(given)


def test_bad_addresses_and_ports_are_one_error_line(digits_dir, tmp_path):
  closed = _free_port()
  cases = [
      (("train", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
        f"--workdir={tmp_path / 'w'}", f"--config.input.service=grpc://127.0.0.1:{closed}"),
       "No tf.data service dispatcher answers at grpc://127.0.0.1:"),
      (("train", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
        f"--workdir={tmp_path / 'w'}", "--config.input.service=http://somewhere"),
       "expected grpc://HOST:PORT"),
      (("data_service", "--role=worker", f"--dispatcher=grpc://127.0.0.1:{closed}"),
       "fix --dispatcher"),
      (("data_service", "--role=worker"), "--role=worker needs --dispatcher"),
  ]
  for args, fragment in cases:
    start = time.perf_counter()
    result = run_cli(*args)
    assert time.perf_counter() - start < 60, args  # no hang
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, last
    assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()

  with socket.socket() as taken:
    taken.bind(("", 0))
    taken.listen()
    result = run_cli("data_service", "--role=dispatcher", f"--port={taken.getsockname()[1]}")
  assert result.returncode == 2 and "is taken" in result.stderr.strip().splitlines()[-1]


def test_the_jax_backend_trains_through_the_service(digits_dir, tmp_path, data_service):
  result = run_cli("train", "--config=configs/cnn.py", f"--config.data_dir={digits_dir}",
                   f"--workdir={tmp_path / 'w'}", "--config.backend=jax",
                   f"--config.input.service={data_service.address}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Training input from the tf.data service at {data_service.address}" in result.stderr
  metrics = json.loads(result.stdout.splitlines()[0])
  assert metrics["backend"] == "jax" and metrics["accuracy"] > 0.9


@pytest.mark.parametrize("worker,stop", [("none", "sigterm"), ("unresolvable", "ctrl-c twice")])
def test_a_trainer_whose_service_serves_nothing_says_so_and_stops_when_told(
    digits_dir, tmp_path, worker, stop):
  """No worker, or only one advertising a name this host cannot resolve: the
  trainer's first step waits on the service forever. It says so while it waits,
  and SIGTERM (after its grace) or a second Ctrl-C (at once) ends it."""
  service = Service(tmp_path, workers=0)
  try:
    if worker == "unresolvable":
      log = tmp_path / "worker.log"
      service.workers.append(start_cli(
          "data_service", "--role=worker", f"--dispatcher={service.address}",
          "--worker_host=no-such-host.invalid", log=log))
      wait_for(lambda: "Worker registered" in log.read_text(), service.workers[-1], log)
    log = tmp_path / "trainer.log"
    trainer = service.start_trainer(
        "--config=configs/mlp.py", f"--workdir={tmp_path / 'w'}",
        f"--config.data_dir={digits_dir}", "--config.steps=20",
        "--config.storage_timeout_secs=15", log=log)
    waiting = re.compile(r"The training step has not returned in \d+ s: waiting for batches "
                         f"from the tf.data service at {re.escape(service.address)}")
    wait_for(lambda: waiting.search(log.read_text()), trainer, log, timeout=180)
    start = time.monotonic()
    if stop == "sigterm":
      trainer.send_signal(signal.SIGTERM)
      assert trainer.wait(timeout=60) == 143, log.read_text()[-3000:]
      assert "preempted: SIGTERM, and the training step in progress had not returned 30 s " \
             "later" in log.read_text()
    else:
      trainer.send_signal(signal.SIGINT)
      time.sleep(1)
      trainer.send_signal(signal.SIGINT)
      assert trainer.wait(timeout=60) == 130, log.read_text()[-3000:]
      assert time.monotonic() - start < 10
      assert "interrupted (Ctrl-C twice): stopped without saving" in log.read_text()
  finally:
    service.stop()


def test_an_ipv6_dispatcher_and_worker_serve_a_trainer(digits_dir, tmp_path):
  """grpc://[::1]:PORT passed the address check, then lost its brackets when the
  address was rebuilt: the trainer waited in silence."""
  service = Service(tmp_path, workers=1, host="::1")
  try:
    log = tmp_path / "trainer.log"
    trainer = service.start_trainer(
        "--config=configs/mlp.py", f"--workdir={tmp_path / 'w'}",
        f"--config.data_dir={digits_dir}", "--config.steps=20", log=log)
    assert trainer.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert json.loads((tmp_path / "w" / "metrics.json").read_text())["step"] == 20
    assert f"tf.data service at grpc://[::1]:{service.port}" in log.read_text()
  finally:
    service.stop()


def test_a_dispatcher_restarted_without_its_journal_is_one_line(digits_dir, tmp_path,
                                                                data_service):
  """Restarted without --work_dir, the dispatcher forgets the trainer's job:
  that was a Python traceback ("Unknown iteration client id")."""
  log = tmp_path / "train.log"
  trainer = data_service.start_trainer(
      "--config=configs/mlp.py", f"--config.data_dir={digits_dir}", f"--workdir={tmp_path / 'w'}",
      "--config.batch_size=64", "--config.steps=100000", "--config.log_every_steps=20",
      "--config.checkpoint_every_steps=20", log=log)
  wait_for(lambda: "step 40/" in log.read_text(), trainer, log, timeout=300)
  data_service.restart_dispatcher(journal=False)
  assert trainer.wait(timeout=300) == 2, log.read_text()[-3000:]
  text = log.read_text()
  assert "Traceback" not in text
  last = text.strip().splitlines()[-1]
  assert last.startswith(f"error: The tf.data service dispatcher at {data_service.address} "
                         "restarted without its journal"), last
  assert "Restart it with --work_dir=DIR" in last and "resumes from the last checkpoint (" in last
