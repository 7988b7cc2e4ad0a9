import gzip
import os

import numpy as np
import pytest

from tpu_trainer import storage
from tpu_trainer.data import convert
from tpu_trainer.data import manifest
from tpu_trainer.data import sources


def _read_all(data_dir, split):
  """Every (image bytes, label) of a split, read with TFDS's own reader."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(data_dir)
  ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  out = []
  for image, label in tfds.as_numpy(ds):
    assert image.dtype == np.uint8 and image.ndim == 3
    out.append((image.tobytes(), int(label)))
  return out


def _source_examples(source, split):
  s = source.splits[split]
  return sorted((im.tobytes(), int(l)) for im, l in s.read(range(s.num_examples)))


def _shards(data_dir):
  return sorted(f for f in os.listdir(data_dir) if ".tfrecord-" in f and not f.startswith("."))


def test_digits_is_a_tfds_dataset(digits_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(digits_dir)
  assert builder.info.name == "digits"
  assert builder.info.features["label"].names == [str(i) for i in range(10)]
  assert isinstance(builder.info.features["image"], tfds.features.Tensor)
  assert builder.info.features["image"].shape == (8, 8, 1)
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {"train": 1437,
                                                                         "test": 360}
  dataset = manifest.read(digits_dir)
  assert (dataset.image_key, dataset.label_key, dataset.encoding) == ("image", "label", "raw")
  for split in dataset.splits.values():
    assert len(split.files) == 16
    for path in split.files:
      shard = dataset.ours["shards"][os.path.basename(path)]
      assert storage.file_crc32c(path) == shard["crc32c"]
      assert os.path.getsize(path) == shard["num_bytes"]
  assert dataset.ours["key"]["fingerprint"] == sources.digits().fingerprint
  assert not [f for f in os.listdir(digits_dir) if ".tmp-" in f]


def test_digits_examples_equal_source_and_shards_mix_classes(digits_dir):
  source = sources.digits()
  for split in ("train", "test"):
    assert sorted(_read_all(digits_dir, split)) == _source_examples(source, split)
  first = manifest.read(digits_dir).splits["train"].files[0]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  labels = {tf.train.Example.FromString(r.numpy()).features.feature[
      "label"].int64_list.value[0] for r in tf.data.TFRecordDataset(first)}
  assert len(labels) >= 5  # shuffled before sharding, not sorted by class


@pytest.mark.parametrize("encoding", ["raw", "png", "jpeg"])
def test_every_encoding_round_trips_through_tfds(tmp_path, encoding):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = sources.digits()
  out = str(tmp_path / encoding)
  convert.convert(source, out, encoding=encoding, min_shards=2)
  feature = tfds.builder_from_directory(out).info.features["image"]
  assert isinstance(feature, tfds.features.Tensor if encoding == "raw" else tfds.features.Image)
  got = sorted(_read_all(out, "test"))
  expected = _source_examples(source, "test")
  if encoding == "jpeg":  # lossy: same labels, close pixels
    assert [l for _, l in sorted(got, key=lambda e: e[1])] == sorted(l for _, l in expected)
    assert len(got) == len(expected)
  else:
    assert got == expected


def test_verify_names_a_truncated_shard(tmp_path):
  out = str(tmp_path / "d")
  convert.convert(sources.digits(), out, min_shards=4)
  assert manifest.verify(out)["examples"] == 1797
  victim = manifest.read(out).splits["train"].files[2]
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) - 10)
  with pytest.raises(ValueError, match=os.path.basename(victim)):
    manifest.verify(out)


def test_a_shard_cut_on_a_record_boundary_is_named_before_training(tmp_path):
  """Such a shard reads as a clean end of file: only the metadata can tell."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "d")
  convert.convert(sources.digits(), out, min_shards=2)
  victim = manifest.read(out).splits["train"].files[1]
  records = [r.numpy() for r in tf.data.TFRecordDataset(victim)]
  with tf.io.TFRecordWriter(victim) as writer:  # one record fewer, cleanly framed
    for r in records[:-1]:
      writer.write(r)
  dataset = manifest.read(out)
  with pytest.raises(ValueError, match=os.path.basename(victim) + " has .* bytes"):
    manifest.check_shards(dataset, ["train"])
  manifest.check_shards(dataset, ["test"])
  with pytest.raises(ValueError, match=os.path.basename(victim) + " has crc32c"):
    manifest.verify(out)
  # Without our checksums (as for a dataset TFDS wrote): TFDS's byte count and
  # shard lengths still name it.
  os.remove(os.path.join(out, manifest.OURS_FILE))
  dataset = manifest.read(out)
  assert dataset.ours is None
  with pytest.raises(ValueError, match="the train shards hold .* bytes, TFDS's metadata says"):
    manifest.check_shards(dataset, ["train"])
  with pytest.raises(ValueError, match=os.path.basename(victim) +
                     f" holds {len(records) - 1} examples, the metadata says {len(records)}"):
    manifest.verify(out)


def test_rerun_keeps_its_shards_and_rewrites_damaged_ones(tmp_path):
  out = str(tmp_path / "d")
  convert.convert(sources.digits(), out, min_shards=4)
  files = manifest.read(out).splits["test"].files
  keep, bad = files[0], files[1]
  keep_mtime = os.stat(keep).st_mtime_ns
  with open(bad, "r+b") as f:
    f.truncate(100)
  convert.convert(sources.digits(), out, min_shards=4)
  assert os.stat(keep).st_mtime_ns == keep_mtime
  assert manifest.verify(out)["examples"] == 1797


def test_a_shard_damaged_in_place_at_its_size_is_rewritten_on_rerun(tmp_path):
  """A flipped byte (a bad disk, a copy gone wrong) keeps the file's size: the
  rerun compares the recorded crc32c, not the size, and writes the shard again."""
  out = str(tmp_path / "d")
  convert.convert(sources.digits(), out, min_shards=4)
  bad = manifest.read(out).splits["train"].files[2]
  with open(bad, "rb") as f:
    original = f.read()
  with open(bad, "r+b") as f:
    f.seek(len(original) // 2)
    f.write(bytes([original[len(original) // 2] ^ 0xFF]))
  assert os.path.getsize(bad) == len(original)
  convert.convert(sources.digits(), out, min_shards=4)
  with open(bad, "rb") as f:
    assert f.read() == original
  assert manifest.verify(out)["examples"] == 1797


def _npz(path, x_train, y_train, **more):
  np.savez(path, x_train=x_train, y_train=y_train, **more)
  return str(path)


@pytest.mark.parametrize("change", ["labels", "encoding", "image_size", "seed"])
def test_a_rerun_with_anything_changed_never_keeps_stale_shards(tmp_path, change):
  """Converting again into the same directory gives the new data, whatever
  changed, and leaves no shard of the old conversion behind."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (60, 12, 12, 3), dtype=np.uint8)
  y = rng.integers(0, 3, 60)
  out = str(tmp_path / "out")
  if change == "image_size":
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for i, (image, label) in enumerate(zip(x, y)):
      os.makedirs(tmp_path / "f" / f"c{label}", exist_ok=True)
      Image.fromarray(image).save(tmp_path / "f" / f"c{label}" / f"{i}.png")
    spec = f"folder:{tmp_path / 'f'}"
    first, second = (sources.load(spec, image_size=size, test_fraction=0.2)
                     for size in ((12, 12), (6, 6)))
  else:
    path = _npz(tmp_path / "a.npz", x, y)
    first = sources.load(f"npz:{path}")
  convert.convert(first, out, encoding="png", min_shards=3)
  old = _shards(out)
  kwargs = {"encoding": "png", "min_shards": 3}
  if change == "labels":
    _npz(tmp_path / "a.npz", x, (y + 1) % 3)
    second = sources.load(f"npz:{path}")
  elif change == "encoding":
    second, kwargs["encoding"] = first, "raw"
  elif change == "seed":
    second, kwargs["seed"] = first, 7
  dataset = convert.convert(second, out, **kwargs)
  assert not set(old) & set(_shards(out))  # every old shard replaced
  assert len(_shards(out)) == sum(len(s.files) for s in dataset.splits.values())
  assert sorted(_read_all(out, "train")) == _source_examples(second, "train")
  assert manifest.verify(out)["examples"] == sum(s.num_examples for s in second.splits.values())


def test_only_our_own_temp_files_are_deleted(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / ".x.tmp-1").write_text("a user's file")
  (out / ".notes.tmp-0123abcd").write_text("another")
  convert.convert(sources.digits(), str(out), min_shards=2)
  ours = manifest.read(str(out)).splits["train"].files[0]
  left_by_a_kill = out / f".{os.path.basename(ours)}.tmp-89abcdef"
  left_by_a_kill.write_text("half a shard")
  convert.convert(sources.digits(), str(out), min_shards=2)
  assert (out / ".x.tmp-1").read_text() == "a user's file"
  assert (out / ".notes.tmp-0123abcd").exists()
  assert not left_by_a_kill.exists()


def test_a_foreign_tfds_dataset_is_not_overwritten(tmp_path):
  out = str(tmp_path / "d")
  convert.convert(sources.digits(), out, min_shards=2)
  os.remove(os.path.join(out, manifest.OURS_FILE))
  with pytest.raises(ValueError, match="did not write; convert into another directory"):
    convert.convert(sources.digits(), out, min_shards=2)


def test_bad_arrays_are_refused_before_anything_is_written(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (10, 4, 4), dtype=np.uint8)
  out = tmp_path / "out"
  cases = [
      (dict(x_train=x, y_train=np.zeros(9, int)), r"x_train and y_train: 10 images but 9 labels"),
      (dict(x_train=x, y_train=np.array([0, 1] * 4 + [-1, 1])), r"has label -1"),
      (dict(x_train=x, y_train=np.zeros(10, int)), "1 class"),
      (dict(x_train=x, y_train=np.arange(10) % 2, x_test=x), "has x_test but no y_test"),
      # Never truncated, never a class per stray number, never a string cast.
      (dict(x_train=x, y_train=np.array([0, 1] * 4 + [3.7, 1])), "label 3.7 is not a class"),
      (dict(x_train=x, y_train=np.array([0, 1] * 4 + [255, 1])),
       r"up to 255, but classes 2, 3, 4, 5, 6, \.\.\. \(253 of 256\) have no example: a "
       "stray label"),
      (dict(x_train=x, y_train=np.arange(10) % 3, class_names=np.array(["a", "b"])),
       r"labels span \[0, 2\] but there are 2 classes"),
      (dict(x_train=x, y_train=np.array(["cat", "dog"] * 5)), "labels are <U3"),
      (dict(x_train=x.reshape(10, 16), y_train=np.arange(10) % 2), r"images of shape \(10, 16\)"),
      (dict(x_train=x.reshape(10, 1, 4, 4, 1), y_train=np.arange(10) % 2), "images of shape"),
  ]
  for arrays, message in cases:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
      convert.convert(sources.load(f"npz:{tmp_path / 'bad.npz'}"), str(out), num_shards=1)
    assert not out.exists() or not os.listdir(out)
  np.savez(tmp_path / "floats.npz", x_train=x, y_train=(np.arange(10) % 2).astype(np.float32))
  assert sources.load(f"npz:{tmp_path / 'floats.npz'}").class_names == ["0", "1"]


def test_npz_source(tmp_path):
  rng = np.random.default_rng(0)
  path = str(tmp_path / "fmnist.npz")
  x_train = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
  y_train = rng.integers(0, 10, 50)
  x_test = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
  y_test = rng.integers(0, 10, 20)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  out = str(tmp_path / "out")
  dataset = convert.convert(sources.load(f"npz:{path}"), out, num_shards=3)
  assert dataset.image_shape == (28, 28, 1)
  assert {s: v.num_examples for s, v in dataset.splits.items()} == {"train": 50, "test": 20}
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
  dataset = convert.convert(sources.load(f"idx:{tmp_path}"), out, num_shards=2)
  assert {s: v.num_examples for s, v in dataset.splits.items()} == {"train": 30, "test": 12}
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
  dataset = convert.convert(source, out, encoding="png", num_shards=2)
  total = sum(v.num_examples for v in dataset.splits.values())
  assert total == 18 and dataset.splits["test"].num_examples > 0
  assert dataset.class_names == ["daisy", "roses", "tulips"]
  for split in dataset.splits:
    for image, label in _read_all(out, split):
      assert source.class_names[label] == pixels[image]
  # The same split on every run.
  again = sources.load(f"folder:{tmp_path / 'flowers'}", test_fraction=0.3)
  assert again.splits["test"].num_examples == source.splits["test"].num_examples


def test_folder_resize(tmp_path):
  _write_folder(str(tmp_path / "f"), per_class=2)
  source = sources.load(f"folder:{tmp_path / 'f'}", image_size=(8, 10), test_fraction=0)
  dataset = convert.convert(source, str(tmp_path / "out"), num_shards=1)
  assert dataset.image_shape == (8, 10, 3)
  assert len(_read_all(str(tmp_path / "out"), "train")) == 6


def test_folder_unreadable_image_is_named(tmp_path):
  _write_folder(str(tmp_path / "f"), per_class=2, corrupt="roses/broken.jpg")
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match="broken.jpg"):
    convert.convert(sources.load(f"folder:{tmp_path / 'f'}", test_fraction=0), out,
                    num_shards=1)
  assert not os.path.exists(out)  # found while reading the headers: nothing written


def test_folder_skips_hidden_files_and_refuses_links_that_leave_it(tmp_path):
  pixels = _write_folder(str(tmp_path / "f"), per_class=3)
  (tmp_path / "f" / "daisy" / "._0.png").write_bytes(b"\0\5\x16\7 AppleDouble")
  (tmp_path / "f" / "roses" / ".hidden.png").write_bytes(b"junk")
  os.symlink(tmp_path / "f" / "roses" / "0.png", tmp_path / "f" / "roses" / "link.png")
  source = sources.load(f"folder:{tmp_path / 'f'}", test_fraction=0)
  assert source.splits["train"].num_examples == 10  # 9 images + the link inside the folder
  out = str(tmp_path / "out")
  convert.convert(source, out, num_shards=1)
  for image, label in _read_all(out, "train"):
    assert source.class_names[label] == pixels[image]
  outside = tmp_path / "elsewhere.png"
  os.replace(tmp_path / "f" / "tulips" / "0.png", outside)
  os.symlink(outside, tmp_path / "f" / "tulips" / "0.png")
  with pytest.raises(ValueError, match="is a symlink to .*elsewhere.png, outside the folder"):
    sources.load(f"folder:{tmp_path / 'f'}")


def test_an_empty_train_split_is_refused(tmp_path):
  _write_folder(str(tmp_path / "f"), per_class=2)
  with pytest.raises(ValueError, match="test_fraction"):
    sources.load(f"folder:{tmp_path / 'f'}", test_fraction=1)


def test_truncated_idx_files_are_named(tmp_path):
  rng = np.random.default_rng(0)
  for prefix in ("train", "t10k"):
    _write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (5, 4, 4)),
               gz=True)
    _write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 2, 5), gz=False)
  gz = tmp_path / "train-images-idx3-ubyte.gz"
  gz.write_bytes(gz.read_bytes()[:-12])
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is truncated"):
    sources.load(f"idx:{tmp_path}")
  labels = tmp_path / "t10k-labels-idx1-ubyte"
  labels.write_bytes(labels.read_bytes()[:-2])
  os.remove(gz)
  _write_idx(str(tmp_path / "train-images-idx3-ubyte"), rng.integers(0, 256, (5, 4, 4)), gz=True)
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte is truncated"):
    sources.load(f"idx:{tmp_path}")


def test_bad_sources_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown --source"):
    sources.load("mnist")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.load(f"folder:{tmp_path / 'nope'}")
  (tmp_path / "empty" / "cats").mkdir(parents=True)
  with pytest.raises(ValueError, match="Class folder 'cats' .* has no image"):
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
  done_before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in _shards(out)}
  assert 3 <= len(done_before) < 30
  assert not os.path.exists(os.path.join(out, "dataset_info.json"))

  again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  for f, mtime in done_before.items():
    assert os.stat(os.path.join(out, f)).st_mtime_ns == mtime  # kept, not rewritten
  result = manifest.verify(out)
  assert (result["examples"], result["shards"]) == (30000, 30)
  assert not [f for f in os.listdir(out) if ".tmp-" in f]


def test_a_source_rewritten_with_the_same_size_and_mtime_is_noticed(tmp_path):
  """A quick rewrite can keep a file's size and mtime: the content decides."""
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
  y = rng.integers(0, 3, 40)
  path = _npz(tmp_path / "a.npz", x, y)
  out = str(tmp_path / "out")
  convert.convert(sources.load(f"npz:{path}"), out, min_shards=2)
  before = os.stat(path)
  _npz(tmp_path / "a.npz", x, (y + 1) % 3)  # same shapes and dtypes: same size
  os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
  assert os.stat(path).st_size == before.st_size
  second = sources.load(f"npz:{path}")
  convert.convert(second, out, min_shards=2)
  assert sorted(_read_all(out, "train")) == _source_examples(second, "train")


def test_labels_beyond_the_class_names_are_refused(tmp_path):
  images = np.zeros((6, 4, 4, 1), np.uint8)
  for labels in ([0, 1, 2, 0, 1, 2], [0, 1, -1, 0, 1, 0]):
    source = sources.Source("three", ["a", "b"], (4, 4, 1), {
        "train": sources.split_from_arrays(images, np.array(labels))})
    with pytest.raises(ValueError, match=r"labels span \[-?\d, \d\] but there are 2 classes"):
      convert.convert(source, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_folder_converts_every_image_faithfully(tmp_path, caplog):
  """Modes decided from all images (a gray first file does not make colour ones
  gray), every format Pillow reads, 16 bits scaled (not clipped), files that are
  no image named in the log, never read (a FIFO would block)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path / "f"
  for c in ("a", "b", "c"):
    (root / c).mkdir(parents=True)
  rng = np.random.default_rng(3)
  colour = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
  Image.fromarray(colour[..., 0]).save(root / "a" / "0_gray.png")  # sorted first
  Image.fromarray(colour).save(root / "a" / "1_colour.png")
  Image.fromarray(colour).save(root / "b" / "x.webp", lossless=True)
  deep = (rng.integers(0, 65536, (6, 6))).astype(np.uint16)
  Image.fromarray(deep).save(root / "c" / "deep.tif")
  (root / "c" / "notes.txt").write_text("not an image")
  os.mkfifo(root / "c" / "pipe.png")
  with caplog.at_level("INFO"):
    source = sources.load(f"folder:{root}", test_fraction=0)
  assert source.image_shape == (6, 6, 3) and source.class_names == ["a", "b", "c"]
  assert "written as RGB" in caplog.text and "1 L" in caplog.text
  assert "c/notes.txt" in caplog.text and "c/pipe.png" in caplog.text
  examples = sorted(source.splits["train"].read(range(4)), key=lambda e: (e[1], e[0].sum()))
  np.testing.assert_array_equal(
      [e for e in examples if e[1] == 1][0][0], colour)  # webp, losslessly
  wide = [e for e in examples if e[1] == 2][0][0]
  np.testing.assert_array_equal(wide[..., 0], np.round(deep / 65535 * 255).astype(np.uint8))
  assert any(np.array_equal(e[0], colour) for e in examples if e[1] == 0)  # still colour


def test_flags_and_names_that_cannot_apply_are_refused(tmp_path):
  np.savez(tmp_path / "a.npz", x_train=np.zeros((4, 4, 4), np.uint8),
           y_train=np.array([0, 1, 0, 1]))
  with pytest.raises(ValueError, match="--image_size does not apply to --source=npz"):
    sources.load(f"npz:{tmp_path / 'a.npz'}", image_size=(8, 8))
  with pytest.raises(ValueError, match="--image_size does not apply to --source=digits"):
    sources.load("digits", image_size=(8, 8))
  _write_folder(str(tmp_path / "f"), per_class=2)
  os.rename(tmp_path / "f" / "roses", tmp_path / "f" / "ro\nses")
  with pytest.raises(ValueError, match="control character"):
    sources.load(f"folder:{tmp_path / 'f'}")


def test_metadata_stopped_half_published_is_refused_and_a_rerun_mends_it(tmp_path, monkeypatch):
  """A conversion into a directory holding another dataset, stopped while replacing
  the metadata (the disk full at dataset_info.json): the old shards must not be
  read under the new class names; the same command again finishes."""
  rng = np.random.default_rng(4)
  x, y = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8), np.arange(30) % 3
  out = str(tmp_path / "out")
  convert.convert(sources.load(f"npz:{_npz(tmp_path / 'a.npz', x, y)}"), out, min_shards=2)
  other = sources.Source("a", ["x", "y"], (4, 4, 1), {
      "train": sources.split_from_arrays(x, y % 2)})
  real_replace = os.replace

  def disk_full_at_the_info_file(src, dst):
    if dst.endswith("dataset_info.json"):
      raise OSError(28, "No space left on device", dst)
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", disk_full_at_the_info_file)
  with pytest.raises(ValueError, match="Cannot write the metadata"):
    convert.convert(other, out, min_shards=2)
  monkeypatch.undo()
  with pytest.raises(ValueError, match="a conversion stopped while publishing"):
    manifest.read(out)
  with pytest.raises(ValueError, match="a conversion stopped while publishing"):
    manifest.verify(out)
  dataset = convert.convert(other, out, min_shards=2)
  assert dataset.class_names == ["x", "y"] and manifest.verify(out)["examples"] == 30


@pytest.mark.parametrize("size, says", [
    ("100000,100000", "27.9 GiB, more than"),       # the sweep's case: 23 GB, then killed
    ("30000,30000", "2.5 GiB, more than"),          # over any TFRecord example
])
def test_an_image_size_that_cannot_fit_is_refused_before_any_work(tmp_path, size, says):
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  _write_folder(tmp_path / "f", per_class=2)
  out = tmp_path / "out"
  result = run_cli("convert", f"--source=folder:{tmp_path / 'f'}", f"--image_size={size}",
                   f"--output_dir={out}", timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and says in errors[0] and "pick a smaller size" in errors[0]
  assert not out.exists()
  sources.check_image_size((4096, 4096))  # a large photo still converts
