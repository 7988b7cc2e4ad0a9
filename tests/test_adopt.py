"""TFRecords someone else wrote (imagenet_to_gcs.py's layout, a PNG layout, raw
pixels), adopted in place: TFDS's reader and training read the original files;
bad records and changed shards are refused with one line naming them."""
import hashlib
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import imagenet_layout
from conftest import run_cli
from tpu_trainer import storage
from tpu_trainer.data import adopt
from tpu_trainer.data import manifest
from tpu_trainer.errors import UserError

MAPPING = {"image_key": None, "label_key": None, "label_offset": None,
           "class_name_key": None, "class_names": "", "image_size": (32, 32)}


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("imagenet")
  written = imagenet_layout.write(str(directory))
  return directory, written


def _digests(directory):
  return {n: hashlib.sha256((directory / n).read_bytes()).hexdigest()
          for n in sorted(os.listdir(directory))}


def _copy(src, dst):
  dst.mkdir(parents=True, exist_ok=True)
  for name in os.listdir(src):
    if name.startswith(("train-", "validation-")):
      (dst / name).write_bytes((src / name).read_bytes())
  return dst


def _write(path, examples):
  with tf.io.TFRecordWriter(str(path)) as w:
    for e in examples:
      w.write(e)


def test_imagenet_layout_adopted_in_place_reads_as_the_source(imagenet_dir, tmp_path):
  """The CLI recognises the layout, writes only metadata beside the shards and
  touches none of them; TFDS's reader then reads every record's pixels and (named)
  labels, and our pipeline gives 0-based labels."""
  source, written = imagenet_dir
  directory = _copy(source, tmp_path / "imagenet")
  before = _digests(directory)
  result = run_cli("convert", f"--source=tfrecord:{directory}", f"--output_dir={directory}",
                   "--image_size=32,32")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Recognised the imagenet_to_gcs layout" in result.stderr
  assert '"train": {"examples": 120, "shards": 3}' in result.stdout
  after = _digests(directory)
  assert {n: after[n] for n in before} == before  # nothing under the source changed
  assert sorted(set(after) - set(before)) == [
      "dataset_info.json", "features.json", "image-class-label.labels.txt",
      "tpu_trainer.json"]

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(str(directory))
  label_feature = builder.info.features["image"]["class"]["label"]
  images, labels = written["validation"]
  in_order = tfds.ReadConfig(interleave_cycle_length=1)
  read = list(tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False,
                                               read_config=in_order)))
  assert len(read) == len(images) == 80
  for example, image, label in zip(read, images, labels):
    stored = example["image"]["class"]["label"]
    assert stored - 1 == label  # 1-based in the files; names per stored value
    assert label_feature.int2str(stored) == imagenet_layout.SYNSETS[label]
    jpeg = tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=95)).numpy()
    assert example["image"]["encoded"].shape == image.shape
    assert np.abs(example["image"]["encoded"].astype(int) - jpeg).mean() < 8

  dataset = manifest.read(str(directory))
  assert dataset.class_names == imagenet_layout.SYNSETS and dataset.num_classes == 10
  assert dataset.image_shape == (32, 32, 3) and dataset.resize
  from tpu_trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  got_images, got_labels = pipeline.sample(dataset, "test", 80)
  assert got_images.shape == (80, 32, 32, 3) and got_images.dtype == np.uint8
  assert sorted(got_labels.tolist()) == sorted(labels.tolist())
  # The center crop of a solid-coloured record is that colour.
  assert manifest.verify(str(directory))["examples"] == 200


def test_training_and_exact_eval_on_adopted_shards_then_a_changed_shard_is_refused(
    imagenet_dir, tmp_path):
  source, _ = imagenet_dir
  directory = _copy(source, tmp_path / "imagenet")
  adopt.adopt(str(directory), str(directory), flags=dict(MAPPING), workers=2)
  workdir = tmp_path / "w"
  args = ["--config=configs/cnn.py", f"--config.data_dir={directory}",
          "--config.batch_size=16", "--config.steps=60"]
  result = run_cli("train", f"--workdir={workdir}", *args)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads(result.stdout.splitlines()[0])
  assert metrics["eval_examples"] == 80  # every validation record once
  assert metrics["accuracy"] > 0.5  # 0-based labels: learnable (10 classes)

  shard = directory / "validation-00001-of-00002"
  shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")  # same size, new content
  again = run_cli("train", f"--workdir={tmp_path / 'w2'}", *args)
  assert again.returncode == 2
  errors = [l for l in again.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "validation-00001-of-00002" in errors[0]
  assert "changed since they were adopted" in errors[0] and "Adopt them again" in errors[0]
  assert not (tmp_path / "w2" / "checkpoints").exists()


@pytest.mark.parametrize("case, expected", [
    ("garbage", "train-00001-of-00003: record 7: not a tf.train.Example"),
    ("label0", "train-00001-of-00003: record 7: label 0 is below the label offset 1"),
    ("no_key", "train-00001-of-00003: record 7: no feature 'image/encoded'"),
    ("not_an_image", "train-00001-of-00003: record 7: its image (image/encoded) holds 3 bytes"),
    ("cut", "train-00001-of-00003 is not a whole TFRecord file (record 39 is truncated)"),
])
def test_a_bad_record_is_one_line_naming_file_and_index_and_nothing_is_written(
    imagenet_dir, tmp_path, case, expected):
  source, written = imagenet_dir
  directory = _copy(source, tmp_path / "imagenet")
  images, labels = written["train"]
  examples = [imagenet_layout.example(images[k], labels[k], f"x{k}") for k in range(40, 80)]
  bad = {"garbage": b"\x0a\xff\xff\xff\xff\x0f not a proto",
         "label0": imagenet_layout.example(images[47], -1, "x"),  # stored 0: 1-based set
         "not_an_image": tf.train.Example(features=tf.train.Features(feature={
             "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"xyz"])),
             "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
             "image/class/synset": tf.train.Feature(bytes_list=tf.train.BytesList(
                 value=[imagenet_layout.SYNSETS[2].encode()]))})).SerializeToString(),
         "no_key": tf.train.Example(features=tf.train.Features(feature={
             "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
         })).SerializeToString(), "cut": None}[case]
  if bad is not None:
    examples[7] = bad
  _write(directory / "train-00001-of-00003", examples)
  if case == "cut":  # a copy that stopped short, mid-record
    shard = directory / "train-00001-of-00003"
    shard.write_bytes(shard.read_bytes()[:-100])
  result = run_cli("convert", f"--source=tfrecord:{directory}", f"--output_dir={directory}",
                   "--image_size=32,32")
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
  assert not (directory / "dataset_info.json").exists()


def test_png_layout_through_a_mapping_metadata_elsewhere(tmp_path):
  """Other keys, 0-based labels, PNG images of one size, class names from a file;
  the metadata in another directory, the shards referenced where they are."""
  images, labels = imagenet_layout.digit_images(60, seed=3)
  images = [np.asarray(tf.image.resize(i, [24, 20]).numpy().round(), np.uint8) for i in images]
  shards = tmp_path / "shards"
  shards.mkdir()

  def example(image, label):
    out = io.BytesIO()
    from PIL import Image  # pylint: disable=g-import-not-at-top
    Image.fromarray(image).save(out, format="PNG")
    return tf.train.Example(features=tf.train.Features(feature={
        "pixels_png": tf.train.Feature(bytes_list=tf.train.BytesList(value=[out.getvalue()])),
        "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
    )).SerializeToString()

  for shard in range(2):
    _write(shards / f"part-{shard:05d}", [example(images[k], labels[k])
                                          for k in range(shard * 20, shard * 20 + 20)])
  _write(shards / "heldout-00000", [example(images[k], labels[k]) for k in range(40, 60)])
  names = tmp_path / "names.txt"
  names.write_text("\n".join(f"digit {d}" for d in range(10)) + "\n")
  meta = tmp_path / "meta"
  result = run_cli("convert", f"--source=tfrecord:train={shards}/part-*,test={shards}/heldout-*",
                   f"--output_dir={meta}", "--image_key=pixels_png", "--label_key=y",
                   f"--class_names={names}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(shards)) == ["heldout-00000", "part-00000", "part-00001"]
  dataset = manifest.read(str(meta))
  assert dataset.encoding == "png" and dataset.image_shape == (24, 20, 3)
  assert not dataset.resize and dataset.class_names[3] == "digit 3"
  assert dataset.split("train").files[0] == str(shards / "part-00000")
  from tpu_trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  got, got_labels = pipeline.sample(dataset, "test", 20)
  np.testing.assert_array_equal(got, np.stack(images[40:60]))  # PNG: lossless
  np.testing.assert_array_equal(got_labels, labels[40:60])
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(str(meta))  # a local absolute template: TFDS too
  first = next(iter(tfds.as_numpy(builder.as_dataset(
      split="train", shuffle_files=False, read_config=tfds.ReadConfig(interleave_cycle_length=1)))))
  np.testing.assert_array_equal(first["pixels_png"], images[0])


def test_raw_pixels_layout_and_rewrite(tmp_path):
  """Raw uint8 bytes need their size (--image_size); --rewrite makes our own shards
  of the same records."""
  images, labels = imagenet_layout.digit_images(30, seed=4)
  images = [np.asarray(tf.image.resize(i, [12, 12]).numpy().round(), np.uint8) for i in images]
  shards = tmp_path / "raw"
  shards.mkdir()

  def example(image, label):
    return tf.train.Example(features=tf.train.Features(feature={
        "img": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "cls": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
    )).SerializeToString()

  _write(shards / "train-00000-of-00001", [example(i, l) for i, l in zip(images, labels)])
  spec = f"--source=tfrecord:train={shards}/train-*"
  missing = run_cli("convert", spec, f"--output_dir={shards}", "--image_key=img",
                    "--label_key=cls")
  assert missing.returncode == 2 and "raw pixels need --image_size=H,W" in missing.stderr
  adopted = run_cli("convert", spec, f"--output_dir={shards}", "--image_key=img",
                    "--label_key=cls", "--image_size=12,12")
  assert adopted.returncode == 0, adopted.stderr[-3000:]
  dataset = manifest.read(str(shards))
  assert dataset.encoding == "raw" and dataset.image_shape == (12, 12, 3)
  from tpu_trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  got, got_labels = pipeline.sample(dataset, "train", 30)
  np.testing.assert_array_equal(got, np.stack(images))
  np.testing.assert_array_equal(got_labels, labels)

  rewritten = tmp_path / "ours"
  result = run_cli("convert", spec, f"--output_dir={rewritten}", "--rewrite", "--image_key=img",
                   "--label_key=cls", "--image_size=12,12", "--min_shards=2")
  assert result.returncode == 0, result.stderr[-3000:]
  ours = manifest.read(str(rewritten))
  assert ours.ours is not None and "adopted" not in ours.ours
  assert len(ours.split("train").files) == 2
  got, got_labels = pipeline.sample(ours, "train", 30)
  assert sorted(zip(got_labels.tolist(), [g.tobytes() for g in got])) == sorted(
      zip(labels.tolist(), [i.tobytes() for i in images]))


def test_refusals_before_any_scan(imagenet_dir, tmp_path):
  source, _ = imagenet_dir
  directory = _copy(source, tmp_path / "imagenet")
  os.remove(directory / "train-00001-of-00003")
  with pytest.raises(UserError, match="say they are 3 shards, 2 are there .missing: train-00001"):
    adopt.adopt(str(directory), str(directory), flags=dict(MAPPING))
  odd = tmp_path / "odd"
  odd.mkdir()
  (odd / "data.tfrecord").write_bytes((directory / "train-00000-of-00003").read_bytes())
  with pytest.raises(UserError, match="follow no TFDS shard template"):
    adopt.adopt(f"train={odd}/*", str(odd), flags=dict(MAPPING))
  with pytest.raises(UserError, match="matches no file"):
    adopt.adopt(f"train={odd}/nothing-*", str(odd), flags=dict(MAPPING))
  with pytest.raises(UserError, match="vary in size .* give --image_size=H,W"):
    adopt.adopt(str(_copy(source, tmp_path / "again")), str(tmp_path / "m"),
                flags={**MAPPING, "image_size": None})


def test_gcs_adopted_in_place_then_a_reuploaded_shard_is_refused(imagenet_dir, gcs_bucket):
  source, _ = imagenet_dir
  client = storage.gcs_client()
  bucket = client.bucket(gcs_bucket)
  for name in os.listdir(source):
    if name.startswith(("train-", "validation-")):
      bucket.blob(f"imagenet/{name}").upload_from_filename(str(source / name))
  data_dir = f"gs://{gcs_bucket}/imagenet"
  dataset = adopt.adopt(data_dir, data_dir, flags=dict(MAPPING), workers=2)
  assert dataset.split("test").num_examples == 80
  assert dataset.split("train").files[0] == f"{data_dir}/train-00000-of-00003"
  assert manifest.verify(data_dir)["examples"] == 200
  manifest.check_shards(dataset, ["train", "test"])
  shard = bucket.blob("imagenet/train-00002-of-00003")
  data = shard.download_as_bytes()
  shard.upload_from_string(data[:-4] + b"abcd")  # same size, another crc32c
  with pytest.raises(UserError, match=r"changed since they were adopted: train-00002-of-00003 has crc32c .*source=tfrecord:gs://"):
    manifest.check_shards(manifest.read(data_dir), ["train", "test"])


def test_parse_example_reads_what_tensorflow_writes():
  example = tf.train.Example(features=tf.train.Features(feature={
      "b": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x", b""])),
      "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[-3, 0, 2**40])),
      "f": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, -2.0])),
      "e": tf.train.Feature()})).SerializeToString()
  found, keys = adopt.parse_example(example, {"b", "i", "f", "e"})
  assert sorted(keys) == ["b", "e", "f", "i"]
  assert found["b"] == ("bytes", [b"x", b""]) and found["i"] == ("int64", [-3, 0, 2**40])
  assert found["f"] == ("float", [0.5, -2.0]) and found["e"] == ("empty", [])


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_varying_sizes_are_center_cropped_to_the_training_shape(tmp_path, image_format):
  """Images 16 high and 20..32 wide, red margins either side of a 16x16 picture:
  at --image_size=16,16 training sees exactly the picture (JPEGs decode only
  that window: nearly)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  pictures, examples = [], []
  for k in range(12):
    picture = np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), 4, 0), 4, 1)
    margin = 2 * (k % 4) + 2
    image = np.concatenate([np.full((16, margin, 3), (255, 0, 0), np.uint8), picture,
                            np.full((16, margin, 3), (255, 0, 0), np.uint8)], axis=1)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=image_format, quality=100)
    # What the stored image decodes to, cut to the picture (JPEG's colours shift).
    pictures.append(tf.io.decode_image(out.getvalue()).numpy()[:, margin:margin + 16])
    examples.append(tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[out.getvalue()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[k % 2]))}
    )).SerializeToString())
  _write(tmp_path / "train-00000-of-00001", examples)
  dataset = adopt.adopt(f"train={tmp_path}/train-*", str(tmp_path),
                        flags={**MAPPING, "image_size": (16, 16)})
  assert dataset.resize and dataset.encoding == image_format.lower()
  from tpu_trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  got, _ = pipeline.sample(dataset, "train", 12)
  error = np.abs(got.astype(int) - np.stack(pictures).astype(int))
  assert (error.max() == 0 if image_format == "PNG" else error.mean() < 2), (
      error.max(), error.mean(), error.reshape(12, -1).mean(1))
