import numpy as np
import pytest
import tensorflow as tf

from tpu_trainer.data import manifest
from tpu_trainer.data import records


def _dataset(shape, encoding):
  return manifest.Dataset("/d", "t", "image", "label", shape, encoding, ["a", "b", "c"], {}, None)


def _images(shape, n=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["raw", "png"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (16, 12, 3)])
def test_lossless_round_trip(encoding, shape):
  images = _images(shape)
  serialized = [records.serialize_example(im, i, encoding) for i, im in enumerate(images)]
  decoded, labels = records.decode_batch(tf.constant(serialized), _dataset(shape, encoding))
  np.testing.assert_array_equal(decoded.numpy(), images)
  np.testing.assert_array_equal(labels.numpy(), [0, 1, 2])


def test_jpeg_round_trip_is_close():
  # A smooth image: JPEG is lossy but close on natural-looking content.
  y, x = np.mgrid[0:32, 0:32]
  image = np.stack([x * 8, y * 8, (x + y) * 4], -1).astype(np.uint8)
  serialized = records.serialize_example(image, 7, "jpeg", jpeg_quality=95)
  decoded, labels = records.decode_batch(tf.constant([serialized]),
                                         _dataset((32, 32, 3), "jpeg"))
  assert labels.numpy().tolist() == [7]
  assert np.abs(decoded.numpy()[0].astype(int) - image).mean() < 3


def test_records_are_what_tfds_serializes():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  image = _images((4, 5, 1))[0]
  for encoding in ("raw", "png"):
    features = tfds.features.FeaturesDict({
        "image": manifest.image_feature((4, 5, 1), encoding),
        "label": tfds.features.ClassLabel(names=["a", "b", "c", "d"])})
    ours = records.serialize_example(image, 3, encoding)
    if encoding == "raw":  # the very record TFDS writes
      assert tf.train.Example.FromString(ours) == tf.train.Example.FromString(
          features.serialize_example({"image": image, "label": 3}))
    decoded = features.decode_example(
        tf.io.parse_single_example(ours, features.tf_example_spec))
    np.testing.assert_array_equal(decoded["image"].numpy(), image)
    assert int(decoded["label"]) == 3


@pytest.mark.parametrize("label", [0, 1, 127, 128, 300, 2**40, -1])
@pytest.mark.parametrize("size", [(1, 1, 1), (28, 28, 1), (64, 64, 3)])
def test_hand_written_wire_format_is_a_tf_example(label, size):
  image = _images(size)[0]
  expected = tf.train.Example(features=tf.train.Features(feature={
      "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
  assert tf.train.Example.FromString(records.serialize_example(image, label, "raw")) == expected


def test_int64_and_either_format_images_decode():
  """TFDS's other ways to store uint8 images: a Tensor without bytes encoding
  (an int64 list), and an Image without a fixed format."""
  image = _images((4, 5, 1))[0]
  int64 = tf.train.Example(features=tf.train.Features(feature={
      "pixels": tf.train.Feature(int64_list=tf.train.Int64List(value=image.reshape(-1))),
      "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[2]))})).SerializeToString()
  dataset = manifest.Dataset("/d", "t", "pixels", "y", (4, 5, 1), "int64", ["a", "b", "c"],
                             {}, None)
  decoded, labels = records.decode_batch(tf.constant([int64]), dataset)
  np.testing.assert_array_equal(decoded.numpy()[0], image)
  assert labels.numpy().tolist() == [2]
  for encoding in ("png", "jpeg"):
    decoded, _ = records.decode_batch(
        tf.constant([records.serialize_example(image, 1, encoding)]),
        _dataset((4, 5, 1), "image"))
    assert decoded.shape == (1, 4, 5, 1)


def test_auto_encoding():
  assert manifest.choose_encoding("auto", (28, 28, 1)) == "raw"
  assert manifest.choose_encoding("auto", (224, 224, 3)) == "jpeg"
  assert manifest.choose_encoding("auto", (128, 128, 1)) == "png"
  with pytest.raises(ValueError, match="encoding"):
    manifest.choose_encoding("webp", (28, 28, 1))


def test_shard_names_follow_the_template():
  assert manifest.shard_names("digits", "train", manifest.shard_template("0123abcd"), 16)[3] == (
      "digits-train-0123abcd.tfrecord-00003-of-00016")


def test_missing_metadata_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="dataset_info.json.*tpu-trainer-convert"):
    manifest.read(str(tmp_path))


def test_framing_is_byte_identical_to_tfrecordwriter(tmp_path):
  payloads = [b"", b"x", records.serialize_example(_images((28, 28, 1))[0], 1, "raw")]
  ours = b"".join(records.frame_record(p) for p in payloads)
  path = str(tmp_path / "tf.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for p in payloads:
      writer.write(p)
  with open(path, "rb") as f:
    assert f.read() == ours


def test_framing_check_agrees_with_tensorflows_reader(tmp_path):
  import io  # pylint: disable=g-import-not-at-top
  payloads = [records.serialize_example(im, i, "raw") for i, im in enumerate(_images((6, 6, 1), 5))]
  path = str(tmp_path / "f.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for p in payloads:
      writer.write(p)
  data = open(path, "rb").read()
  from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
  assert records.check_framing(io.BytesIO(data)) == (5, storage.file_crc32c(path))
  def flipped(at):
    bad = bytearray(data)
    bad[at] ^= 1
    return bytes(bad)

  for bad, reason in ((flipped(40), "corrupt data in record 0"),
                      (flipped(2), "corrupt length of record 0"),
                      (data[:-3], "record 4 is truncated")):
    with pytest.raises(ValueError, match=reason):
      records.check_framing(io.BytesIO(bad))
    (tmp_path / "bad.tfrecord").write_bytes(bad)
    with pytest.raises(tf.errors.DataLossError):  # TensorFlow rejects it too
      list(tf.data.TFRecordDataset(str(tmp_path / "bad.tfrecord")))
