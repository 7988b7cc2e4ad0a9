"""Shared fixtures. The CPU is split into 2 logical devices before TensorFlow
initialises, so in-process tests can run real 2-replica strategies."""
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # pylint: disable=g-import-not-at-top

from tpu_trainer import strategy as strategy_lib  # pylint: disable=g-import-not-at-top

strategy_lib.split_cpu(2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  """The built-in digits dataset, converted once for the session."""
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("digits"))
  convert.convert(sources.digits(), out)
  return out


def run_cli(name, *args, timeout=300, env=None):
  """Runs a console entry point as a subprocess; returns CompletedProcess."""
  cmd = [sys.executable, "-m", f"tpu_trainer.cli.{name}", *args]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})


FAKE_CLOUD = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$*" in
  "get pods"*) echo run-slice-0-0-abcde ;;
  "logs"*) echo "step 1/10 (10%): loss 2.3" ;;
  "apply -f "*) cp "$3" "$FAKE_LOG.applied" ;;
esac
"""


def fake_cloud(directory) -> dict:
  """kubectl and gcloud that record each call in directory/calls.log (the manifest
  kubectl applies beside it, as calls.log.applied): the environment to run with."""
  bin_dir = directory / "bin"
  bin_dir.mkdir()
  for tool in ("kubectl", "gcloud"):
    (bin_dir / tool).write_text(FAKE_CLOUD)
    (bin_dir / tool).chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(directory / "calls.log")}


def start_cli(name, *args, log, env=None):
  """Starts a console entry point in the background, its stderr into the file `log`."""
  with open(log, "w") as stderr:
    return subprocess.Popen([sys.executable, "-m", f"tpu_trainer.cli.{name}", *args], cwd=REPO,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for(condition, proc, log, timeout=180):
  """Until condition() holds, while the process `proc` (logging to `log`) lives."""
  deadline = time.time() + timeout
  while not condition():
    assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
    time.sleep(0.02)


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
  """The package as a user installs it: a wheel built from this checkout, installed
  into a folder of its own (put it first on PYTHONPATH); not the editable checkout."""
  root = tmp_path_factory.mktemp("wheel")
  wheels, target = root / "wheels", root / "site"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(wheels), REPO], check=True, timeout=300)
  wheel, = wheels.glob("tpu_trainer-*.whl")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  str(target), str(wheel)], check=True, timeout=300)
  return str(target)


@pytest.fixture(scope="session")
def gcs_emulator():
  """A fake-gcs-server for the session; tests get a fresh bucket via gcs_bucket."""
  from gcs_emulator import Emulator  # pylint: disable=g-import-not-at-top
  with Emulator() as emulator:
    yield emulator


@pytest.fixture(scope="session")
def tf_gcs_proxy(gcs_emulator, tmp_path_factory):
  """TensorFlow's own gs:// filesystem in front of the emulator: `env` to set."""
  from gcs_emulator import TensorFlowProxy  # pylint: disable=g-import-not-at-top
  with TensorFlowProxy(gcs_emulator.url, str(tmp_path_factory.mktemp("tls"))) as proxy:
    yield proxy


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch, request):
  """gs://NAME on the emulator, with STORAGE_EMULATOR_HOST set for the test."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
  from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
  name = "bucket-" + request.node.name.lower().replace("_", "-").replace("[", "-")[:40].strip("-]")
  storage.gcs_client().create_bucket(name)
  return name
