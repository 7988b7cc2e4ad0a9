"""The console scripts as pip installed them (not `python -m`), one real run
each, from a directory outside the repository (only the installed package and
the config files the user names)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

BIN = os.path.dirname(sys.executable)


def _run(tool, *args, cwd):
  path = os.path.join(BIN, f"tpu-trainer-{tool}")
  assert os.access(path, os.X_OK), f"{path} is not installed: pip install -e {REPO}"
  result = subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.core
def test_every_console_script_runs_as_installed(tmp_path):
  data, workdir = str(tmp_path / "digits"), str(tmp_path / "run")
  config = os.path.join(REPO, "configs", "mlp.py")
  out = _run("convert", "--source=digits", f"--output_dir={data}", cwd=tmp_path).stdout
  assert '"train": {"examples": 1437' in out
  result = _run("train", f"--config={config}", f"--config.data_dir={data}",
                f"--workdir={workdir}", "--config.steps=40", "--config.steps_per_execution=10",
                cwd=tmp_path)
  trained = json.loads(result.stdout.splitlines()[0])
  assert trained["step"] == 40
  evaluated = json.loads(_run("eval", f"--workdir={workdir}", cwd=tmp_path).stdout
                         .splitlines()[-1])
  assert evaluated["examples"] == 360 and evaluated["accuracy"] == pytest.approx(
      trained["accuracy"], abs=1 / 360)
  doctor = _run("doctor", f"--config={config}", f"--config.data_dir={data}",
                "--input_seconds=0.2", cwd=tmp_path).stdout
  assert "Ready to launch." in doctor
  rates = json.loads(_run("benchmark", "input", f"--config={config}",
                          f"--config.data_dir={data}", "--seconds=0.5", "--nomodel_rate",
                          cwd=tmp_path).stdout.splitlines()[-1])
  assert rates["input_examples_per_second"] > 0
  dry = _run("dryrun", f"--output_dir={tmp_path / 'dry'}", "--help", cwd=tmp_path).stdout
  assert "tpu-trainer-dryrun" in dry  # its full run is tests/test_dryrun.py's
  served = _run("data-service", "--help", cwd=tmp_path).stdout  # tests/test_data_service.py
  assert "--role=dispatcher" in served


def test_a_built_wheel_carries_the_recipes(tmp_path, installed_wheel):
  """Not an editable checkout: the wheel alone, installed, finds its recipes (by
  file name, or the checkout's configs/NAME.py spelling) from any directory."""
  target, elsewhere = installed_wheel, tmp_path / "elsewhere"
  elsewhere.mkdir()
  # The wheel's package first on the path (the test's own dependencies after it).
  env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "2"}

  def run(*args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout

  out = run("tpu_trainer.cli.train", "--config=configs/mlp.py", "--show_config")
  assert "model = 'mlp'" in out
  assert "model = 'conv_bn'" in run("tpu_trainer.cli.train", "--config=conv_bn", "--show_config")
  dry = run("tpu_trainer.cli.dryrun", f"--output_dir={tmp_path / 'dry'}", "--config.epochs=1")
  assert json.loads([l for l in dry.splitlines() if l.startswith("{")][-1])["examples"] == 360
  # And it was the wheel's code that ran, with the wheel's recipes.
  probe = run("tpu_trainer.cli.train", "--config=cnn.py", "--show_config")
  assert "model = 'cnn'" in probe
  where = subprocess.run([sys.executable, "-c", "import tpu_trainer.cli as c; "
                          "print(c.__file__, c.packaged_recipe('cnn.py'))"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=60).stdout
  assert where.count(str(target)) == 2, where
