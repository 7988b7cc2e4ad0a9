"""The export is published whole: a reader of the workdir sees the old files or
the new ones, never a half-written one, and a SIGTERM at any step of it ends
with exit 143's Preempted, nothing half-written, and a rerun that finishes."""
import os
import shutil
import signal
import zipfile

import pytest
import tensorflow as tf

from configs import mlp as mlp_config
from tpu_trainer import export as export_lib
from tpu_trainer import storage
from tpu_trainer import training


def _tree(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      with open(os.path.join(dirpath, name)) as f:
        out[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
  return out


def _write_tree(root, files):
  for rel, text in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "w") as f:
      f.write(text)


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  final, new = str(tmp_path / "w" / "saved_model"), str(tmp_path / "new")
  old_files = {"saved_model.pb": "old", "variables/v": "old"}
  new_files = {"saved_model.pb": "new", "variables/v": "new", "assets/a": "new"}
  _write_tree(final, old_files)
  _write_tree(new, new_files)

  def copy_one_then_fail(src, dst, **kwargs):
    del kwargs
    os.makedirs(dst)
    shutil.copyfile(os.path.join(src, "saved_model.pb"), os.path.join(dst, "saved_model.pb"))
    raise OSError("disk went away")

  monkeypatch.setattr(export_lib.shutil, "copytree", copy_one_then_fail)
  with pytest.raises(OSError, match="disk went away"):
    export_lib.publish_directory(new, final)
  assert _tree(final) == old_files
  assert os.listdir(tmp_path / "w") == ["saved_model"]  # no temp directory left

  monkeypatch.undo()
  export_lib.publish_directory(new, final)
  assert _tree(final) == new_files
  assert os.listdir(tmp_path / "w") == ["saved_model"]


def test_a_file_is_published_by_rename(tmp_path):
  """The finished temp file itself becomes the file (same inode): no reader ever
  sees it half copied."""
  final = str(tmp_path / "model.keras")
  with open(final, "w") as f:
    f.write("old")
  tmp = storage.local_temp_path(final)
  with open(tmp, "w") as f:
    f.write("new")
  inode = os.stat(tmp).st_ino
  storage.publish(tmp, final)
  assert os.stat(final).st_ino == inode and not os.path.exists(tmp)
  with open(final) as f:
    assert f.read() == "new"


def _sigterm_then(real):
  def wrapper(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # delivered while this step of the export runs
    return real(*args, **kwargs)
  return wrapper


@pytest.mark.parametrize("target", ["model.save", "save_serving_model", "publish_copy",
                                    "publish_directory"])
def test_sigterm_at_any_step_of_the_export_stops_there_and_the_rerun_finishes(
    digits_dir, tmp_path, monkeypatch, target):
  import keras  # pylint: disable=g-import-not-at-top
  owner, name = {"model.save": (keras.Model, "save"),
                 "save_serving_model": (export_lib, "save_serving_model"),
                 "publish_copy": (storage, "publish_copy"),
                 "publish_directory": (export_lib, "publish_directory")}[target]
  monkeypatch.setattr(owner, name, _sigterm_then(getattr(owner, name)))
  workdir = tmp_path / "w"
  config = mlp_config.get_config()
  config.update(data_dir=digits_dir, batch_size=64, steps=10, steps_per_execution=5)
  strategy = tf.distribute.get_strategy()
  with pytest.raises(training.Preempted, match="SIGTERM during the export"):
    training.run(config, str(workdir), strategy)
  assert not (workdir / "metrics.json").exists()
  assert not [n for n in os.listdir(workdir) if ".tmp-" in n]
  if (workdir / "model.keras").exists():
    assert zipfile.is_zipfile(workdir / "model.keras")
  if (workdir / "saved_model").exists():
    tf.saved_model.load(str(workdir / "saved_model"))

  monkeypatch.undo()
  metrics = training.run(config, str(workdir), strategy)
  assert metrics["step"] == 10 and (workdir / "metrics.json").exists()
  assert zipfile.is_zipfile(workdir / "model.keras")
  served = tf.saved_model.load(str(workdir / "saved_model")).signatures["serving_default"]
  assert served(image=tf.zeros([1, 8, 8, 1], tf.float32))["probabilities"].shape == (1, 10)
