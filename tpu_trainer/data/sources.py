"""Dataset sources. Each yields uint8 HWC images and int labels, split by split.

A split reads examples by index (`read(indices)`), so the converter can shuffle
before sharding and every worker streams only its own shard's examples: nothing
holds the whole dataset in memory. Sources that can only stream in order
(TFDS) say so with `random_access=False` and are read in contiguous ranges.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from typing import Callable, Iterator, Sequence

from absl import logging
import google_crc32c
import numpy as np

from tpu_trainer import storage
from tpu_trainer.data import manifest
from tpu_trainer.errors import MissingError
from tpu_trainer.errors import UserError

# What Pillow reads (a file named so that it is not an image is an error, named).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
Example = tuple[np.ndarray, int]


@dataclasses.dataclass
class Split:
  num_examples: int
  read: Callable[[Sequence[int]], Iterator[Example]]
  random_access: bool = True
  # False when reading runs TensorFlow ops, which a forked worker must not.
  process_safe: bool = True
  labels: np.ndarray | None = None  # every label, when known up front (checked before writing)


@dataclasses.dataclass
class Source:
  name: str
  class_names: list[str]
  image_shape: tuple[int, int, int]
  splits: dict[str, Split]
  # Changes whenever the examples would: a rerun with another fingerprint never
  # keeps the shards of this one.
  fingerprint: str = ""
  # load() arguments that let a worker reopen this source without the work opening
  # it took (Beam's workers; a tfrecord source's scan).
  reopen: dict = dataclasses.field(default_factory=dict)


def fingerprint(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_fingerprint(path: str) -> list:
  """Size and mtime, plus the content's crc32c for files up to 64 MiB (mtimes can
  stay the same across a quick rewrite)."""
  st = os.stat(path)
  parts = [os.path.abspath(path), st.st_size, st.st_mtime_ns]
  if st.st_size <= 64 << 20:
    with open(path, "rb") as f:
      parts.append(google_crc32c.value(f.read()))
  return parts


def integer_labels(labels: np.ndarray, what: str) -> np.ndarray:
  """Labels as int64; a float label that is not a whole number (3.7), or a string,
  is refused rather than truncated."""
  if labels.dtype.kind in "iub":
    return labels.astype(np.int64, copy=False)
  if labels.dtype.kind == "f":
    bad = labels[labels != np.round(labels)] if len(labels) else labels
    if not len(bad) and np.all(np.isfinite(labels)):
      return labels.astype(np.int64)
    raise UserError(f"{what}: label {bad[0] if len(bad) else 'NaN'} is not a class index; "
                    "labels must be whole numbers 0..K-1.")
  raise UserError(f"{what}: labels are {labels.dtype} (e.g. {labels[:1].tolist()}); expected "
                  "class indices 0..K-1 (map names to numbers first).")


def split_from_arrays(images: np.ndarray, labels: np.ndarray, what: str = "arrays") -> Split:
  """A split over in-memory or memory-mapped arrays: images [N,H,W(,C)] uint8, labels [N]."""
  if len(images) != len(labels):
    raise UserError(f"{what}: {len(images)} images but {len(labels)} labels; they must "
                    "pair up one to one.")
  # Plain views of memory maps: indexing a np.memmap costs more per example.
  images, labels = np.asarray(images), integer_labels(np.asarray(labels), what)
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
    raise UserError(f"{what}: images of shape {images.shape}; expected [N, H, W] or "
                    "[N, H, W, C] with C 1 or 3.")
  if images.ndim == 3:
    images = images[..., None]

  def read(indices):
    for i in indices:
      yield images[i], int(labels[i])

  return Split(len(images), read, labels=np.asarray(labels))


@dataclasses.dataclass(frozen=True)
class Kind:
  """One kind of --source: how it is written, and how it opens."""
  spec: str   # e.g. "folder:PATH"
  open: Callable[[str, dict], Source]  # (the part after "KIND:", load()'s options)
  path: bool  # the argument is a local path or gs:// URL (~ and $VARS are expanded)
  resizes: bool = False  # takes --image_size


# --source=KIND[:ARG]. A new source: a function returning a Source, and its entry.
KINDS = {
    "digits": Kind("digits", lambda arg, o: digits(o["seed"]), path=False),
    "tfds": Kind("tfds:NAME[:VERSION]",
                 lambda arg, o: tfds_source(arg, o["tfds_data_dir"], o["image_size"]),
                 path=False, resizes=True),
    "folder": Kind("folder:PATH", lambda arg, o: folder(arg, o["image_size"],
                                                        o["test_fraction"]),
                   path=True, resizes=True),
    "idx": Kind("idx:PATH", lambda arg, o: idx(arg), path=True),
    # Adopted in place by default (data/adopt.py); converted with --rewrite.
    "tfrecord": Kind("tfrecord:SPLIT=PATTERN[,SPLIT=PATTERN]|DIR", lambda arg, o: _tfrecord(
        arg, o), path=False, resizes=True),
    "npz": Kind("npz:FILE", lambda arg, o: npz(arg), path=True),
}
SPECS = " | ".join(kind.spec for kind in KINDS.values())


def _kind(spec: str) -> tuple[Kind, str]:
  name, sep, arg = spec.partition(":")
  kind = KINDS.get(name)
  if kind is None or bool(sep and arg) != (":" in kind.spec):
    raise UserError(f"Unknown --source={spec!r}: use {SPECS}.")
  return kind, arg


def expand(spec: str) -> str:
  """~ and $VARS expanded in a path argument, as a shell would have."""
  kind, arg = _kind(spec)
  if not kind.path or arg.startswith("gs://"):
    return spec
  return f"{spec.partition(':')[0]}:{os.path.expandvars(os.path.expanduser(arg))}"


# A tf.train.Example is a protocol buffer: 2 GiB at most, whatever the machine.
MAX_EXAMPLE_BYTES = 2**31 - 2**20


def check_image_size(image_size) -> None:
  """--image_size H,W whose RGB image (H*W*3 bytes) fits in one TFRecord example
  and a quarter of the memory available now (a worker holds an image, its
  resized copy and its encoding at once); refused with the numbers otherwise,
  before any work: 100000,100000 grew the converter to 23 GB until the kernel
  killed it."""
  height, width = image_size
  per_image = height * width * 3
  available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  limit, why = min((MAX_EXAMPLE_BYTES, "a TFRecord example's 2 GiB"),
                   (available // 4, f"a quarter of the {available / 2**30:.1f} GiB of "
                                    "memory available here"))
  if per_image > limit:
    raise UserError(f"--image_size={height},{width}: an RGB image of that size is "
                    f"{per_image / 2**30:.1f} GiB, more than {why} "
                    f"({limit / 2**30:.2f} GiB): pick a smaller size, e.g. 224,224.")


def load(spec: str, *, tfds_data_dir: str = "", image_size=None,
         test_fraction: float = 0.1, seed: int = 0, tfrecord: dict | None = None,
         tfrecord_known: dict | None = None) -> Source:
  """Opens a source from its --source spec (SPECS). tfrecord: the feature mapping
  of a tfrecord: source (image_key, label_key, label_offset, class_name_key,
  class_names)."""
  kind, arg = _kind(spec)
  if image_size and not kind.resizes:
    raise UserError(f"--image_size does not apply to --source={spec}: only "
                    f"{' and '.join(k.spec for k in KINDS.values() if k.resizes)} resize.")
  if image_size:
    check_image_size(image_size)
  return kind.open(arg, {"tfds_data_dir": tfds_data_dir, "image_size": image_size,
                         "test_fraction": test_fraction, "seed": seed,
                         "tfrecord": tfrecord or {}, "tfrecord_known": tfrecord_known})


def _tfrecord(arg: str, options: dict) -> Source:
  from tpu_trainer.data import adopt  # pylint: disable=g-import-not-at-top
  return adopt.rewrite_source(arg, {**options["tfrecord"], "image_size": options["image_size"]},
                              options["tfrecord_known"])


def digits(seed: int = 0) -> Source:
  """scikit-learn's bundled 8x8 handwritten digits: real data, offline.

  A stratified 80/20 train/test split, the same for a given seed.
  """
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  data = datasets.load_digits()
  # Pixels are 0..16; stretch to the 0..255 of every other image source.
  images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, data.target, test_size=0.2, stratify=data.target, random_state=seed)
  return Source("digits", [str(n) for n in data.target_names], (8, 8, 1),
                {"train": split_from_arrays(x_train, y_train),
                 "test": split_from_arrays(x_test, y_test)},
                fingerprint("digits", google_crc32c.value(images.tobytes()),
                            google_crc32c.value(data.target.tobytes()), seed))


def _download(path: str, workdir: str) -> tuple[str, list] | None:
  """A gs:// object copied into workdir: (local path, fingerprint), None if missing."""
  client = storage.gcs_client()
  bucket_name, name = storage.split_gcs(path)
  try:
    blob = client.bucket(bucket_name).get_blob(name, timeout=30, retry=None)
  except Exception as e:  # pylint: disable=broad-except  (no bucket, no credentials)
    raise storage.access_error(path, e) from None
  if blob is None:
    return None
  local = os.path.join(workdir, os.path.basename(name))
  blob.download_to_filename(local)
  return local, [path, blob.size, blob.generation, blob.crc32c]


def npz(path: str) -> Source:
  """An .npz in the keras.datasets layout: x_train, y_train, x_test, y_test
  (local, or gs:// copied to a temp file first and memory-mapped like a local one)."""
  if storage.is_gcs(path):
    workdir = tempfile.mkdtemp(prefix="tpu_trainer_npz_")
    try:
      found = _download(path, workdir)
      if found is None:
        raise MissingError(f"npz source {path!r} does not exist.")
      arrays = _memory_mapped_npz(found[0])
      stamp = found[1]
    finally:
      shutil.rmtree(workdir, ignore_errors=True)  # the mappings outlive the names
  else:
    if not os.path.isfile(path):
      raise MissingError(f"npz source {path!r} does not exist.")
    arrays = _memory_mapped_npz(path)
    stamp = file_fingerprint(path)
  return _npz_source(path, arrays, stamp)


def _npz_source(path: str, arrays: dict, stamp: list) -> Source:
  missing = {"x_train", "y_train"} - set(arrays)
  if missing:
    raise UserError(f"{path} lacks {sorted(missing)}; expected the keras.datasets "
                    "layout x_train, y_train[, x_test, y_test].")
  splits, labels = {}, []
  for split in ("train", "test"):
    if f"x_{split}" in arrays:
      if f"y_{split}" not in arrays:
        raise UserError(f"{path} has x_{split} but no y_{split}; expected the keras.datasets "
                        "layout x_train, y_train[, x_test, y_test].")
      x = arrays[f"x_{split}"]
      y = arrays[f"y_{split}"].reshape(-1)
      if x.dtype != np.uint8:
        raise UserError(f"{path}: x_{split} is {x.dtype}; expected uint8 pixels.")
      splits[split] = split_from_arrays(x, y, f"{path}: x_{split} and y_{split}")
      labels.append(y)
  name = os.path.splitext(os.path.basename(path))[0]
  class_names = arrays["class_names"].tolist() if "class_names" in arrays else None
  return _from_splits(name, splits, labels, fingerprint("npz", stamp), class_names)


def _memory_mapped_npz(path: str) -> dict:
  """The arrays of an .npz, memory-mapped: each member (compressed or not) is
  unpacked to a temp .npy first, so only the pages being read are in memory."""
  workdir = tempfile.mkdtemp(prefix="tpu_trainer_npz_")
  arrays = {}
  try:
    with zipfile.ZipFile(path) as archive:
      for member in archive.namelist():
        if not member.endswith(".npy"):
          continue
        target = os.path.join(workdir, os.path.basename(member))
        with archive.open(member) as src, open(target, "wb") as dst:
          shutil.copyfileobj(src, dst, 8 << 20)
        arrays[member[:-4]] = np.load(target, mmap_mode="r")
        os.remove(target)  # the mapping outlives the name: nothing is left behind
  except zipfile.BadZipFile:
    raise UserError(f"{path} is not an .npz archive.") from None
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return arrays


def _from_splits(name, splits, labels, source_fingerprint, class_names=None) -> Source:
  """Classes: the declared class_names, else 0..K-1 up to the largest label, named by
  their numbers. Undeclared, most of that range empty is an error (a stray label
  such as 255 among 0-9 would make 256 classes); a few empty ones are logged."""
  first = next(iter(splits.values()))
  if not first.num_examples:
    raise UserError(f"Source {name!r} has no examples.")
  image, _ = next(first.read([0]))
  every = np.concatenate([np.asarray(l, np.int64).reshape(-1) for l in labels])
  if every.min() < 0:
    raise UserError(f"Source {name!r} has label {every.min()}; labels are class indices "
                    "0..K-1.")
  if class_names is not None:
    return Source(name, [str(c) for c in class_names], image.shape, splits,
                  source_fingerprint)
  num_classes = int(every.max()) + 1
  absent = sorted(set(range(num_classes)) - set(np.unique(every).tolist()))
  if absent:
    shown = ", ".join(map(str, absent[:5])) + (", ..." if len(absent) > 5 else "")
    what = (f"labels run up to {num_classes - 1}, but classes {shown} ({len(absent)} of "
            f"{num_classes}) have no example")
    if 2 * len(absent) > num_classes:
      raise UserError(f"Source {name!r}: {what}: a stray label? Fix it, or declare the "
                      "classes (an npz's class_names array).")
    logging.warning("Source %r: %s.", name, what)
  return Source(name, [str(i) for i in range(num_classes)], image.shape, splits,
                source_fingerprint)


def _read_idx(path: str, workdir: str) -> np.ndarray:
  """An MNIST idx file, memory-mapped (.gz is unpacked to workdir first)."""
  original = path
  if path.endswith(".gz"):
    unpacked = os.path.join(workdir, os.path.basename(path)[:-3])
    try:
      with gzip.open(path, "rb") as src, open(unpacked, "wb") as dst:
        shutil.copyfileobj(src, dst)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
      raise UserError(f"{original} is truncated or not gzip ({e}); download it "
                      "again.") from None
    path = unpacked
  with open(path, "rb") as f:
    header = f.read(4)
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] != 0x08:
      raise UserError(f"{original} is not an idx file of unsigned bytes.")
    ndim = header[3]
    shape = tuple(int.from_bytes(f.read(4), "big") for _ in range(ndim))
  expected = 4 + 4 * ndim + int(np.prod(shape))
  if os.path.getsize(path) < expected:
    raise UserError(f"{original} is truncated: its header promises {shape} bytes of data "
                    f"({expected} in all), the file has {os.path.getsize(path)}.")
  array = np.memmap(path, dtype=np.uint8, mode="r", offset=4 + 4 * ndim, shape=shape)
  if path.startswith(workdir):
    os.remove(path)  # the unpacked copy: the mapping outlives the name
  return array


def idx(directory: str) -> Source:
  """MNIST / Fashion-MNIST idx files: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz],
  in a local directory or a gs:// prefix (copied to a temp directory first)."""
  remote = storage.is_gcs(directory)
  if not remote and not os.path.isdir(directory):
    raise MissingError(f"idx source directory {directory!r} does not exist.")
  workdir = tempfile.mkdtemp(prefix="tpu_trainer_idx_")
  splits, labels, files = {}, [], []
  try:
    for split, prefix in (("train", "train"), ("test", "t10k")):
      pair = []
      for kind in ("images-idx3", "labels-idx1"):
        base = (storage.join(directory, f"{prefix}-{kind}-ubyte") if remote else
                os.path.join(directory, f"{prefix}-{kind}-ubyte"))
        if remote:
          found = [f for f in (_download(p, workdir) for p in (base, base + ".gz")) if f]
          local, stamp = found[0] if found else (None, None)
        else:
          local = next((p for p in (base, base + ".gz") if os.path.exists(p)), None)
          stamp = local and file_fingerprint(local)
        if local is None:
          raise MissingError(f"{base}[.gz] is missing from the idx source.")
        pair.append(_read_idx(local, workdir))
        files.append(stamp)
      x, y = pair
      splits[split] = split_from_arrays(x, y, f"{directory}: {prefix} idx files")
      labels.append(np.asarray(y))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return _from_splits(directory.rstrip("/").rsplit("/", 1)[-1], splits, labels,
                      fingerprint("idx", files))


def _load_image(path: str, image_size, channels: int, data: bytes | None = None) -> np.ndarray:
  """An image file (or its bytes, read from `path` elsewhere) as uint8 HxWxC."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with _open_image(path, data) as im:
    if im.mode.startswith("I"):  # 16- or 32-bit gray: scaled to 8 bits, not clipped
      wide = np.asarray(im)
      im = Image.fromarray((wide.astype(np.float64) * 255 / _full_scale(im.mode, wide))
                           .round().astype(np.uint8))
    im = im.convert("RGB" if channels == 3 else "L")
    if image_size:
      im = im.resize((image_size[1], image_size[0]), Image.BILINEAR)
    array = np.asarray(im, dtype=np.uint8)
  return array.reshape(array.shape[:2] + (channels,))


@contextlib.contextmanager
def _open_image(path: str, data: bytes | None = None):
  """A PIL image of a file (or of its bytes, read from `path` elsewhere); an
  unreadable file, or one over Pillow's decompression-bomb limit (an image that
  would take gigabytes once decoded), is a UserError naming it."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data) if data is not None else path) as im:
      yield im
  except Image.DecompressionBombError as e:
    raise UserError(f"Image {path} has more pixels than Pillow decodes safely "
                    f"({2 * Image.MAX_IMAGE_PIXELS:,}): downscale it or remove it.") from None
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f"Cannot read image {path}: {e}. Remove or replace it.") from None


def _full_scale(mode: str, pixels: np.ndarray) -> float:
  """The white of a wide gray image: 65535 for 16-bit modes; for 32-bit "I",
  16-bit data stored wide when it fits, else its own maximum."""
  if mode.startswith("I;16") or (mode == "I" and pixels.max(initial=0) <= 65535):
    return 65535.0
  return float(max(pixels.max(initial=1), 1))


def _folder_images(directory: str, class_dir: str, skipped: list):
  """Image paths under one class directory, sorted. Hidden files and macOS `._*`
  files are passed over; other files that are no image (by extension, or not a
  regular file: a FIFO would block) are added to `skipped`; a symlink is followed
  only when it stays inside `directory`."""
  root = os.path.realpath(directory)
  paths = []
  for here, dirs, names in os.walk(class_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      if name.startswith("."):
        continue
      path = os.path.join(here, name)
      if not name.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(path):
        skipped.append(os.path.relpath(path, directory))
        continue
      real = os.path.realpath(path)
      if real != root and not real.startswith(root + os.sep):
        raise UserError(f"{path} is a symlink to {real}, outside the folder source "
                        f"{directory}: copy the image in, or remove the link.")
      paths.append(path)
  return paths


def _check_class_name(name: str, directory: str) -> None:
  if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
    raise UserError(f"Class folder {name!r} in {directory} has a control character (a "
                    "newline?): TFDS keeps one class name per line. Rename the folder.")


def _local_folder_items(directory: str):
  """(path relative to directory, size, mtime) of every image, in class
  subdirectories, and the files passed over as no image."""
  if not os.path.isdir(directory):
    raise MissingError(f"folder source {directory!r} does not exist.")
  items, skipped = [], []
  for name in sorted(os.listdir(directory)):
    if os.path.isdir(os.path.join(directory, name)) and not name.startswith("."):
      _check_class_name(name, directory)
      images = _folder_images(directory, os.path.join(directory, name), skipped)
      if not images:
        raise UserError(f"Class folder {name!r} in {directory} has no image Pillow reads "
                        f"({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}): add some, "
                        "or move the folder out.")
      for path in images:
        st = os.stat(path)
        items.append((os.path.relpath(path, directory), st.st_size, st.st_mtime_ns))
  return items, skipped


def _gcs_folder_items(directory: str):
  """The same for gs://bucket/prefix: one listing; classes are the first-level
  prefixes. A missing bucket is a fast error, not minutes of retries."""
  bucket_name, prefix = storage.split_gcs(directory.rstrip("/") + "/")
  client, exists = storage.bucket_exists(bucket_name, storage.gcs_client())
  if not exists:
    raise UserError(f"folder source: bucket gs://{bucket_name} does not exist.")
  items, skipped = [], []
  for blob in client.list_blobs(bucket_name, prefix=prefix):
    rel = blob.name[len(prefix):]
    parts = rel.split("/")
    if len(parts) < 2 or any(p.startswith(".") for p in parts) or rel.endswith("/"):
      continue
    if rel.lower().endswith(IMAGE_EXTENSIONS):
      _check_class_name(parts[0], directory)
      items.append((rel, blob.size, blob.generation))
    else:
      skipped.append(rel)
  return sorted(items), skipped


_GCS_CLIENTS = {}  # one per process: forked and Beam workers make their own


def _gcs_read(path: str) -> bytes:
  client = _GCS_CLIENTS.get(os.getpid())
  if client is None:
    client = _GCS_CLIENTS[os.getpid()] = storage.gcs_client()
  bucket_name, name = storage.split_gcs(path)
  return client.bucket(bucket_name).blob(name).download_as_bytes()


def _read_in_parallel(paths, threads: int = 16):
  """Bytes of each gs:// object in order, `threads` downloads in flight, at most
  4 x threads held at once."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for start in range(0, len(paths), 4 * threads):
      yield from pool.map(_gcs_read, paths[start:start + 4 * threads])


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")


def _folder_channels(paths: list[str], remote: bool) -> tuple[int, tuple]:
  """(1 if every image is grayscale else 3, the first image's (height, width)),
  from the images' headers, logged with the counts. On gs:// reading every
  header would download every image: there the first image and 64 others spread
  over the listing decide (the log says it sampled)."""
  sample = paths if not remote else paths[:1] + paths[1::max(1, len(paths) // 64)][:64]
  modes, first_size = collections.Counter(), None
  for path in sample:
    with _open_image(path, _gcs_read(path) if remote else None) as im:
      modes[im.mode] += 1
      first_size = first_size or (im.height, im.width)
  gray = sum(n for mode, n in modes.items() if mode in GRAY_MODES)
  channels = 1 if gray == sum(modes.values()) else 3
  logging.info("%d image%s%s: %s; written as %s.", sum(modes.values()),
               "s" if sum(modes.values()) != 1 else "",
               " sampled (gs://)" if remote else "",
               ", ".join(f"{n} {mode}" for mode, n in modes.most_common()),
               "grayscale" if channels == 1 else "RGB")
  return channels, first_size


def folder(directory: str, image_size=None, test_fraction: float = 0.1) -> Source:
  """One subdirectory (or gs:// prefix) of JPEG/PNG images per class (the flowers
  layout), local or in Cloud Storage.

  An image goes to `test` by a hash of its path, so the split is the same on
  every run and stays put when images are added.
  """
  if not 0 <= test_fraction < 1:
    raise UserError(f"--test_fraction={test_fraction} must be in [0, 1): the train "
                     "split needs images.")
  remote = storage.is_gcs(directory)
  listing, skipped = (_gcs_folder_items(directory) if remote
                      else _local_folder_items(directory))
  if skipped:
    logging.warning("Passed over %d file(s) that are no image Pillow reads: %s%s.",
                    len(skipped), ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
  separator = "/" if remote else os.sep
  # NFC: a folder copied from macOS (names decomposed) is the same classes and
  # the same split as the folder it was copied from.
  classes = sorted({manifest.class_name(rel.split(separator)[0]) for rel, _, _ in listing})
  label_of = {name: i for i, name in enumerate(classes)}
  files = {"train": [], "test": []}
  stats = []
  for rel, size, stamp in listing:
    label = label_of[manifest.class_name(rel.split(separator)[0])]
    bucket = zlib.crc32(manifest.class_name(rel).encode()) % 10_000
    split = "test" if bucket < test_fraction * 10_000 else "train"
    files[split].append((storage.join(directory, rel) if remote else
                         os.path.join(directory, rel), label))
    stats.append((rel, size, stamp, label, split))
  if not files["train"] and not files["test"]:
    raise UserError(f"folder source {directory!r} has no images in class subdirectories "
                    f"(expected {directory}/CLASS/*.jpg|png).")
  first_path = (files["train"] or files["test"])[0][0]
  channels, first_size = _folder_channels(
      [path for split in files.values() for path, _ in split], remote)
  size = tuple(image_size) if image_size else first_size

  def split_of(items):
    def read(indices):
      paths = [items[i][0] for i in indices]
      contents = _read_in_parallel(paths) if remote else (None for _ in paths)
      for i, data in zip(indices, contents):
        path, label = items[i]
        image = _load_image(path, image_size, channels, data)
        if image.shape[:2] != size:
          raise UserError(f"{path} is {image.shape[1]}x{image.shape[0]} but {first_path} "
                          f"is {size[1]}x{size[0]}; pass --image_size=H,W to resize all.")
        yield image, label
    return Split(len(items), read, labels=np.array([l for _, l in items], np.int64))

  splits = {s: split_of(items) for s, items in files.items() if items}
  name = directory.rstrip("/").rsplit("/", 1)[-1]
  return Source(name, classes, size + (channels,), splits,
                fingerprint("folder", directory if remote else os.path.realpath(directory),
                            image_size, stats))


# TFDS retries each download 10 times with backoff (3.5 minutes offline before the
# error); a few tries tell a network that is there from one that is not.
_TFDS_DOWNLOAD_TRIES = 3


def _download_and_prepare(builder, name: str) -> None:
  """builder.download_and_prepare(), failing in seconds, in one line, offline."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  import requests  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
  retries, downloader.MAX_RETRIES = downloader.MAX_RETRIES, _TFDS_DOWNLOAD_TRIES
  # urllib3's line per retry, from TFDS's download threads: TFDS's progress bar and
  # our error say it (and the threads may still be retrying after the error line).
  std_logging.getLogger("urllib3.connectionpool").setLevel(std_logging.ERROR)
  try:
    builder.download_and_prepare()
  except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
    raise UserError(
        f"Cannot download TFDS dataset {name!r} ({type(e).__name__}; offline?): prepare "
        f"it where there is a network (`tfds build {name} --data_dir=DIR`), copy DIR here "
        f"and pass --tfds_data_dir=DIR (it is not yet in {builder.data_dir}).") from None
  finally:
    downloader.MAX_RETRIES = retries


def tfds_source(arg: str, data_dir: str = "", image_size=None) -> Source:
  """A TensorFlow Datasets dataset, NAME or NAME:VERSION, with 'image' and 'label'.

  Downloads and prepares it (into --tfds_data_dir) when it is not there yet.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, _, version = arg.partition(":")
  try:
    builder = tfds.builder(name, version=version or None, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"Unknown TFDS dataset {name!r}; see "
                    "https://www.tensorflow.org/datasets/catalog for names.") from None
  _download_and_prepare(builder, name)
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise UserError(f"TFDS dataset {name!r} has no 'image' and 'label' features.")
  shape = features["image"].shape
  if image_size:
    shape = tuple(image_size) + (shape[-1],)
  elif None in shape:
    raise UserError(f"TFDS dataset {name!r} has images of varying size; "
                    "pass --image_size=H,W.")

  def split_of(split_name, count):
    def read(indices):
      # The converter hands a non-random-access source contiguous ranges.
      start, stop = int(indices[0]), int(indices[-1]) + 1
      ds = builder.as_dataset(split=f"{split_name}[{start}:{stop}]", shuffle_files=False)
      for example in tfds.as_numpy(ds):
        image = example["image"]
        if image_size:
          from PIL import Image  # pylint: disable=g-import-not-at-top
          pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
          image = np.asarray(pil.resize((image_size[1], image_size[0]), Image.BILINEAR))
          image = image.reshape(shape)
        yield image, int(example["label"])
    return Split(count, read, random_access=False, process_safe=False)

  splits = {s: split_of(s, info.num_examples) for s, info in builder.info.splits.items()}
  return Source(name, list(features["label"].names), tuple(shape), splits,
                fingerprint("tfds", name, str(builder.info.version), str(builder.data_dir),
                            image_size, {s: i.num_examples for s, i in splits.items()}))
