"""A full disk is one error line naming the path, exit 2: the CLIs run in a
private mount namespace on a tiny tmpfs (needs root or user namespaces; skipped
where neither works)."""
import subprocess
import sys

import pytest

from conftest import REPO


def _on_tiny_disk(tmp_path, kbytes, *cli_args):
  disk = tmp_path / "disk"
  disk.mkdir()
  script = (f"mount -t tmpfs -o size={kbytes}k tmpfs {disk} || exit 99; "
            f"exec {sys.executable} -m " + " ".join(cli_args))
  for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
    try:
      result = subprocess.run([*prefix, "sh", "-c", script], cwd=REPO, capture_output=True,
                              text=True, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "2",
                                                           "PATH": "/usr/bin:/bin"})
    except FileNotFoundError:
      break
    if result.returncode != 99 and "unshare:" not in result.stderr:
      return disk, result
  pytest.skip("cannot mount a tmpfs here (no root, no user namespaces)")


def _assert_disk_full_line(result, path_prefix):
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "No space left on device" in last or (
      "no space left on the device" in last), last
  assert str(path_prefix) in last
  assert "Traceback" not in result.stderr


def test_conversion_onto_a_full_disk(tmp_path):
  disk, result = _on_tiny_disk(tmp_path, 100, "tpu_trainer.cli.convert", "--source=digits",
                               f"--output_dir={tmp_path / 'disk' / 'd'}")
  _assert_disk_full_line(result, disk / "d")


# cnn on 300 KB: the checkpoint does not fit. mlp on 220 KB: the checkpoint and
# model.keras do, saved_model/ beside them does not (copytree's shutil.Error).
@pytest.mark.parametrize("model,kbytes,exported", [("cnn", 300, False), ("mlp", 220, True)])
def test_training_onto_a_full_disk(digits_dir, tmp_path, model, kbytes, exported):
  disk, result = _on_tiny_disk(
      tmp_path, kbytes, "tpu_trainer.cli.train", f"--config=configs/{model}.py",
      f"--config.data_dir={digits_dir}", f"--workdir={tmp_path / 'disk' / 'w'}",
      "--config.steps=20", "--config.steps_per_execution=10")
  _assert_disk_full_line(result, disk / "w")
  assert ("Exporting model.keras and saved_model/" in result.stderr) == exported
