"""Sources in Cloud Storage (folder:, npz:, idx: on gs://), on a real
fake-gcs-server: every example converted once, with the right label."""
import gzip
import io
import time

import numpy as np
import pytest
import tensorflow as tf

from tpu_trainer import storage
from tpu_trainer.data import convert
from tpu_trainer.data import manifest
from tpu_trainer.data import records
from tpu_trainer.data import sources


def upload_folder(bucket, prefix, per_class=70, classes=("daisy", "roses", "tulips")):
  """PNG images under gs://bucket/prefix/CLASS/; returns {image bytes: class}."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  blobs = storage.gcs_client().bucket(bucket)
  pixels = {}
  for c in classes:
    for i in range(per_class):
      image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
      out = io.BytesIO()
      Image.fromarray(image).save(out, format="PNG")
      blobs.blob(f"{prefix}/{c}/img{i:03d}.png").upload_from_string(out.getvalue())
      pixels[image.tobytes()] = c
  blobs.blob(f"{prefix}/daisy/._img000.png").upload_from_string(b"\0\5\x16\7 AppleDouble")
  blobs.blob(f"{prefix}/notes.txt").upload_from_string(b"not an image")
  return pixels


def test_folder_source_in_a_bucket(gcs_bucket, tmp_path):
  pixels = upload_folder(gcs_bucket, "flowers")
  source = sources.load(f"folder:gs://{gcs_bucket}/flowers", test_fraction=0.2)
  assert source.class_names == ["daisy", "roses", "tulips"]
  assert source.image_shape == (12, 10, 3)
  assert sum(s.num_examples for s in source.splits.values()) == 210
  out = str(tmp_path / "out")
  dataset = convert.convert(source, out, encoding="png", num_shards=3)
  seen = []
  for split in dataset.splits.values():
    for path in split.files:
      for batch in tf.data.TFRecordDataset(path).batch(100):
        images, labels = records.decode_batch(batch, dataset)
        seen += [(im.tobytes(), dataset.class_names[l])
                 for im, l in zip(images.numpy(), labels.numpy())]
  assert sorted(seen) == sorted(pixels.items())  # every image once, with its class


def test_npz_and_idx_sources_in_a_bucket(gcs_bucket, tmp_path):
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8), rng.integers(0, 3, 30)
  buffer = io.BytesIO()
  np.savez(buffer, x_train=x, y_train=y)
  blobs = storage.gcs_client().bucket(gcs_bucket)
  blobs.blob("arrays/data.npz").upload_from_string(buffer.getvalue())
  source = sources.load(f"npz:gs://{gcs_bucket}/arrays/data.npz")
  assert [(im[..., 0].tobytes(), l) for im, l in source.splits["train"].read(range(30))] == [
      (im.tobytes(), int(l)) for im, l in zip(x, y)]

  for prefix, n in (("train", 20), ("t10k", 8)):
    for kind, array in (("images-idx3", x[:n]), ("labels-idx1", y[:n])):
      header = bytes([0, 0, 8, array.ndim]) + b"".join(
          d.to_bytes(4, "big") for d in array.shape)
      blobs.blob(f"mnist/{prefix}-{kind}-ubyte.gz").upload_from_string(
          gzip.compress(header + array.astype(np.uint8).tobytes()))
  source = sources.load(f"idx:gs://{gcs_bucket}/mnist")
  assert {s: v.num_examples for s, v in source.splits.items()} == {"train": 20, "test": 8}
  dataset = convert.convert(source, str(tmp_path / "idx"), num_shards=2)
  assert manifest.verify(str(tmp_path / "idx"))["examples"] == 28
  assert dataset.image_shape == (6, 6, 1)


def test_missing_bucket_and_empty_prefix_fail_fast(gcs_bucket):
  start = time.perf_counter()
  with pytest.raises(ValueError, match="bucket gs://no-such-bucket-x does not exist"):
    sources.load("folder:gs://no-such-bucket-x/images")
  with pytest.raises(ValueError, match="has no images in class subdirectories"):
    sources.load(f"folder:gs://{gcs_bucket}/empty")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.load(f"npz:gs://{gcs_bucket}/none.npz")
  assert time.perf_counter() - start < 60  # no minutes of retries
