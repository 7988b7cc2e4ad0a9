"""The supported TensorFlow/Keras range is logged, enforced at startup, and checked
by the doctor."""
import json
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

from conftest import REPO
from tpu_trainer import doctor
from tpu_trainer import versions

pytestmark = pytest.mark.core


@pytest.mark.parametrize("tf_version,keras_version,fragment", [
    ("2.16.1", "3.6.0", ""),
    ("2.21.0", "3.15.1", ""),
    ("2.16.1", "3.12.4", ""),
    ("2.16.1", "3.3.3", "Keras 3.3.3 is not supported"),
    ("2.15.1", "2.15.0", "TensorFlow 2.15.1 is too old"),
    ("2.16.1", "2.15.0", "needs Keras 3 >= 3.6"),
    ("2.17.0rc1", "3.10.0.dev2025", ""),
])
def test_supported_range(tf_version, keras_version, fragment):
  message = versions.problem(tf_version, keras_version)
  assert (fragment in message) if fragment else message == ""


def test_this_stack_is_supported():
  found = versions.check()
  assert found["tensorflow"] == tf.__version__ and found["keras"] == keras.__version__


def _train_with_keras_version(keras_version, digits_dir, workdir):
  """The real train CLI in a process whose Keras reports another version."""
  code = (f"import keras, sys; keras.__version__ = {keras_version!r}; "
          "from tpu_trainer.cli import train; sys.argv = sys.argv[1:]; train.run()")
  return subprocess.run(
      [sys.executable, "-c", code, "tpu-trainer-train", "--config=configs/mlp.py:smoke",
       f"--config.data_dir={digits_dir}", f"--workdir={workdir}"],
      capture_output=True, text=True, cwd=REPO, timeout=300)


def test_train_refuses_an_old_keras_in_one_line(digits_dir, tmp_path):
  result = _train_with_keras_version("3.3.3", digits_dir, tmp_path / "w")
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Keras 3.3.3 is not supported" in errors[0]
  assert "keras>=3.6" in errors[0] and "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


def test_train_logs_and_saves_the_versions(digits_dir, tmp_path):
  result = _train_with_keras_version(keras.__version__, digits_dir, tmp_path / "w")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python " in result.stderr
  with open(tmp_path / "w" / "config.json") as f:
    assert json.load(f)["versions"]["keras"] == keras.__version__


def test_doctor_checks_the_versions(monkeypatch, digits_dir):
  config = __import__("configs.mlp", fromlist=["get_config"]).get_config()
  config.data_dir = digits_dir
  monkeypatch.setattr(versions, "installed", lambda: {
      "tensorflow": "2.16.1", "keras": "3.3.3", "python": "3.10.12"})
  checks = {c.name: c for c in doctor.run_checks(config, "v4-8", input_seconds=0.1)}
  assert checks["versions"].status == "FAIL"
  assert "Keras 3.3.3 is not supported" in checks["versions"].detail
  monkeypatch.setattr(versions, "installed", lambda: {
      "tensorflow": "2.16.1", "keras": "3.6.0", "python": "3.10.12"})
  checks = {c.name: c for c in doctor.run_checks(config, "v4-8", input_seconds=0.1)}
  assert checks["versions"].status == "OK" and "Keras 3.6.0" in checks["versions"].detail
