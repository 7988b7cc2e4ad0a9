"""TFRecords someone else wrote, adopted in place: metadata written, shards untouched.

`tpu-trainer-convert --source=tfrecord:SPLIT=PATTERN[,SPLIT=PATTERN]` (or a
directory in the layout of the Cloud TPU docs' imagenet_to_gcs.py) reads every
record once, in parallel worker processes, and checks it with the feature
mapping (image key, label key, label offset, class names); then it writes TFDS's
dataset_info.json and features.json with each split's own file-name template,
so TFDS's reader and ours read the original shards. Our tpu_trainer.json beside
them records per shard its record count, size, crc32c (and mtime, locally), and
the mapping: training refuses a shard that changed since, and subtracts the
label offset.

Records are tf.train.Example protos, parsed here from protobuf's wire format
(forked workers must not touch TensorFlow). Images are checked by their header
(Pillow reads the format and size without decoding).
"""
import base64
import collections
import dataclasses
import fnmatch
import glob
import io
import multiprocessing
import os
import re
import struct
import sys

from absl import logging
import google_crc32c

from tpu_trainer import storage
from tpu_trainer.data import manifest
from tpu_trainer.data import records
from tpu_trainer.errors import MissingError
from tpu_trainer.errors import UserError
from tpu_trainer.progress import Progress

SPEC = "tfrecord:SPLIT=PATTERN[,SPLIT=PATTERN] | tfrecord:DIR"
# The Cloud TPU docs' tools/datasets/imagenet_to_gcs.py: files train-NNNNN-of-01024
# and validation-NNNNN-of-00128; labels 1..1000 over the sorted synsets.
IMAGENET_FILES = {"train": "train-*-of-*", "test": "validation-*-of-*"}
IMAGENET_MAPPING = {"image_key": "image/encoded", "label_key": "image/class/label",
                    "label_offset": 1, "class_name_key": "image/class/synset"}
# What TFDS itself writes (and our own converter).
TFDS_MAPPING = {"image_key": "image", "label_key": "label", "label_offset": 0,
                "class_name_key": ""}
# Image formats TensorFlow's decode_image reads, by their first bytes.
MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"GIF8": "gif", b"BM": "bmp"}
CHANNELS = {"1": 1, "L": 1, "P": 3, "RGB": 3, "RGBA": 3, "CMYK": 3, "YCbCr": 3, "LA": 1,
            "I;16": 1, "I": 1}


@dataclasses.dataclass(frozen=True)
class Mapping:
  """Which features of the records are the image and the label, and how to read them."""
  image_key: str
  label_key: str
  label_offset: int = 0           # stored label - offset = class index 0..K-1
  class_name_key: str = ""        # a bytes feature naming each record's class
  class_names: tuple | None = None  # or the names, from a file (index = class)
  image_size: tuple | None = None   # H,W: raw images' size, or the size to train at


# ---------------------------------------------------------------------------
# Finding the files


def _expand(pattern: str, client) -> list[str]:
  """The files a glob pattern (local or gs://) names, sorted."""
  if storage.is_gcs(pattern):
    bucket_name, name = storage.split_gcs(pattern)
    prefix = re.split(r"[*?\[]", name, maxsplit=1)[0]
    try:
      blobs = (client or storage.gcs_client()).list_blobs(bucket_name, prefix=prefix,
                                                          timeout=30)
      names = [b.name for b in blobs if fnmatch.fnmatchcase(b.name, name)
               and "/" not in b.name[len(os.path.dirname(name)) + 1:]]
    except Exception as e:  # pylint: disable=broad-except  (no bucket, no credentials)
      if isinstance(e, UserError):
        raise
      raise storage.access_error(pattern, e) from None
    return sorted(f"gs://{bucket_name}/{n}" for n in names)
  return sorted(os.path.abspath(p) for p in glob.glob(os.path.expanduser(pattern))
                if os.path.isfile(p))


def find_splits(arg: str, client=None) -> dict:
  """{split: [files]}: SPLIT=PATTERN pairs, or a directory's imagenet_to_gcs files."""
  if not arg:
    raise UserError(f"--source=tfrecord: needs files: {SPEC}.")
  if "=" not in arg:  # a directory: the imagenet_to_gcs layout
    directory = arg.rstrip("/")
    splits = {split: _expand(storage.join(directory, pattern), client)
              for split, pattern in IMAGENET_FILES.items()}
    splits = {s: files for s, files in splits.items() if files}
    if "train" not in splits:
      raise MissingError(
          f"--source=tfrecord:{arg}: no train-NNNNN-of-NNNNN files there (the layout of "
          "imagenet_to_gcs.py); name the files of each split: "
          "--source=tfrecord:train=PATTERN,test=PATTERN.")
    return splits
  splits = {}
  for part in arg.split(","):
    split, sep, pattern = part.partition("=")
    if not sep or not split or not pattern or not re.fullmatch(r"[A-Za-z0-9_]+", split):
      raise UserError(f"--source=tfrecord:{arg}: {part!r} is not SPLIT=PATTERN ({SPEC}).")
    if split in splits:
      raise UserError(f"--source=tfrecord:{arg}: split {split!r} is named twice.")
    files = _expand(pattern, client)
    if not files:
      raise MissingError(f"--source=tfrecord: {split}={pattern} matches no file.")
    splits[split] = files
  return splits


def shard_template(files: list[str], output_dir: str) -> str:
  """A TFDS file-name template naming exactly these files, in order: relative to
  output_dir when they are in or under it (any TFDS reader follows it), absolute
  otherwise (our reader follows it; TFDS's only locally)."""
  directory = os.path.dirname(files[0])
  if any(os.path.dirname(f) != directory for f in files):
    raise UserError(f"The files of one split must be in one directory; these are in "
                    f"{os.path.dirname(files[0])} and others: give each split one directory's "
                    "files, or use --rewrite.")
  names = [os.path.basename(f) for f in files]
  n = len(names)
  for regex, template in ((r"(.*?)(\d{5})-of-(\d{5})(.*)", "{SHARD_X_OF_Y}"),
                          (r"(.*?)(\d{5})()(.*)", "{SHARD_INDEX}")):
    found = [re.fullmatch(regex, name) for name in names]
    if not all(found) or len({(m[1], m[4]) for m in found}) != 1:
      continue
    prefix, suffix = found[0][1], found[0][4]
    if "{" in prefix + suffix or "}" in prefix + suffix:
      break
    indices = [int(m[2]) for m in found]
    totals = {int(m[3]) for m in found if m[3]}
    if totals and totals != {n}:
      missing = sorted(set(range(max(totals))) - set(indices))[:3]
      raise UserError(f"{directory}: the files {prefix}*{suffix} say they are "
                      f"{max(totals)} shards, {n} are there (missing: "
                      f"{', '.join(f'{prefix}{i:05d}' for i in missing)}...): copy them all, "
                      "or name the split's files exactly.")
    if indices != list(range(n)):
      raise UserError(f"{directory}: {prefix}NNNNN{suffix} files are not numbered 0..{n - 1} "
                      "(a shard missing?): name the split's files exactly, or use --rewrite.")
    relative = _relative(directory, output_dir)
    return (relative + "/" if relative else "") + prefix + template + suffix
  raise UserError(f"{directory}: file names such as {names[0]} follow no TFDS shard template "
                  "(PREFIX-00000-of-00010 or PREFIX00000): TFDS's reader could not find "
                  "them. Rename them so, or convert with --rewrite.")


def _relative(directory: str, output_dir: str) -> str:
  """directory relative to output_dir when it is output_dir or below it, else
  directory itself (absolute)."""
  base = output_dir.rstrip("/")
  if directory == base:
    return ""
  if directory.startswith(base + "/"):
    return directory[len(base) + 1:]
  return directory if storage.is_gcs(directory) else os.path.abspath(directory)


# ---------------------------------------------------------------------------
# Reading records without TensorFlow


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    byte = data[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise ValueError("varint too long")


def _fields(data: bytes):
  """(field number, wire type, value) of a protobuf message; value: bytes for
  length-delimited fields, an int otherwise."""
  pos, end = 0, len(data)
  while pos < end:
    key, pos = _varint(data, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(data, pos)
    elif wire == 2:
      length, pos = _varint(data, pos)
      if pos + length > end:
        raise ValueError("a field runs past the end")
      value, pos = data[pos:pos + length], pos + length
    elif wire == 5:
      value, pos = data[pos:pos + 4], pos + 4
    elif wire == 1:
      value, pos = data[pos:pos + 8], pos + 8
    else:
      raise ValueError(f"wire type {wire}")
    yield number, wire, value
  if pos != end:
    raise ValueError("a field runs past the end")


KINDS = {1: "bytes", 2: "float", 3: "int64"}


def parse_example(data: bytes, wanted) -> tuple[dict, list]:
  """A serialized tf.train.Example -> ({key: (kind, values)} for the wanted keys,
  every key in it). ValueError when it is not one."""
  found, keys = {}, []
  for number, wire, features in _fields(data):
    if number != 1 or wire != 2:
      raise ValueError(f"field {number} is not an Example's features")
    for number, wire, entry in _fields(features):
      if number != 1 or wire != 2:
        raise ValueError("not a feature map")
      key, feature = b"", b""
      for n, w, v in _fields(entry):
        if w != 2:
          raise ValueError("not a feature map entry")
        if n == 1:
          key = v
        elif n == 2:
          feature = v
      key = key.decode("utf-8", "replace")
      keys.append(key)
      if key in wanted:
        found[key] = _feature(feature)
  return found, keys


def _feature(data: bytes) -> tuple[str, list]:
  kind, values = "empty", []
  for number, wire, value in _fields(data):
    kind = KINDS.get(number)
    if kind is None or wire != 2:
      raise ValueError(f"feature field {number}")
    for n, w, v in _fields(value):
      if n != 1:
        raise ValueError("list field")
      if kind == "bytes":
        values.append(v)
      elif kind == "int64":
        if w == 0:
          values.append(v)
        else:  # packed
          pos = 0
          while pos < len(v):
            item, pos = _varint(v, pos)
            values.append(item)
      elif w == 5:
        values.extend(struct.unpack("<f", v))
      else:
        values.extend(struct.unpack(f"<{len(v) // 4}f", v))
  if kind == "int64":  # two's complement
    values = [v - (1 << 64) if v >= 1 << 63 else v for v in values]
  return kind, values


# ---------------------------------------------------------------------------
# Scanning (each file in a worker process)


@dataclasses.dataclass
class FileScan:
  file: str
  num_examples: int = 0
  num_bytes: int = 0
  crc32c: str = ""
  mtime_ns: int | None = None
  labels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  names: dict = dataclasses.field(default_factory=dict)      # label -> class name
  formats: set = dataclasses.field(default_factory=set)      # jpeg, png, ..., raw
  channels: set = dataclasses.field(default_factory=set)
  sizes: set = dataclasses.field(default_factory=set)        # (h, w), up to a few
  varying: bool = False


def _image_info(data: bytes, mapping: Mapping) -> tuple[str, int, tuple]:
  """(format, channels, (h, w)) of one image's bytes; ValueError if unreadable."""
  kind = next((k for magic, k in MAGIC.items() if data.startswith(magic)), None)
  if kind is None:
    if mapping.image_size is None:
      raise ValueError("is neither JPEG, PNG, GIF nor BMP; raw pixels need "
                       "--image_size=H,W")
    height, width = mapping.image_size
    channels, rest = divmod(len(data), height * width)
    if rest or channels not in (1, 3):
      raise ValueError(f"holds {len(data)} bytes: not a {height}x{width} image of 1 or 3 "
                       "uint8 channels (nor JPEG, PNG, GIF or BMP)")
    return "raw", channels, (height, width)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as image:  # the header only: nothing decoded
      width, height = image.size
      return kind, CHANNELS.get(image.mode, 3), (height, width)
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many kinds)
    raise ValueError(f"starts like {kind.upper()} but does not open ({e})") from None


def scan_file(path: str, mapping: Mapping, client=None) -> FileScan:
  """Reads one file whole and checks every record with the mapping; a UserError
  naming the file and the record's index at the first that fails."""
  scan = FileScan(path)
  wanted = {mapping.image_key, mapping.label_key, mapping.class_name_key}
  if not storage.is_gcs(path):
    scan.mtime_ns = os.stat(path).st_mtime_ns
  checksum = google_crc32c.Checksum()
  bad = None
  try:
    with storage.open_read(path, client) as f:
      for data in records.framed_records(f, checksum):
        scan.num_bytes += len(data) + manifest.RECORD_OVERHEAD
        try:
          _check_record(data, mapping, wanted, scan)
        except ValueError as e:
          bad = f"{path}: record {scan.num_examples}: {e}."
          break
        scan.num_examples += 1
  except ValueError as e:  # the framing: a damaged or cut file
    raise UserError(f"{path} is not a whole TFRecord file ({e}).") from None
  except Exception as e:  # pylint: disable=broad-except
    if storage.is_not_found(e):
      raise MissingError(f"{path} is gone (it was listed a moment ago).") from None
    raise
  if bad:
    raise UserError(bad)
  scan.crc32c = base64.b64encode(checksum.digest()).decode()
  return scan


def _check_record(data: bytes, mapping: Mapping, wanted, scan: FileScan) -> None:
  try:
    found, keys = parse_example(data, wanted)
  except (ValueError, IndexError) as e:
    raise ValueError(f"not a tf.train.Example ({e})") from None
  for key, kind, what in ((mapping.image_key, "bytes", "--image_key"),
                          (mapping.label_key, "int64", "--label_key"),
                          (mapping.class_name_key, "bytes", "--class_name_key")):
    if not key:
      continue
    if key not in found:
      raise ValueError(f"no feature {key!r} ({what}); its features are "
                       f"{', '.join(sorted(keys))}")
    got, values = found[key]
    if got != kind or len(values) != 1:
      raise ValueError(f"feature {key!r} holds {len(values)} {got} value(s); {what} needs "
                       f"one {kind} value")
  label = found[mapping.label_key][1][0] - mapping.label_offset
  num_classes = len(mapping.class_names) if mapping.class_names else None
  stored = found[mapping.label_key][1][0]
  if label < 0:
    raise ValueError(f"label {stored} is below the label offset {mapping.label_offset} (the "
                     "first class's label): fix --label_offset (1 for 1-based labels, 0 for "
                     "0-based)")
  if num_classes is not None and label >= num_classes:
    raise ValueError(f"label {stored} is past the last of the {num_classes} class names (label "
                     f"offset {mapping.label_offset}): fix --class_names or --label_offset")
  scan.labels[label] += 1
  if mapping.class_name_key:
    name = found[mapping.class_name_key][1][0].decode("utf-8", "replace")
    if scan.names.setdefault(label, name) != name:
      raise ValueError(f"label {label + mapping.label_offset} is named {name!r} here and "
                       f"{scan.names[label]!r} before: {mapping.class_name_key} does not "
                       "name the labels one to one")
  try:
    kind, channels, size = _image_info(found[mapping.image_key][1][0], mapping)
  except ValueError as e:
    raise ValueError(f"its image ({mapping.image_key}) {e}") from None
  scan.formats.add(kind)
  scan.channels.add(channels)
  if size not in scan.sizes:
    scan.varying = bool(scan.sizes)
    if len(scan.sizes) < 4:
      scan.sizes.add(size)


_MAPPING: Mapping | None = None
_CLIENT = None


def _scan_in_worker(path: str) -> FileScan:
  global _CLIENT
  if storage.is_gcs(path) and _CLIENT is None:
    _CLIENT = storage.gcs_client()  # one per worker: a forked pool garbles requests
  return scan_file(path, _MAPPING, _CLIENT)


def scan(files: list[str], mapping: Mapping, workers: int = 0, client=None) -> dict:
  """{file: FileScan} of every file, read in parallel by forked worker processes
  (in this process where fork is unsafe or one worker is asked for)."""
  global _MAPPING
  workers = min(workers or os.cpu_count() or 1, len(files))
  progress = Progress(len(files), "files")
  results = {}
  _MAPPING = mapping
  in_process = workers <= 1 or not sys.platform.startswith("linux")
  pool = None
  try:
    if in_process:
      done = (scan_file(f, mapping, client) for f in files)
    else:
      pool = multiprocessing.get_context("fork").Pool(workers)
      done = pool.imap_unordered(_scan_in_worker, files)
    for result in done:
      results[result.file] = result
      progress.update(1)
      if progress.line_due():
        progress.log("Scanned %d/%d files (%d records)", len(results), len(files),
                     sum(r.num_examples for r in results.values()))
  finally:
    progress.close()
    if pool is not None:
      pool.terminate()
      pool.join()
  return results


# ---------------------------------------------------------------------------
# Adopting


def mapping_for(first_keys: list[str], flags: dict) -> Mapping:
  """The mapping: the flags given; without --image_key/--label_key, the layout the
  first record's keys show (imagenet_to_gcs's or TFDS's, said in the log);
  UserError naming the keys there are when none fits."""
  given = {k: v for k, v in flags.items() if v is not None and v != ""}
  defaults = {"label_offset": 0, "class_name_key": ""}
  keys = set(first_keys)
  if "image_key" in given or "label_key" in given:
    pass
  elif {"image/encoded", "image/class/label"} <= keys:
    defaults = dict(IMAGENET_MAPPING)
    if "image/class/synset" not in keys or "class_names" in given:
      defaults["class_name_key"] = ""
    logging.info("Recognised the imagenet_to_gcs layout: images in image/encoded, labels in "
                 "image/class/label counted from %d%s.", given.get("label_offset", 1),
                 ", class names from image/class/synset" if defaults["class_name_key"] else "")
  elif {"image", "label"} <= keys:
    defaults = dict(TFDS_MAPPING)
  merged = {**defaults, **given}
  if not {"image_key", "label_key"} <= set(merged):
    raise UserError(f"The records' features are {', '.join(sorted(first_keys))}: say which is "
                    "the image and which the label with --image_key=KEY --label_key=KEY "
                    "(and --label_offset=1 for 1-based labels).")
  return Mapping(**merged)


def read_class_names(path: str) -> tuple:
  """One class name per line, line i naming class i (blank lines ignored)."""
  try:
    text = storage.read_text(path)
  except FileNotFoundError:
    raise MissingError(f"--class_names={path} does not exist.") from None
  names = tuple(line.strip() for line in text.splitlines() if line.strip())
  if not names:
    raise UserError(f"--class_names={path} is empty: one class name per line.")
  if len(set(names)) != len(names):
    twice = next(n for n in names if names.count(n) > 1)
    raise UserError(f"--class_names={path} names {twice!r} twice.")
  return names


def first_record_keys(path: str, client=None) -> list[str]:
  try:
    with storage.open_read(path, client) as f:
      data = next(records.framed_records(f), None)
  except ValueError as e:
    raise UserError(f"{path} is not a TFRecord file ({e}).") from None
  if data is None:
    raise UserError(f"{path} holds no records.")
  try:
    return parse_example(data, ())[1]
  except (ValueError, IndexError) as e:
    raise UserError(f"{path}: record 0 is not a tf.train.Example ({e}).") from None


def adopt(arg: str, output_dir: str, *, flags: dict, workers: int = 0,
          client=None) -> manifest.Dataset:
  """Scans the files --source=tfrecord:ARG names and publishes their metadata in
  output_dir; the files themselves are only read."""
  if not storage.is_gcs(output_dir):
    output_dir = os.path.abspath(output_dir)
  splits = find_splits(arg, client)
  every = [f for files in splits.values() for f in files]
  if client is None and any(storage.is_gcs(p) for p in every + [output_dir]):
    client = storage.gcs_client()
  names = collections.Counter(os.path.basename(f) for f in every)
  if max(names.values()) > 1:
    raise UserError(f"Two splits have a file named {names.most_common(1)[0][0]}: the metadata "
                    "names shards by file name; give each split differently named files, or "
                    "use --rewrite.")
  first = next(iter(splits.values()))[0]
  class_names = read_class_names(flags.pop("class_names")) if flags.get("class_names") else None
  mapping = mapping_for(first_record_keys(first, client), {**flags, "class_names": class_names})
  templates = {split: shard_template(files, output_dir) for split, files in splits.items()}
  _check_output_dir(output_dir, client)
  scans = scan(every, mapping, workers, client)
  return publish(splits, scans, mapping, templates, output_dir, arg, client)


def _check_output_dir(output_dir: str, client) -> None:
  """Refuses to replace a dataset that is not an adoption (TFDS's, or one converted)."""
  if not storage.is_gcs(output_dir):
    try:
      os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
      raise UserError(f"Cannot write to --output_dir={output_dir!r}: {e.strerror}.") from None
  text = storage.read_text_if_exists(storage.join(output_dir, manifest.INFO_FILE), client)
  if text is None:
    return
  ours = storage.read_text_if_exists(storage.join(output_dir, manifest.OURS_FILE), client)
  if ours is None or '"adopted"' not in ours:
    raise UserError(f"--output_dir={output_dir} holds another dataset already (its "
                    f"{manifest.INFO_FILE}): write the adoption's metadata elsewhere.")


@dataclasses.dataclass(frozen=True)
class Summary:
  """What the scans say of the dataset as a whole."""
  class_names: list
  image_shape: tuple     # what training sees
  encoding: str          # raw, jpeg, png, or image (any format decode_image reads)
  resize: bool           # images are center-cropped and resized to image_shape
  varying: bool          # the stored images differ in size
  formats: tuple


def summarize(scans: dict, mapping: Mapping) -> Summary:
  """Class names, image shape and encoding of all the files' scans; UserError
  when they disagree in ways training cannot take."""
  labels = collections.Counter()
  names = {}
  for s in scans.values():
    labels.update(s.labels)
    for label, name in s.names.items():
      if names.setdefault(label, name) != name:
        raise UserError(f"{s.file}: label {label + mapping.label_offset} is named {name!r}; "
                        f"other files name it {names[label]!r}.")
  if not labels:
    raise UserError("The files hold no records.")
  if mapping.class_names:
    class_names = list(mapping.class_names)
  else:
    num_classes = max(labels) + 1
    absent = sorted(set(range(num_classes)) - set(labels))
    if 2 * len(absent) > num_classes:
      raise UserError(f"Labels run up to {num_classes - 1 + mapping.label_offset}, but "
                      f"{len(absent)} of the {num_classes} classes have no record: a stray "
                      "label, or a wrong --label_offset? Give --class_names=FILE.")
    class_names = [names.get(i, str(i)) for i in range(num_classes)]
    if absent:
      logging.warning("Classes %s have no record.", absent[:10])
  formats = set().union(*(s.formats for s in scans.values()))
  every_channels = set().union(*(s.channels for s in scans.values()))
  sizes = set().union(*(s.sizes for s in scans.values()))
  varying = len(sizes) > 1 or any(s.varying for s in scans.values())
  if "raw" in formats and (len(formats) > 1 or len(every_channels) > 1):
    raise UserError("Some images are raw pixels and some encoded, or of other channel "
                    f"counts ({', '.join(sorted(formats))}): convert with --rewrite.")
  channels = max(every_channels)
  if mapping.image_size:
    image_shape = (*mapping.image_size, channels)
  elif varying:
    shown = sorted(sizes)
    raise UserError(f"The images vary in size ({shown[0][0]}x{shown[0][1]}, "
                    f"{shown[-1][0]}x{shown[-1][1]}, ...): give --image_size=H,W, the size to "
                    "train at (each image is center-cropped to that shape and resized).")
  else:
    image_shape = (*next(iter(sizes)), channels)
  encoding = (next(iter(formats)) if len(formats) == 1 and formats <= {"raw", "jpeg", "png"}
              else "image")
  resize = encoding != "raw" and (varying or image_shape[:2] != next(iter(sizes)))
  return Summary(class_names, image_shape, encoding, resize, varying, tuple(sorted(formats)))


def publish(splits, scans, mapping: Mapping, templates, output_dir, arg, client):
  """The scans -> the dataset's metadata in output_dir."""
  summary = summarize(scans, mapping)
  image_shape = summary.image_shape
  split_shards = {}
  for split, files in splits.items():
    split_shards[split] = [
        {"file": os.path.basename(f), "num_examples": scans[f].num_examples,
         "num_bytes": scans[f].num_bytes, "crc32c": scans[f].crc32c,
         **({"mtime_ns": scans[f].mtime_ns} if scans[f].mtime_ns is not None else {})}
        for f in files]
  total = sum(s.num_examples for s in scans.values())
  manifest.write(
      output_dir, name=_dataset_name(splits),
      image_shape=(None, None, image_shape[2]) if summary.varying else image_shape,
      encoding=summary.encoding, class_names=summary.class_names, splits=split_shards,
      template="", templates=templates, image_key=mapping.image_key,
      label_key=mapping.label_key, label_offset=mapping.label_offset,
      ours={"adopted": {"source": f"tfrecord:{arg}", "image_key": mapping.image_key,
                        "label_key": mapping.label_key, "label_offset": mapping.label_offset,
                        "image_shape": list(image_shape), "resize": summary.resize}},
      description=f"{total} records adopted in place by tpu_trainer from {arg}.",
      client=client)
  logging.info("Adopted %d records in %d files (%s; %s images%s) into %s: metadata only, "
               "the files are read where they are.", total, len(scans),
               ", ".join(f"{s}: {len(f)} files" for s, f in splits.items()),
               "/".join(summary.formats),
               f", center-cropped and resized to {image_shape[0]}x{image_shape[1]} when read"
               if summary.resize else "", output_dir)
  return manifest.read(output_dir, client)


def _dataset_name(splits: dict) -> str:
  """The files' directory, as a TFDS dataset name."""
  directory = os.path.dirname(next(iter(splits.values()))[0])
  return re.sub(r"[^a-z0-9_]+", "_", os.path.basename(directory).lower()).strip("_") or "adopted"


# ---------------------------------------------------------------------------
# Rewriting (--rewrite): the same files as a source for the converter


def rewrite_source(arg: str, flags: dict, known: dict | None = None):
  """A sources.Source over the records --source=tfrecord:ARG names, for the
  converter (local workers or Beam). Scans them first (the checks and counts of an
  adoption); `known` (what a scan found, passed to Beam's workers) skips that."""
  from tpu_trainer.data import sources  # pylint: disable=g-import-not-at-top
  flags = dict(flags)
  splits = find_splits(arg)
  class_names = read_class_names(flags.pop("class_names")) if flags.get("class_names") else None
  if known is None:
    mapping = mapping_for(first_record_keys(next(iter(splits.values()))[0]),
                          {**flags, "class_names": class_names})
    scans = scan([f for files in splits.values() for f in files], mapping)
    summary = summarize(scans, mapping)
    known = {"mapping": dataclasses.asdict(mapping),
             "counts": {f: s.num_examples for f, s in scans.items()},
             "summary": dataclasses.asdict(summary)}
  mapping = Mapping(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in known["mapping"].items()})
  summary = Summary(**known["summary"])
  shape = tuple(summary.image_shape)

  def split_of(files):
    counts = [known["counts"][f] for f in files]
    starts = [sum(counts[:i]) for i in range(len(counts))]

    def read(indices):
      """Contiguous ranges, read in order (TFRecords stream)."""
      wanted = set(indices)
      first, last = min(indices), max(indices)
      for path, start, count in zip(files, starts, counts):
        if start + count <= first or start > last:
          continue
        with storage.open_read(path) as f:
          for i, data in enumerate(records.framed_records(f), start):
            if i > last:
              break
            if i in wanted:
              yield _example(data, mapping, shape, summary.resize, f"{path} record {i - start}")

    return sources.Split(sum(counts), read, random_access=False)

  return sources.Source(
      _dataset_name(splits), list(summary.class_names), shape,
      {split: split_of(files) for split, files in splits.items()},
      sources.fingerprint("tfrecord", arg, known), reopen={"tfrecord_known": known})


def _example(data: bytes, mapping: Mapping, shape, resize: bool, where: str):
  """(uint8 HxWxC image, class index) of one record."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  found, _ = parse_example(data, {mapping.image_key, mapping.label_key})
  encoded = found[mapping.image_key][1][0]
  label = found[mapping.label_key][1][0] - mapping.label_offset
  height, width, channels = shape
  if not any(encoded.startswith(m) for m in MAGIC):
    return np.frombuffer(encoded, np.uint8).reshape(shape), label
  try:
    with Image.open(io.BytesIO(encoded)) as image:
      image = image.convert("RGB" if channels == 3 else "L")
      if resize:  # as training reads an adopted dataset: center crop, then resize
        scale = min(image.height / height, image.width / width)
        crop_h, crop_w = round(scale * height), round(scale * width)
        top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
        image = image.resize((width, height), Image.BILINEAR,
                             box=(left, top, left + crop_w, top + crop_h))
      array = np.asarray(image, np.uint8)
  except OSError as e:
    raise UserError(f"{where}: its image does not decode ({e}).") from None
  return array.reshape(shape), label
