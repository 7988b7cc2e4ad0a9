"""Shards in the layout of the Cloud TPU docs' tools/datasets/imagenet_to_gcs.py,
written here from its field list (not copied): files train-NNNNN-of-NNNNN and
validation-NNNNN-of-NNNNN; each record a tf.train.Example with image/encoded
(JPEG), image/class/label (1-based over the sorted synsets), image/class/synset,
image/height, image/width, image/channels, image/colorspace, image/format and
image/filename. The pictures are scikit-learn's digits, upscaled to varying
sizes and coloured, so that a model can learn them."""
import io

import numpy as np
from PIL import Image

SYNSETS = [f"n0{4000000 + 17 * d}" for d in range(10)]  # sorted, like ImageNet's


def digit_images(count: int, seed: int, size=None):
  """(uint8 RGB images of varying sizes (or all of `size` H,W), digit labels 0..9)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  data = datasets.load_digits()
  rng = np.random.default_rng(seed)
  picks = rng.choice(len(data.images), count, replace=count > len(data.images))
  images = []
  for i in picks:
    gray = Image.fromarray(np.round(data.images[i] * 255 / 16).astype(np.uint8))
    height, width = size or (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
    big = np.asarray(gray.resize((width, height), Image.BILINEAR), np.float32) / 255
    tint = rng.uniform(0.5, 1.0, 3)
    images.append(np.round(big[..., None] * tint * 255).astype(np.uint8))
  return images, data.target[picks]


def example(image: np.ndarray, label: int, filename: str, encoding: str = "jpeg") -> bytes:
  """One record as imagenet_to_gcs writes it; label 0-based here, 1-based in the record."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="JPEG" if encoding == "jpeg" else "PNG", quality=95)

  def b(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

  def i(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

  return tf.train.Example(features=tf.train.Features(feature={
      "image/height": i(image.shape[0]), "image/width": i(image.shape[1]),
      "image/colorspace": b(b"RGB"), "image/channels": i(3),
      "image/class/label": i(int(label) + 1),
      "image/class/synset": b(SYNSETS[label].encode()),
      "image/format": b(b"JPEG" if encoding == "jpeg" else b"PNG"),
      "image/filename": b(filename.encode()), "image/encoded": b(out.getvalue()),
  })).SerializeToString()


def write(directory, shards=None, per_shard: int = 40, seed: int = 0, size=None):
  """Writes train (3 shards) and validation (2 shards) files into directory;
  returns {"train": (images, labels), "validation": ...} in file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shards = shards or {"train": 3, "validation": 2}
  written = {}
  for n, (prefix, count) in enumerate(shards.items()):
    images, labels = digit_images(count * per_shard, seed + n, size)
    written[prefix] = (images, labels)
    for shard in range(count):
      with tf.io.TFRecordWriter(f"{directory}/{prefix}-{shard:05d}-of-{count:05d}") as w:
        for k in range(shard * per_shard, (shard + 1) * per_shard):
          w.write(example(images[k], labels[k], f"{SYNSETS[labels[k]]}_{k}.JPEG"))
  return written
