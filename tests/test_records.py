import numpy as np
import pytest
import tensorflow as tf

from tpu_trainer.data import records


def _images(shape, n=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["raw", "png"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (16, 12, 3)])
def test_lossless_round_trip(encoding, shape):
  images = _images(shape)
  serialized = [records.serialize_example(im, i, encoding) for i, im in enumerate(images)]
  decoded, labels = records.decode_batch(tf.constant(serialized), shape, encoding)
  np.testing.assert_array_equal(decoded.numpy(), images)
  np.testing.assert_array_equal(labels.numpy(), [0, 1, 2])


def test_jpeg_round_trip_is_close():
  # A smooth image: JPEG is lossy but close on natural-looking content.
  y, x = np.mgrid[0:32, 0:32]
  image = np.stack([x * 8, y * 8, (x + y) * 4], -1).astype(np.uint8)
  serialized = records.serialize_example(image, 7, "jpeg", jpeg_quality=95)
  decoded, labels = records.decode_batch(tf.constant([serialized]), (32, 32, 3), "jpeg")
  assert labels.numpy().tolist() == [7]
  assert np.abs(decoded.numpy()[0].astype(int) - image).mean() < 3


def test_record_carries_schema_keys():
  example = tf.train.Example.FromString(
      records.serialize_example(_images((4, 5, 1))[0], 3, "raw"))
  f = example.features.feature
  assert f["image/format"].bytes_list.value == [b"raw"]
  assert f["image/class/label"].int64_list.value == [3]
  assert (f["image/height"].int64_list.value, f["image/width"].int64_list.value,
          f["image/channels"].int64_list.value) == ([4], [5], [1])


def test_auto_encoding():
  assert records.choose_encoding("auto", (28, 28, 1)) == "raw"
  assert records.choose_encoding("auto", (224, 224, 3)) == "jpeg"
  assert records.choose_encoding("auto", (128, 128, 1)) == "png"
  with pytest.raises(ValueError, match="encoding"):
    records.choose_encoding("webp", (28, 28, 1))


def test_shard_name():
  assert records.shard_name("digits", "train", 3, 16) == "digits-train.tfrecord-00003-of-00016"


def test_missing_manifest_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="dataset_info.json.*tpu-trainer-convert"):
    records.read_info(str(tmp_path))


def test_framing_is_byte_identical_to_tfrecordwriter(tmp_path):
  payloads = [b"", b"x", records.serialize_example(_images((28, 28, 1))[0], 1, "raw")]
  ours = b"".join(records.frame_record(p) for p in payloads)
  path = str(tmp_path / "tf.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for p in payloads:
      writer.write(p)
  with open(path, "rb") as f:
    assert f.read() == ours
