"""Conversion as an Apache Beam pipeline: DirectRunner in multi-processing mode
with 2 workers, on a local folder and on a gs:// folder (fake-gcs-server). The
result is the dataset the local converter writes, byte for byte."""
import os

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")

from conftest import run_cli  # pylint: disable=g-import-not-at-top
from test_gcs_sources import upload_folder  # pylint: disable=g-import-not-at-top
from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
from tpu_trainer.data import beam as beam_lib  # pylint: disable=g-import-not-at-top
from tpu_trainer.data import convert  # pylint: disable=g-import-not-at-top
from tpu_trainer.data import manifest  # pylint: disable=g-import-not-at-top
from tpu_trainer.data import sources  # pylint: disable=g-import-not-at-top

TWO_WORKERS = ["--", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _folder(root, per_class=40):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  pixels = {}
  for c in ("cats", "dogs", "owls"):
    os.makedirs(os.path.join(root, c))
    for i in range(per_class):
      image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
      Image.fromarray(image).save(os.path.join(root, c, f"{i}.png"))
      pixels[image.tobytes()] = c
  return pixels


def _examples(data_dir):
  """(image bytes, class name) of every example, read with TFDS's reader."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(data_dir)
  names = builder.info.features["label"].names
  return sorted((image.tobytes(), names[label]) for split in builder.info.splits
                for image, label in tfds.as_numpy(builder.as_dataset(split=split,
                                                                     as_supervised=True)))


def test_beam_writes_what_the_local_converter_writes(tmp_path):
  pixels = _folder(str(tmp_path / "src"))
  spec = f"folder:{tmp_path / 'src'}"
  result = run_cli("convert", f"--source={spec}", f"--output_dir={tmp_path / 'beam'}",
                   "--encoding=png", "--num_shards=4", "--runner=DirectRunner", *TWO_WORKERS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Worker: " not in result.stderr  # Beam's relayed worker notes: not our lines
  result = run_cli("convert", "--verify", f"--output_dir={tmp_path / 'beam'}")
  assert result.returncode == 0 and "OK: 8 shards, 120 examples" in result.stdout
  assert _examples(str(tmp_path / "beam")) == sorted(pixels.items())  # each once, right label

  convert.convert(sources.load(spec), str(tmp_path / "local"), encoding="png", num_shards=4)
  ours, theirs = (manifest.read(str(tmp_path / d)).ours["shards"] for d in ("beam", "local"))
  assert ours == theirs  # the same shard names, sizes and crc32c: the same dataset


def test_a_failed_pipeline_publishes_nothing_and_a_rerun_completes(tmp_path):
  _folder(str(tmp_path / "src"), per_class=20)
  broken = tmp_path / "src" / "owls" / "7.png"
  good = broken.read_bytes()
  broken.write_bytes(good[:len(good) // 2])  # its header reads; its pixels do not
  spec, out = f"folder:{tmp_path / 'src'}", str(tmp_path / "out")
  with pytest.raises(Exception, match="7.png"):
    beam_lib.convert_with_beam(spec, out, num_shards=3, encoding="png",
                               load_args={"test_fraction": 0.1})
  assert not os.path.exists(os.path.join(out, "dataset_info.json"))
  written = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)
             if ".tfrecord-" in f}
  broken.write_bytes(good)
  dataset = beam_lib.convert_with_beam(spec, out, num_shards=3, encoding="png",
                                       load_args={"test_fraction": 0.1})
  assert sum(s.num_examples for s in dataset.splits.values()) == 60
  for name, mtime in written.items():  # finished shards were kept
    assert os.stat(os.path.join(out, name)).st_mtime_ns == mtime
  assert manifest.verify(out)["examples"] == 60


def test_beam_from_and_to_cloud_storage(gcs_bucket, gcs_emulator):
  pixels = upload_folder(gcs_bucket, "photos", per_class=30)
  env = {"STORAGE_EMULATOR_HOST": gcs_emulator.url}
  out = f"gs://{gcs_bucket}/photos-tfds"
  result = run_cli("convert", f"--source=folder:gs://{gcs_bucket}/photos",
                   f"--output_dir={out}", "--encoding=png", "--num_shards=3",
                   "--runner=DirectRunner", *TWO_WORKERS, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert manifest.verify(out)["examples"] == 90
  seen = []
  dataset = manifest.read(out)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import records  # pylint: disable=g-import-not-at-top
  for split in dataset.splits.values():
    for path in split.files:
      with storage.open_read(path) as f:
        data = f.read()
      local = os.path.join(os.environ.get("TMPDIR", "/tmp"), os.path.basename(path))
      with open(local, "wb") as f:
        f.write(data)
      for batch in tf.data.TFRecordDataset(local).batch(100):
        images, labels = records.decode_batch(batch, dataset)
        seen += [(im.tobytes(), dataset.class_names[l])
                 for im, l in zip(images.numpy(), labels.numpy())]
      os.remove(local)
  assert sorted(seen) == sorted(pixels.items())


def test_dataflow_options_build_a_pipeline_without_calling_the_cloud(tmp_path):
  from apache_beam.options import pipeline_options as options_lib  # pylint: disable=g-import-not-at-top
  options = beam_lib.pipeline_options("DataflowRunner", [
      "--project=my-project", "--region=us-central2", "--temp_location=gs://b/tmp",
      "--setup_file=./setup.py", "--num_workers=8"])
  assert options.view_as(options_lib.StandardOptions).runner == "DataflowRunner"
  cloud = options.view_as(options_lib.GoogleCloudOptions)
  assert (cloud.project, cloud.region, cloud.temp_location) == (
      "my-project", "us-central2", "gs://b/tmp")
  assert options.view_as(options_lib.SetupOptions).setup_file == "./setup.py"
  # The graph Dataflow would run, built and serialized, not run.
  pipeline = beam.Pipeline(runner="DirectRunner", options=options)
  beam_lib.build_pipeline(pipeline, [("train", "x-train-0.tfrecord-00000-of-00001", [0, 1])],
                          "digits", {}, "gs://b/out", "raw", 95)
  labels = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
  assert {"Shards", "Spread", "Write"} <= labels


def test_beam_rewrites_adoptable_tfrecords_as_the_local_converter_does(tmp_path):
  """--source=tfrecord:... --rewrite on Beam: the driver scans the records once; the
  workers reopen the source from that scan and write our shards, the very ones the
  local converter writes."""
  import imagenet_layout  # pylint: disable=g-import-not-at-top
  source = tmp_path / "imagenet"
  source.mkdir()
  imagenet_layout.write(str(source), {"train": 2, "validation": 1}, per_shard=20)
  args = [f"--source=tfrecord:{source}", "--rewrite", "--image_size=16,16", "--num_shards=2"]
  result = run_cli("convert", *args, f"--output_dir={tmp_path / 'beam'}",
                   "--runner=DirectRunner", *TWO_WORKERS)
  assert result.returncode == 0, result.stderr[-3000:]
  local = run_cli("convert", *args, f"--output_dir={tmp_path / 'local'}")
  assert local.returncode == 0, local.stderr[-3000:]
  beam_dataset = manifest.read(str(tmp_path / "beam"))
  assert beam_dataset.ours["shards"] == manifest.read(str(tmp_path / "local")).ours["shards"]
  assert beam_dataset.class_names == imagenet_layout.SYNSETS
  assert beam_dataset.split("test").num_examples == 20
