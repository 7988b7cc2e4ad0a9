"""The record schema (TFDS / Model Garden keys), image encodings and dataset_info.json."""
import io
import json
import struct

import google_crc32c
import numpy as np
import tensorflow as tf

from tpu_trainer import storage

INFO_FILE = "dataset_info.json"
ENCODINGS = ("raw", "png", "jpeg")

# What the pipeline parses. height/width/channels are also stored in every
# record (a raw image cannot be decoded without them), but the shape the
# pipeline uses comes from dataset_info.json: one per dataset, static for TPUs.
PARSE_SPEC = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def choose_encoding(encoding: str, image_shape) -> str:
  """'auto': raw for small images (decoding would cost more than the bytes
  saved), jpeg for colour photos, png for larger grayscale images."""
  if encoding != "auto":
    if encoding not in ENCODINGS:
      raise ValueError(f"--encoding={encoding!r} is not one of auto, {', '.join(ENCODINGS)}.")
    return encoding
  height, width, channels = image_shape
  if height * width <= 64 * 64:
    return "raw"
  return "jpeg" if channels == 3 else "png"


def encode_image(image: np.ndarray, encoding: str, jpeg_quality: int = 95) -> bytes:
  if encoding == "raw":
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = io.BytesIO()
  if encoding == "png":
    pil.save(out, format="PNG")
  else:
    pil.save(out, format="JPEG", quality=jpeg_quality)
  return out.getvalue()


def serialize_example(image: np.ndarray, label: int, encoding: str,
                      jpeg_quality: int = 95) -> bytes:
  height, width, channels = image.shape

  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

  def bytes_(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

  return tf.train.Example(features=tf.train.Features(feature={
      "image/encoded": bytes_(encode_image(image, encoding, jpeg_quality)),
      "image/format": bytes_(encoding.encode()),
      "image/class/label": ints(label),
      "image/height": ints(height),
      "image/width": ints(width),
      "image/channels": ints(channels),
  })).SerializeToString()


def _masked_crc(data: bytes) -> bytes:
  crc = google_crc32c.value(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame_record(data: bytes) -> bytes:
  """One record in TFRecord framing, byte for byte what tf.io.TFRecordWriter
  writes. Converter workers are forked processes that must not touch the
  TensorFlow runtime, so they frame records themselves."""
  length = struct.pack("<Q", len(data))
  return length + _masked_crc(length) + data + _masked_crc(data)


def decode_batch(serialized: tf.Tensor, image_shape, encoding: str):
  """A batch of serialized examples -> (uint8 images [B,H,W,C], int32 labels [B]).

  One parse_example over the whole batch: ~7x faster than parsing records one by one.
  """
  parsed = tf.io.parse_example(serialized, PARSE_SPEC)
  shape = list(image_shape)
  if encoding == "raw":
    images = tf.reshape(tf.io.decode_raw(parsed["image/encoded"], tf.uint8), [-1] + shape)
  else:
    decode = tf.io.decode_png if encoding == "png" else tf.io.decode_jpeg
    images = tf.map_fn(lambda b: tf.ensure_shape(decode(b, channels=shape[-1]), shape),
                       parsed["image/encoded"],
                       fn_output_signature=tf.TensorSpec(shape, tf.uint8))
  labels = tf.cast(parsed["image/class/label"], tf.int32)
  # Keep the static batch size (drop_remainder=True): TPUs need static shapes.
  images.set_shape([serialized.shape[0]] + shape)
  labels.set_shape([serialized.shape[0]])
  return images, labels


def shard_name(name: str, split: str, index: int, count: int) -> str:
  return f"{name}-{split}.tfrecord-{index:05d}-of-{count:05d}"


def read_info(data_dir: str) -> dict:
  """dataset_info.json of a converted dataset; a clear error when there is none."""
  path = storage.join(data_dir, INFO_FILE)
  try:
    text = storage.read_text(path)
  except (tf.errors.NotFoundError, FileNotFoundError):
    raise FileNotFoundError(
        f"No {INFO_FILE} in data_dir={data_dir!r}: convert a dataset there first "
        f"(tpu-trainer-convert --source=digits --output_dir={data_dir}).") from None
  except Exception as e:  # e.g. google.api_core NotFound from the emulator
    if type(e).__name__ == "NotFound":
      raise FileNotFoundError(f"No {INFO_FILE} in data_dir={data_dir!r}: convert a dataset "
                              "there first.") from None
    raise
  return json.loads(text)


def split_files(data_dir: str, info: dict, split: str) -> list[str]:
  if split not in info["splits"]:
    raise ValueError(f"Split {split!r} is not in {data_dir} "
                     f"(it has: {', '.join(sorted(info['splits']))}).")
  return [storage.join(data_dir, s["file"]) for s in info["splits"][split]["shards"]]
