"""The record schema, TFDS's: an `image` feature (raw uint8 bytes, or PNG/JPEG
bytes) and an int64 `label`; encoding examples and decoding whole batches."""
import base64
import functools
import io
import struct

import google_crc32c
import numpy as np

from tpu_trainer.errors import UserError


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


def _varint(value: int) -> bytes:
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
  """A length-delimited protobuf field: tag byte, length, payload."""
  return bytes([tag]) + _varint(len(payload)) + payload


def _map_entry(key: bytes, feature: bytes) -> bytes:
  return _field(0x0A, _field(0x0A, key) + _field(0x12, feature))


@functools.lru_cache(maxsize=4096)
def _label_entry(label: int) -> bytes:
  value = _varint(label & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
  return _map_entry(b"label", _field(0x1A, _field(0x0A, value)))  # int64_list.value, packed


def serialize_example(image: np.ndarray, label: int, encoding: str,
                      jpeg_quality: int = 95) -> bytes:
  """A tf.train.Example as TFDS serializes {"image": ..., "label": ...} for a
  raw-bytes uint8 Tensor feature or a PNG/JPEG Image feature and a ClassLabel.

  Written in protobuf's wire format directly (building tf.train.Example objects
  was most of the converter's time): Example{features(1): Features{feature(1):
  map<string, Feature>}}, Feature{bytes_list(1) | int64_list(3)}, values in field 1.
  The image bytes are copied once.
  """
  data = encode_image(image, encoding, jpeg_quality)
  value_len = _varint(len(data))
  bytes_list = 1 + len(value_len) + len(data)           # BytesList{value: data}
  bytes_list_len = _varint(bytes_list)
  feature = 1 + len(bytes_list_len) + bytes_list        # Feature{bytes_list: ...}
  feature_len = _varint(feature)
  entry = 7 + 1 + len(feature_len) + feature            # {key: "image", value: ...}
  entry_len = _varint(entry)
  label_entry = _label_entry(int(label))
  features = 1 + len(entry_len) + entry + len(label_entry)
  return b"".join((b"\x0a", _varint(features), b"\x0a", entry_len, b"\x0a\x05image\x12",
                   feature_len, b"\x0a", bytes_list_len, b"\x0a", value_len, data,
                   label_entry))


def _masked_crc(data: bytes) -> bytes:
  crc = google_crc32c.value(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame_record(data: bytes) -> bytes:
  """One record in TFRecord framing, byte for byte what tf.io.TFRecordWriter
  writes. Converter workers are forked processes that must not touch the
  TensorFlow runtime, so they frame records themselves."""
  length = struct.pack("<Q", len(data))
  return b"".join((length, _masked_crc(length), data, _masked_crc(data)))


def framed_records(f, checksum=None):
  """The records of a TFRecord stream, every length and data CRC checked as
  TensorFlow's reader does, without TensorFlow; `checksum` (a
  google_crc32c.Checksum) sees every byte. ValueError at the first bad record."""
  count = 0
  while True:
    header = f.read(12)
    if checksum is not None:
      checksum.update(header)
    if not header:
      return
    if len(header) < 12:
      raise UserError(f"truncated record header after {count} records")
    if header[8:] != _masked_crc(header[:8]):
      raise UserError(f"corrupt length of record {count}")
    length = struct.unpack("<Q", header[:8])[0]
    body = f.read(length + 4)
    if checksum is not None:
      checksum.update(body)
    if len(body) < length + 4:
      raise UserError(f"record {count} is truncated")
    if body[length:] != _masked_crc(body[:length]):
      raise UserError(f"corrupt data in record {count}")
    yield body[:length]
    count += 1


def check_framing(f) -> tuple[int, str]:
  """(records, crc32c of the whole stream, base64 as Cloud Storage reports it) of
  a TFRecord stream; ValueError at the first bad record."""
  whole = google_crc32c.Checksum()
  count = sum(1 for _ in framed_records(f, whole))
  return count, base64.b64encode(whole.digest()).decode()


def decode_batch(serialized, dataset):
  """A batch of serialized examples -> (uint8 images [B,H,W,C], int32 labels [B]).

  `dataset` is a manifest.Dataset (image and label keys, shape, encoding). One
  parse_example over the whole batch: one op instead of one per record (README: Speed).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (writers need none)
  shape = list(dataset.image_shape)
  image_spec = (tf.io.FixedLenFeature([np.prod(shape)], tf.int64)
                if dataset.encoding == "int64" else tf.io.FixedLenFeature([], tf.string))
  parsed = tf.io.parse_example(serialized, {
      dataset.image_key: image_spec,
      dataset.label_key: tf.io.FixedLenFeature([], tf.int64)})
  encoded = parsed[dataset.image_key]
  if dataset.encoding == "raw":
    images = tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [-1] + shape)
  elif dataset.encoding == "int64":
    images = tf.reshape(tf.cast(encoded, tf.uint8), [-1] + shape)
  else:
    decode = _decoder(dataset.encoding, shape, dataset.resize)
    images = tf.map_fn(lambda b: tf.ensure_shape(decode(b), shape),
                       encoded, fn_output_signature=tf.TensorSpec(shape, tf.uint8))
  labels = tf.cast(parsed[dataset.label_key] - dataset.label_offset, tf.int32)
  # Keep the static batch size (drop_remainder=True): TPUs need static shapes.
  images.set_shape([serialized.shape[0]] + shape)
  labels.set_shape([serialized.shape[0]])
  return images, labels


def _decoder(encoding: str, shape, resize: bool):
  """fn(encoded bytes) -> uint8 [H, W, C] image. With resize (images of varying
  sizes), the largest center crop of the target's aspect ratio, resized to it
  (bilinear): JPEGs decode only that window (decode_and_crop_jpeg)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  height, width, channels = shape
  if not resize:
    decoders = {"png": tf.io.decode_png, "jpeg": tf.io.decode_jpeg,
                "image": lambda b, channels: tf.io.decode_image(
                    b, channels=channels, expand_animations=False)}
    return lambda b: decoders[encoding](b, channels=channels)

  def crop_window(size):
    h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    scale = tf.minimum(h / height, w / width)
    crop_h = tf.cast(tf.round(scale * height), tf.int32)
    crop_w = tf.cast(tf.round(scale * width), tf.int32)
    return (size[0] - crop_h) // 2, (size[1] - crop_w) // 2, crop_h, crop_w

  def to_shape(image):
    resized = tf.image.resize(image, [height, width], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  def decode(b):
    if encoding == "jpeg":
      y, x, h, w = crop_window(tf.image.extract_jpeg_shape(b))
      image = tf.io.decode_and_crop_jpeg(b, tf.stack([y, x, h, w]), channels=channels)
    else:
      image = tf.io.decode_image(b, channels=channels, expand_animations=False)
      y, x, h, w = crop_window(tf.shape(image))
      image = image[y:y + h, x:x + w]
    return tf.cond(tf.reduce_all(tf.shape(image)[:2] == [height, width]),
                   lambda: image, lambda: to_shape(image))

  return decode
