import gzip
import os

import numpy as np
import pytest

from tpu_trainer import storage
from tpu_trainer.data import convert
from tpu_trainer.data import records
from tpu_trainer.data import sources


def _read_all(data_dir, split):
  """Every (image bytes, label) of a split, by reading its shards."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  info = records.read_info(data_dir)
  shape = info["features"]["image"]["shape"]
  out = []
  for path in records.split_files(data_dir, info, split):
    for batch in tf.data.TFRecordDataset(path).batch(1000):
      images, labels = records.decode_batch(batch, shape, info["features"]["image"]["encoding"])
      out += list(zip([im.tobytes() for im in images.numpy()], labels.numpy().tolist()))
  return out


def test_digits_manifest(digits_dir):
  info = records.read_info(digits_dir)
  assert info["name"] == "digits"
  assert info["features"]["image"] == {"shape": [8, 8, 1], "dtype": "uint8", "encoding": "raw"}
  assert info["class_names"] == [str(i) for i in range(10)]
  assert {s: v["num_examples"] for s, v in info["splits"].items()} == {"train": 1437, "test": 360}
  for split in info["splits"].values():
    assert len(split["shards"]) == 16
    assert sum(s["num_examples"] for s in split["shards"]) == split["num_examples"]
    for shard in split["shards"]:
      path = os.path.join(digits_dir, shard["file"])
      assert storage.file_crc32c(path) == shard["crc32c"]
  assert sorted(os.listdir(digits_dir))[0] == "dataset_info.json"
  assert not [f for f in os.listdir(digits_dir) if ".tmp-" in f]


def test_digits_records_equal_source_and_shards_mix_classes(digits_dir):
  source = sources.digits()
  for split in ("train", "test"):
    expected = sorted((im.tobytes(), l) for im, l in source.splits[split].read(
        range(source.splits[split].num_examples)))
    assert sorted(_read_all(digits_dir, split)) == expected
  info = records.read_info(digits_dir)
  first = records.split_files(digits_dir, info, "train")[0]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  labels = {tf.train.Example.FromString(r.numpy()).features.feature[
      "image/class/label"].int64_list.value[0] for r in tf.data.TFRecordDataset(first)}
  assert len(labels) >= 5  # shuffled before sharding, not sorted by class


def test_verify_names_a_truncated_shard(tmp_path):
  out = str(tmp_path / "d")
  convert.convert(sources.digits(), out, min_shards=4)
  assert convert.verify(out) == {"examples": 1797, "shards": 8}
  victim = os.path.join(out, "digits-train.tfrecord-00002-of-00004")
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) - 10)
  with pytest.raises(ValueError, match="digits-train.tfrecord-00002-of-00004"):
    convert.verify(out)


def test_rerun_skips_complete_shards_and_rewrites_bad_ones(tmp_path):
  out = str(tmp_path / "d")
  convert.convert(sources.digits(), out, min_shards=4)
  keep = os.path.join(out, "digits-test.tfrecord-00000-of-00004")
  bad = os.path.join(out, "digits-test.tfrecord-00001-of-00004")
  keep_mtime = os.stat(keep).st_mtime_ns
  with open(bad, "r+b") as f:
    f.truncate(100)
  os.remove(os.path.join(out, "dataset_info.json"))
  convert.convert(sources.digits(), out, min_shards=4)
  assert os.stat(keep).st_mtime_ns == keep_mtime
  assert convert.verify(out)["examples"] == 1797


def test_npz_source(tmp_path):
  rng = np.random.default_rng(0)
  path = str(tmp_path / "fmnist.npz")
  x_train = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
  y_train = rng.integers(0, 10, 50)
  x_test = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
  y_test = rng.integers(0, 10, 20)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  out = str(tmp_path / "out")
  info = convert.convert(sources.load(f"npz:{path}"), out, num_shards=3)
  assert info["features"]["image"]["shape"] == [28, 28, 1]
  assert {s: v["num_examples"] for s, v in info["splits"].items()} == {"train": 50, "test": 20}
  expected = sorted((x.tobytes(), int(y)) for x, y in zip(x_test, y_test))
  assert sorted(_read_all(out, "test")) == expected


def test_npz_compressed_and_bad_archive(tmp_path):
  path = str(tmp_path / "c.npz")
  x = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
  np.savez_compressed(path, x_train=x, y_train=np.array([0, 1]))
  source = sources.load(f"npz:{path}")
  assert [(im[..., 0].tolist(), l) for im, l in source.splits["train"].read([1, 0])] == [
      (x[1].tolist(), 1), (x[0].tolist(), 0)]
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not an .npz archive"):
    sources.load(f"npz:{tmp_path / 'bad.npz'}")


def _write_idx(path, array, gz):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  with (gzip.open(path + ".gz", "wb") if gz else open(path, "wb")) as f:
    f.write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_source(tmp_path, gz):
  rng = np.random.default_rng(1)
  arrays = {}
  for prefix, n in (("train", 30), ("t10k", 12)):
    arrays[prefix] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
    _write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte"), arrays[prefix][0], gz)
    _write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte"), arrays[prefix][1], gz)
  out = str(tmp_path / "out")
  info = convert.convert(sources.load(f"idx:{tmp_path}"), out, num_shards=2)
  assert {s: v["num_examples"] for s, v in info["splits"].items()} == {"train": 30, "test": 12}
  x, y = arrays["t10k"]
  expected = sorted((im.astype(np.uint8).tobytes(), int(l)) for im, l in zip(x, y))
  assert sorted(_read_all(out, "test")) == expected


def _write_folder(root, per_class=6, size=(20, 24), corrupt=None):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  pixels = {}
  for c in ("daisy", "roses", "tulips"):
    os.makedirs(os.path.join(root, c))
    for i in range(per_class):
      image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
      path = os.path.join(root, c, f"{i}.png")
      Image.fromarray(image).save(path)
      pixels[image.tobytes()] = c
  if corrupt:
    with open(os.path.join(root, corrupt), "wb") as f:
      f.write(b"not an image")
  return pixels


def test_folder_source_png_is_lossless(tmp_path):
  pixels = _write_folder(str(tmp_path / "flowers"))
  source = sources.load(f"folder:{tmp_path / 'flowers'}", test_fraction=0.3)
  assert source.class_names == ["daisy", "roses", "tulips"]
  assert source.image_shape == (20, 24, 3)
  out = str(tmp_path / "out")
  info = convert.convert(source, out, encoding="png", num_shards=2)
  total = sum(v["num_examples"] for v in info["splits"].values())
  assert total == 18 and info["splits"]["test"]["num_examples"] > 0
  for split in info["splits"]:
    for image, label in _read_all(out, split):
      assert source.class_names[label] == pixels[image]
  # The same split on every run.
  again = sources.load(f"folder:{tmp_path / 'flowers'}", test_fraction=0.3)
  assert again.splits["test"].num_examples == source.splits["test"].num_examples


def test_folder_resize(tmp_path):
  _write_folder(str(tmp_path / "f"), per_class=2)
  source = sources.load(f"folder:{tmp_path / 'f'}", image_size=(8, 10), test_fraction=0)
  info = convert.convert(source, str(tmp_path / "out"), num_shards=1)
  assert info["features"]["image"]["shape"] == [8, 10, 3]
  assert len(_read_all(str(tmp_path / "out"), "train")) == 6


def test_folder_unreadable_image_is_named(tmp_path):
  _write_folder(str(tmp_path / "f"), per_class=2, corrupt="roses/broken.jpg")
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match="broken.jpg"):
    convert.convert(sources.load(f"folder:{tmp_path / 'f'}", test_fraction=0), out,
                    num_shards=1)
  assert not os.path.exists(os.path.join(out, "dataset_info.json"))
  assert not [f for f in os.listdir(out) if ".tmp-" in f]


def test_bad_sources_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown --source"):
    sources.load("mnist")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.load(f"folder:{tmp_path / 'nope'}")
  (tmp_path / "empty" / "cats").mkdir(parents=True)
  with pytest.raises(ValueError, match="no images"):
    sources.load(f"folder:{tmp_path / 'empty'}")
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    sources.load(f"idx:{tmp_path / 'empty'}")


def test_unwritable_output_dir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match="Cannot write to --output_dir"):
    convert.convert(sources.digits(), str(blocker / "sub"))


def test_killed_conversion_reruns_to_completion(tmp_path):
  """SIGKILL mid-run, then the same command: finished shards are kept, the rest
  written, and the result verifies."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  npz = str(tmp_path / "big.npz")
  np.savez(npz, x_train=rng.integers(0, 256, (30000, 28, 28), dtype=np.uint8),
           y_train=rng.integers(0, 10, 30000))
  out = str(tmp_path / "out")
  cmd = [sys.executable, "-m", "tpu_trainer.cli.convert", f"--source=npz:{npz}",
         f"--output_dir={out}", "--encoding=png", "--num_shards=30", "--workers=1"]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(out) and len([f for f in os.listdir(out) if "tfrecord" in f
                                   and not f.startswith(".")]) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done_before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)
                 if "tfrecord" in f and not f.startswith(".")}
  assert 3 <= len(done_before) < 30
  assert not os.path.exists(os.path.join(out, "dataset_info.json"))

  again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  for f, mtime in done_before.items():
    assert os.stat(os.path.join(out, f)).st_mtime_ns == mtime  # kept, not rewritten
  assert convert.verify(out) == {"examples": 30000, "shards": 30}
  assert not [f for f in os.listdir(out) if ".tmp-" in f]
