"""The console entry points, run as a user runs them: real subprocesses."""
import json
import os

import pytest

from conftest import run_cli


@pytest.mark.core
def test_convert_train_eval_end_to_end(tmp_path):
  data, workdir = str(tmp_path / "data"), str(tmp_path / "work")
  result = run_cli("convert", "--source=digits", f"--output_dir={data}")
  assert result.returncode == 0, result.stderr
  assert '"train": {"examples": 1437, "shards": 16}' in result.stdout

  result = run_cli("train", "--config=configs/cnn.py", f"--workdir={workdir}",
                   f"--config.data_dir={data}", "--config.cpu_devices=2",
                   "--config.batch_size=64", "--config.epochs=6", "--config.base_lr=0.01")
  assert result.returncode == 0, result.stderr
  assert "MirroredStrategy over 2 logical CPU devices" in result.stderr
  metrics = json.loads(result.stdout.splitlines()[0])
  assert metrics["accuracy"] > 0.9 and metrics["eval_examples"] == 360
  for name in ("config.json", "metrics.json", "model.keras", "saved_model", "checkpoints",
               "train", "validation"):
    assert os.path.exists(os.path.join(workdir, name)), name

  result = run_cli("evaluate", f"--workdir={workdir}", f"--model={workdir}/saved_model")
  assert result.returncode == 0, result.stderr
  again = json.loads(result.stdout.splitlines()[-1])
  assert again["examples"] == 360
  assert again["accuracy"] == pytest.approx(metrics["accuracy"], abs=1 / 360)

  result = run_cli("convert", "--verify", f"--output_dir={data}")
  assert result.returncode == 0 and "32 shards, 1797 examples" in result.stdout


def _assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, result.stderr
  for fragment in fragments:
    assert fragment in errors[0]
  assert "Traceback" not in result.stderr


def test_unknown_source(tmp_path):
  result = run_cli("convert", "--source=imagenet", f"--output_dir={tmp_path / 'out'}")
  _assert_one_line_error(result, "Unknown --source='imagenet'", "digits")
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flags,fragments", [
    (["--config.model=vgg"], ["Unknown config.model='vgg'", "cnn"]),
    (["--config.data_dir=/no/such/dir"], ["No dataset_info.json", "tpu-trainer-convert"]),
    (["--config.batch_size=63", "--config.cpu_devices=2"], ["batch_size=63", "2 replicas"]),
])
def test_train_errors(digits_dir, tmp_path, flags, fragments):
  args = ["--config=configs/cnn.py:smoke", f"--workdir={tmp_path / 'w'}",
          f"--config.data_dir={digits_dir}"] + flags
  _assert_one_line_error(run_cli("train", *args), *fragments)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
