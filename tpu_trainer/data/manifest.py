"""A dataset's metadata, in one place: read, write, check and verify.

A dataset directory is a TensorFlow Datasets dataset: TFDS's `dataset_info.json`
and `features.json` (plus a `<feature>.labels.txt` per ClassLabel), written with
TFDS's own feature types and metadata writer, and shards named by each split's
`filepathTemplate`. Any TFDS reader (`tfds.builder_from_directory`) opens it,
and training opens any dataset TFDS prepared.

Beside them, datasets this package converted have `tpu_trainer.json`: per-shard
crc32c and byte size, the conversion parameters and the source's fingerprint.
Datasets TFDS wrote have none; their shards are checked against TFDS's shard
lengths and split byte counts instead.

Reading parses the files' text with TFDS's proto and feature classes, through
`storage`, so gs:// works the same wherever storage reads it.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import unicodedata

from absl import logging
import numpy as np

from tpu_trainer import storage
from tpu_trainer.data import records
from tpu_trainer.errors import MissingError
from tpu_trainer.errors import UserError

INFO_FILE = "dataset_info.json"
FEATURES_FILE = "features.json"
OURS_FILE = "tpu_trainer.json"
FORMAT_VERSION = 2
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
# TFRecord framing per record (length, its crc, data crc): a shard's file size
# is TFDS's serialized bytes plus this per example.
RECORD_OVERHEAD = 16
# Images at most this many pixels are stored as raw bytes: decoding would cost
# more than the bytes it saves.
RAW_MAX_PIXELS = 64 * 64


@dataclasses.dataclass(frozen=True)
class Split:
  name: str
  files: list            # full paths, in shard order
  shard_lengths: list    # examples per shard
  num_bytes: int         # serialized example bytes (TFDS's numBytes); 0 when unknown

  @property
  def num_examples(self) -> int:
    return sum(self.shard_lengths)


def class_name(name) -> str:
  """A class name as stored and compared: Unicode NFC. A folder named on macOS
  (decomposed, NFD) and the same name typed elsewhere print the same and are
  the same class."""
  return unicodedata.normalize("NFC", str(name))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What training needs to know about a dataset directory."""
  data_dir: str
  name: str
  image_key: str
  label_key: str
  image_shape: tuple
  # raw: uint8 bytes; int64: uint8 values as an int64 list; png / jpeg; image: either.
  encoding: str
  class_names: list
  splits: dict
  ours: dict | None      # tpu_trainer.json, when this package wrote the dataset
  label_offset: int = 0  # stored label - offset = class index (adopted 1-based labels)
  resize: bool = False   # images vary in size: center-cropped and resized to image_shape

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def identity(self) -> str:
    """The dataset by its content, not its path or its files' times: its classes,
    image shape and, per split, each shard's crc32c and record count (where
    tpu_trainer.json records them; else the shards' names, which for TFDS's
    datasets carry the version). Converting again with anything changed (another
    split seed, say) is another dataset; a copy elsewhere, or the same records
    converted again from sources whose times changed, is the same one."""
    shards = (self.ours or {}).get("shards", {})
    return self._identity(lambda f: shards.get(os.path.basename(f), {}).get("crc32c")
                          or os.path.basename(f))

  @property
  def identities(self) -> tuple:
    """identity, and what runs recorded before identities were by content (shard
    names): either one resumes."""
    return self.identity, self._identity(os.path.basename)

  def _identity(self, shard_key) -> str:
    content = {"classes": list(self.class_names), "image_shape": list(self.image_shape),
               "splits": {name: [[shard_key(f), n] for f, n in
                                 zip(split.files, split.shard_lengths)]
                          for name, split in sorted(self.splits.items())}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

  def split(self, name: str) -> Split:
    if name not in self.splits:
      raise UserError(f"Split {name!r} is not in {self.data_dir} (it has: "
                      f"{', '.join(sorted(self.splits))}); set config.input.train_split / "
                      "config.input.eval_split to one of those.")
    return self.splits[name]


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


# ---------------------------------------------------------------------------
# Writing (the converters)


def image_feature(image_shape, encoding: str):
  """TFDS's feature for our images: a raw-bytes uint8 Tensor, or a PNG/JPEG Image."""
  tfds = _tfds()
  if encoding == "raw":
    return tfds.features.Tensor(shape=tuple(image_shape), dtype=np.uint8,
                                encoding=tfds.features.Encoding.BYTES)
  return tfds.features.Image(shape=tuple(image_shape), encoding_format=encoding)


def choose_encoding(encoding: str, image_shape) -> str:
  """'auto': raw for small images, jpeg for colour photos, png for larger grayscale."""
  if encoding != "auto":
    if encoding not in ("raw", "png", "jpeg"):
      raise UserError(f"--encoding={encoding!r} is not one of auto, raw, png, jpeg.")
    return encoding
  height, width, channels = image_shape
  if height * width <= RAW_MAX_PIXELS:
    return "raw"
  return "jpeg" if channels == 3 else "png"


def shard_template(tag: str) -> str:
  """File names that carry the conversion's key: shards of another source or
  other settings never share a name, so a rerun can never keep a stale one."""
  return "{DATASET}-{SPLIT}-" + tag + ".{FILEFORMAT}-{SHARD_X_OF_Y}"


def shard_names(name: str, split: str, template: str, count: int) -> list[str]:
  """The shards' paths as the template gives them: relative to the dataset
  directory, or absolute (adopted shards elsewhere)."""
  from etils import epath  # pylint: disable=g-import-not-at-top  (TFDS's path library)
  sharded = _tfds().core.ShardedFileTemplate(
      data_dir=epath.Path("/"), template=template, dataset_name=name, split=split,
      filetype_suffix="tfrecord")
  return [sharded.relative_filepath(shard_index=i, num_shards=count) for i in range(count)]


def _nested(key: str, feature):
  """{"a": {"b": feature}} for the key "a/b": TFDS's FeaturesDict flattens nested
  keys with "/" in the records, as imagenet_to_gcs named them."""
  head, _, rest = key.partition("/")
  return {head: _nested(rest, feature) if rest else feature}


def _merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def _features_dict(tree):
  tfds = _tfds()
  return tfds.features.FeaturesDict(
      {k: _features_dict(v) if isinstance(v, dict) else v for k, v in tree.items()})


def feature_at(features, key: str):
  """The feature of a (possibly nested, "a/b") key."""
  for part in key.split("/"):
    features = features[part]
  return features


def write(output_dir: str, *, name: str, image_shape, encoding: str, class_names,
          splits: dict, template: str, ours: dict, description: str = "",
          templates: dict | None = None, image_key: str = "image", label_key: str = "label",
          label_offset: int = 0, client=None) -> None:
  """Publishes the metadata of shards already in output_dir, dataset_info.json last.

  splits: {split: [{"file", "num_examples", "num_bytes", "crc32c"[, "mtime_ns"]}, ...]}
  in shard order, num_bytes being file sizes. templates: a file-name template per
  split (adopted shards), else `template` for all. ours: what goes into
  tpu_trainer.json besides the shards (parameters, fingerprint). Stored labels
  counted from label_offset get placeholder names below it, so that TFDS's
  ClassLabel names each stored value right.
  """
  tfds = _tfds()
  from etils import epath  # pylint: disable=g-import-not-at-top
  names = ([f"(no class: label {i})" for i in range(label_offset)]
           + [class_name(n) for n in class_names])
  features = _features_dict(_merge(
      _nested(image_key, image_feature(image_shape, encoding)),
      _nested(label_key, tfds.features.ClassLabel(names=names))))
  staging = tempfile.mkdtemp(prefix="tpu_trainer_metadata_")
  try:
    split_infos = []
    for split_name, shards in splits.items():
      lengths = [s["num_examples"] for s in shards]
      split_infos.append(tfds.core.SplitInfo(
          name=split_name, shard_lengths=lengths,
          num_bytes=sum(s["num_bytes"] for s in shards) - RECORD_OVERHEAD * sum(lengths),
          filename_template=tfds.core.ShardedFileTemplate(
              data_dir=epath.Path(staging),
              template=(templates or {}).get(split_name, template), dataset_name=name,
              split=split_name, filetype_suffix="tfrecord")))
    # What tfds.folder_dataset.write_metadata does, minus its look for the shards
    # in the (staging) directory: they are already in output_dir, maybe on gs://.
    info = tfds.core.DatasetInfo(
        builder=tfds.core.dataset_info.DatasetIdentity(
            name=name, version=tfds.core.Version("1.0.0"), data_dir=staging,
            module_name=""),
        features=features,
        # TFDS's as_supervised takes top-level keys only.
        supervised_keys=None if "/" in image_key + label_key else (image_key, label_key),
        description=description or f"{name}, converted by tpu_trainer.")
    info.set_file_format(tfds.core.FileFormat.TFRECORD)
    info.set_splits(tfds.core.SplitDict(split_infos))
    info.write_to_directory(staging)
    ours = {"format_version": FORMAT_VERSION, "template": template, **ours,
            "shards": {s["file"]: {k: v for k, v in s.items() if k != "file"}
                       for shards in splits.values() for s in shards}}
    with open(os.path.join(staging, OURS_FILE), "w") as f:
      json.dump(ours, f, indent=1)
    # dataset_info.json last: until it is replaced, readers see the old dataset whole.
    names = sorted(os.listdir(staging), key=lambda n: n == INFO_FILE)
    if storage.is_gcs(output_dir):
      for file_name in names:
        with open(os.path.join(staging, file_name)) as f:
          storage.write_text(storage.join(output_dir, file_name), f.read(), client)
    else:  # every file written beside its place first (a full disk fails here, before
      # any old file is replaced), then renamed into place: renames need no space.
      moves = []
      try:
        for file_name in names:
          tmp = storage.local_temp_path(os.path.join(output_dir, file_name))
          moves.append((tmp, os.path.join(output_dir, file_name)))
          shutil.copyfile(os.path.join(staging, file_name), tmp)
        for tmp, final in moves:
          os.replace(tmp, final)
      finally:
        for tmp, _ in moves:
          if os.path.exists(tmp):
            os.remove(tmp)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------
# Reading (training, evaluation, the doctor, the benchmark)


def _parse_info(text: str, path: str):
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.proto import dataset_info_pb2  # pylint: disable=g-import-not-at-top
  try:
    return json_format.Parse(text, dataset_info_pb2.DatasetInfo(), ignore_unknown_fields=True)
  except json_format.ParseError:
    old = '"format_version"' in text
    raise UserError(
        f"{path} is not a TFDS dataset_info.json"
        + (" (it was written by an older tpu_trainer): convert the dataset again."
           if old else "; point data_dir at a TFDS dataset directory.")) from None


def parse_json(text: str, path: str, todo: str = "convert the dataset again"):
  """JSON of one of a dataset's metadata files; damaged, a UserError naming it."""
  try:
    return json.loads(text)
  except ValueError as e:
    raise UserError(f"{path} is damaged ({e}): {todo}.") from None


def _find_image_and_label(features, supervised_keys, data_dir):
  """The (image key, label key) pair: supervised keys when they name such a pair,
  else the one uint8 image feature and the one ClassLabel."""
  tfds = _tfds()

  def is_image(f):
    if isinstance(f, tfds.features.Image):
      return np.dtype(f.np_dtype) == np.uint8 and len(f.shape) == 3
    return (type(f) is tfds.features.Tensor  # pylint: disable=unidiomatic-typecheck
            and np.dtype(f.np_dtype) == np.uint8 and len(f.shape) in (2, 3))

  def is_label(f):
    return isinstance(f, tfds.features.ClassLabel)

  keys = list(features.keys())
  if (len(supervised_keys) == 2 and all(k in keys for k in supervised_keys)
      and is_image(features[supervised_keys[0]]) and is_label(features[supervised_keys[1]])):
    return tuple(supervised_keys)
  images = [k for k in keys if is_image(features[k])]
  labels = [k for k in keys if is_label(features[k])]
  if len(images) == 1 and len(labels) == 1:
    return images[0], labels[0]
  described = ", ".join(f"{k}: {type(features[k]).__name__}"
                        f"{getattr(features[k], 'shape', '')}" for k in keys)
  raise UserError(f"{data_dir} has no single uint8 image + ClassLabel pair to train on; "
                  f"its features are {described}.")


def _encoding_of(feature) -> str:
  tfds = _tfds()
  if isinstance(feature, tfds.features.Image):
    return feature._encoding_format or "image"  # pylint: disable=protected-access
  encoding = feature._encoding  # pylint: disable=protected-access
  if encoding == tfds.features.Encoding.BYTES:
    return "raw"
  if encoding == tfds.features.Encoding.NONE:
    return "int64"
  raise UserError(f"Tensor images with {encoding} encoding are not supported; "
                  "use Encoding.BYTES or an Image feature.")


def read(data_dir: str, client=None) -> Dataset:
  """The dataset in data_dir (local or gs://): ours or any TFDS-prepared one."""
  tfds = _tfds()
  if not storage.is_gcs(data_dir) and os.path.isfile(data_dir):
    raise UserError(f"data_dir={data_dir!r} is a file, not a dataset directory: pass the "
                    "directory tpu-trainer-convert wrote (or TFDS prepared).")
  info_path = storage.join(data_dir, INFO_FILE)
  info_text = storage.read_text_if_exists(info_path, client)
  if info_text is None:
    raise MissingError(
        f"No {INFO_FILE} in data_dir={data_dir!r}: convert a dataset there first "
        f"(tpu-trainer-convert --source=digits --output_dir={data_dir}), or point it at a "
        "TFDS dataset directory (e.g. ~/tensorflow_datasets/mnist/3.0.1).")
  info = _parse_info(info_text, info_path)
  if info.file_format not in ("", "tfrecord"):
    raise UserError(f"{data_dir} stores its shards as {info.file_format}; only tfrecord "
                    "datasets can be read (prepare it with file_format='tfrecord').")
  features_text = storage.read_text_if_exists(storage.join(data_dir, FEATURES_FILE), client)
  if features_text is None:
    raise MissingError(f"No {FEATURES_FILE} in data_dir={data_dir!r}: TFDS writes it "
                       "beside dataset_info.json; prepare the dataset again.")
  features_path = storage.join(data_dir, FEATURES_FILE)
  features_json = parse_json(features_text, features_path)
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  try:
    features = tfds.features.FeatureConnector.from_json(features_json)
  except (KeyError, TypeError, ValueError, AttributeError, json_format.ParseError) as e:
    raise UserError(f"{features_path} does not describe TFDS features "
                    f"({str(e).splitlines()[0]}): prepare or "
                    "convert the dataset again.") from None
  splits = {}
  for split in info.splits:
    template = split.filepath_template or DEFAULT_TEMPLATE
    names = shard_names(info.name, split.name, template, len(split.shard_lengths))
    splits[split.name] = Split(split.name, [_shard_path(data_dir, n) for n in names],
                               [int(n) for n in split.shard_lengths], int(split.num_bytes))
  ours = _read_ours(data_dir, splits, client)
  adopted = (ours or {}).get("adopted")
  if adopted:
    image_key, label_key = adopted["image_key"], adopted["label_key"]
  else:
    supervised = [info.supervised_keys.tuple.items[i].feature_key
                  for i in range(len(info.supervised_keys.tuple.items))]
    image_key, label_key = _find_image_and_label(features, supervised, data_dir)
  image, label = feature_at(features, image_key), feature_at(features, label_key)
  shape = tuple(image.shape) + ((1,) if len(image.shape) == 2 else ())
  if adopted:
    shape = tuple(adopted["image_shape"])
  if None in shape:
    raise UserError(f"{data_dir}: {image_key} images have varying sizes {shape}; convert "
                    "it with tpu-trainer-convert --source=tfds:NAME --image_size=H,W.")
  offset = int((adopted or {}).get("label_offset", 0))
  class_names = _class_names(data_dir, label_key, label, client)[offset:]
  recorded = (ours or {}).get("key", {}).get("class_names")
  if recorded is not None and [class_name(n) for n in recorded] != list(class_names):
    raise UserError(f"{data_dir}: its class names ({label_key}.labels.txt) are not those it "
                    f"was converted with ({OURS_FILE}): a conversion stopped while publishing "
                    "its metadata. Run the same tpu-trainer-convert command again.")
  return Dataset(data_dir, info.name, image_key, label_key, shape, _encoding_of(image),
                 class_names, splits, ours, offset, bool((adopted or {}).get("resize")))


def _shard_path(data_dir: str, name: str) -> str:
  """A shard's path: the template's own when absolute (adopted elsewhere)."""
  return name if storage.is_gcs(name) or os.path.isabs(name) else storage.join(data_dir, name)


def _class_names(data_dir, label_key, label, client) -> list:
  """ClassLabel names live in <key>.labels.txt beside features.json."""
  file_name = label_key.replace("/", "-") + ".labels.txt"  # as TFDS names it
  text = storage.read_text_if_exists(storage.join(data_dir, file_name), client)
  names = [class_name(n) for n in (text or "").splitlines() if n]
  if len(names) == label.num_classes:
    return names
  return [str(i) for i in range(label.num_classes)]


def _read_ours(data_dir, splits, client):
  text = storage.read_text_if_exists(storage.join(data_dir, OURS_FILE), client)
  if text is None:
    logging.warning("%s has no %s (not converted by tpu_trainer): shard checksums are not "
                    "checked; shard lengths and sizes from TFDS's metadata are.", data_dir,
                    OURS_FILE)
    return None
  ours = parse_json(text, storage.join(data_dir, OURS_FILE))
  files = {os.path.basename(f) for s in splits.values() for f in s.files}
  if not files <= set(ours.get("shards", {})):
    # Ours is written just before dataset_info.json: a conversion stopped between
    # the two (a full disk, gs:// going away) leaves the new classes beside the old
    # shards' counts. Reading that would name images with another dataset's classes.
    raise UserError(f"{data_dir}: its metadata files disagree ({OURS_FILE} describes other "
                    f"shards than {INFO_FILE}): a conversion stopped while publishing them. "
                    "Run the same tpu-trainer-convert command again.")
  return ours


# ---------------------------------------------------------------------------
# Checking: cheap before training, thorough with --verify


def check_shards(dataset: Dataset, split_names, client=None, sizes=None) -> None:
  """Before the first step: every shard exists with the size the metadata gives
  (one listing, or `sizes` {file name: bytes} from one the caller made). A shard
  cut short on a record boundary reads as a clean end of file, so without this
  training would silently use fewer examples. Adopted shards (someone else's
  files) are also refused when their crc32c (gs://) or mtime (local) changed."""
  adopted = dataset.ours is not None and "adopted" in dataset.ours
  directories = {os.path.dirname(f) for s in split_names for f in dataset.split(s).files}
  if adopted or sizes is None:
    stamps = {}
    for directory in directories:
      stamps.update(storage.list_stamps(directory, client))
  else:
    stamps = {name: {"num_bytes": size} for name, size in sizes.items()}
  problems = []
  for split_name in split_names:
    split = dataset.split(split_name)
    found = []
    for path in split.files:
      name = os.path.basename(path)
      if name not in stamps:
        problems.append(f"{name} is missing")
        continue
      found.append(stamps[name]["num_bytes"])
      if dataset.ours is None:
        continue
      recorded = dataset.ours["shards"][name]
      for key, said in (("num_bytes", "{} bytes"), ("crc32c", "crc32c {}"),
                        ("mtime_ns", "mtime {} ns")):
        if adopted or key == "num_bytes":
          if key in recorded and key in stamps[name] and stamps[name][key] != recorded[key]:
            problems.append(f"{name} has {said.format(stamps[name][key])}, the metadata "
                            f"says {said.format(recorded[key])}")
            break
    if dataset.ours is None and split.num_bytes and len(found) == len(split.files):
      expected = split.num_bytes + RECORD_OVERHEAD * split.num_examples
      if sum(found) != expected:
        problems.append(f"the {split_name} shards hold {sum(found)} bytes, TFDS's metadata "
                        f"says {expected}")
  if problems:
    if adopted:
      raise UserError(f"{dataset.data_dir}: shards changed since they were adopted: "
                      f"{'; '.join(problems)}. Adopt them again (the same "
                      f"tpu-trainer-convert --source={dataset.ours['adopted']['source']} "
                      "command).")
    raise UserError(f"{dataset.data_dir} does not match its metadata: {'; '.join(problems)}. "
                    f"Run tpu-trainer-convert --verify --output_dir={dataset.data_dir}, and "
                    "convert again.")


def read_shard(path: str, client=None) -> tuple[int, str]:
  """(records, crc32c) of a shard read whole, every record's CRCs checked; a
  ValueError naming the file when it is damaged or missing."""
  try:
    with storage.open_read(path, client) as f:
      return records.check_framing(f)
  except ValueError as e:
    raise UserError(f"Shard {path} is corrupt or truncated ({e}); convert again.") from None
  except Exception as e:  # pylint: disable=broad-except
    if storage.is_not_found(e):
      raise UserError(f"{path} is missing") from None
    raise


def verify(data_dir: str, client=None) -> dict:
  """Reads every shard back: record counts must match the metadata, and for our
  datasets every crc32c too. Returns {"examples": n, "shards": n}; raises
  ValueError naming each bad file."""
  client = client or (storage.gcs_client() if storage.is_gcs(data_dir) else None)
  dataset = read(data_dir, client)
  problems, examples, shards = [], 0, 0
  for split in dataset.splits.values():
    for path, length in zip(split.files, split.shard_lengths):
      name = os.path.basename(path)
      try:
        n, crc = read_shard(path, client)
      except ValueError as e:
        problems.append(str(e))
        continue
      if dataset.ours is not None and crc != dataset.ours["shards"][name]["crc32c"]:
        problems.append(f"{path} has crc32c {crc}, the metadata says "
                        f"{dataset.ours['shards'][name]['crc32c']}")
        continue
      if n != length:
        problems.append(f"{path} holds {n} examples, the metadata says {length}")
      examples += n
      shards += 1
  if problems:
    raise UserError(f"{len(problems)} bad shard(s) in {data_dir}: " + "; ".join(problems))
  return {"examples": examples, "shards": shards,
          "checksums": "crc32c checked" if dataset.ours is not None else
                       f"no {OURS_FILE}: record counts checked, checksums not"}


def explain_gone(dataset: Dataset, error: Exception, last_checkpoint: str) -> ValueError:
  """Turns a NotFoundError from reading a dataset mid-run (its text names no file
  on its first line) into one line: which shard went away, and what to do."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gone = [f for split in dataset.splits.values() for f in split.files
          if not tf.io.gfile.exists(f)]
  if not gone:  # back already (converted again in place): the error's own words
    gone = [(str(error).strip().splitlines() or ["?"])[-1][:200]]
  more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
  return UserError(f"The dataset changed under this run: {gone[0]}{more} is gone (removed, "
                   f"or {dataset.data_dir} converted again while training). Rerun the same "
                   f"command: it resumes from the last checkpoint ({last_checkpoint}) if the "
                   "data is the same records, and says so if not.")


def explain_data_loss(data_dir: str, error: Exception) -> ValueError:
  """Turns TensorFlow's DataLossError, which names no file, into one that does."""
  try:
    verify(data_dir)
  except ValueError as bad:
    return bad
  return UserError(f"Reading {data_dir} failed ({error}); run "
                   f"tpu-trainer-convert --verify --output_dir={data_dir}.")
