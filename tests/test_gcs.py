"""Conversion to gs:// against a real fake-gcs-server process."""
import json
import os
import time

import pytest

from tpu_trainer import storage
from tpu_trainer.data import convert
from tpu_trainer.data import manifest
from tpu_trainer.data import sources


def _objects(bucket, prefix):
  return {b.name: b for b in storage.gcs_client().list_blobs(bucket, prefix=prefix)}


def test_convert_uploads_shards_and_metadata_then_verifies(gcs_bucket):
  out = f"gs://{gcs_bucket}/digits"
  dataset = convert.convert(sources.digits(), out, min_shards=4)
  objects = _objects(gcs_bucket, "digits/")
  # 8 shards, TFDS's dataset_info.json, features.json, label.labels.txt, and ours.
  assert len(objects) == 12
  assert {"digits/dataset_info.json", "digits/features.json", "digits/label.labels.txt",
          f"digits/{manifest.OURS_FILE}"} <= set(objects)
  assert json.loads(objects["digits/dataset_info.json"].download_as_text())["name"] == "digits"
  assert dataset.class_names == [str(i) for i in range(10)]
  ours = json.loads(objects[f"digits/{manifest.OURS_FILE}"].download_as_text())
  for split in dataset.splits.values():
    for path in split.files:
      name = path.rsplit("/", 1)[1]
      assert objects[f"digits/{name}"].crc32c == ours["shards"][name]["crc32c"]
      assert objects[f"digits/{name}"].size == ours["shards"][name]["num_bytes"]
  manifest.check_shards(manifest.read(out), ["train", "test"])
  result = manifest.verify(out)
  assert (result["examples"], result["shards"]) == (1797, 8)


def test_verify_names_a_bad_object(gcs_bucket):
  out = f"gs://{gcs_bucket}/d"
  dataset = convert.convert(sources.digits(), out, min_shards=2)
  bad = dataset.splits["test"].files[1]
  storage.gcs_client().bucket(gcs_bucket).blob(storage.split_gcs(bad)[1]).upload_from_string(
      b"garbage")
  with pytest.raises(ValueError, match=bad.rsplit("/", 1)[1]):
    manifest.verify(out)
  with pytest.raises(ValueError, match=bad.rsplit("/", 1)[1] + " has 7 bytes"):
    manifest.check_shards(manifest.read(out), ["test"])


def test_rerun_keeps_uploaded_shards_and_a_changed_one_replaces_them(gcs_bucket):
  out = f"gs://{gcs_bucket}/d"
  convert.convert(sources.digits(), out, min_shards=2)
  before = {n: b.generation for n, b in _objects(gcs_bucket, "d/").items()}
  storage.gcs_client().bucket(gcs_bucket).blob("d/dataset_info.json").delete()
  convert.convert(sources.digits(), out, min_shards=2)
  after = {n: b.generation for n, b in _objects(gcs_bucket, "d/").items()}
  shards = [n for n in before if "tfrecord" in n]
  assert shards and all(before[n] == after[n] for n in shards)
  assert "d/dataset_info.json" in after
  convert.convert(sources.digits(), out, min_shards=2, encoding="png")
  now = [n for n in _objects(gcs_bucket, "d/") if "tfrecord" in n]
  assert len(now) == len(shards) and not set(now) & set(shards)
  assert manifest.read(out).encoding == "png"


def test_missing_bucket_fails_fast(gcs_emulator, monkeypatch):
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
  start = time.perf_counter()
  with pytest.raises(ValueError, match=r"Bucket gs://no-such-bucket \(of gs://no-such-bucket/x\) "
                                       "does not exist"):
    convert.convert(sources.digits(), "gs://no-such-bucket/x")
  assert time.perf_counter() - start < 60  # no minutes of retries


def test_a_workdir_in_a_missing_bucket_is_one_line_before_anything(gcs_emulator, digits_dir):
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  result = run_cli("train", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
                   "--workdir=gs://no-such-bucket/run",
                   env={"STORAGE_EMULATOR_HOST": gcs_emulator.url})
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Bucket gs://no-such-bucket (of gs://no-such-bucket/run) "
                         "does not exist; create it"), last


def test_missing_credentials_fail_fast(monkeypatch, tmp_path):
  monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
  monkeypatch.setenv("NO_GCE_CHECK", "True")  # never dial the metadata server from tests
  start = time.perf_counter()
  with pytest.raises(ValueError, match="No credentials for Cloud Storage"):
    convert.convert(sources.digits(), "gs://some-bucket/x")
  assert time.perf_counter() - start < 60  # no minutes of retries


def test_cli_convert_and_verify_on_gs(gcs_bucket, gcs_emulator):
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  env = {"STORAGE_EMULATOR_HOST": gcs_emulator.url}
  out = f"gs://{gcs_bucket}/cli"
  result = run_cli("convert", "--source=digits", f"--output_dir={out}", "--min_shards=2",
                   env=env)
  assert result.returncode == 0, result.stderr
  result = run_cli("convert", "--verify", f"--output_dir={out}", env=env)
  assert result.returncode == 0, result.stderr
  assert "OK: 4 shards, 1797 examples" in result.stdout


@pytest.mark.parametrize("tool,args", [
    ("train", ["--config=configs/mlp.py", "--config.data_dir=gs://some-bucket/digits",
               "--workdir=/tmp/never-written"]),
    ("convert", ["--verify", "--output_dir=gs://some-bucket/digits"]),
    ("evaluate", ["--workdir=gs://some-bucket/run"]),
])
def test_gs_paths_without_credentials_are_one_error_line(tool, args, tmp_path):
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  env = {"STORAGE_EMULATOR_HOST": "", "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no.json"),
         "NO_GCE_CHECK": "True"}  # never dial the metadata server from tests
  start = time.perf_counter()
  result = run_cli(tool, *args, env=env)
  assert time.perf_counter() - start < 120  # no minutes of retries
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: "), lines[-5:]
  assert lines[-1].count("gcloud auth application-default login") == 1, lines[-1]
  assert "Traceback" not in result.stderr
  assert not os.path.exists("/tmp/never-written")


def test_storage_going_away_mid_upload_is_one_line_and_leaves_no_temp_files(tmp_path):
  """The server dies after the first shards landed: uploads retry for a bounded
  time, saying so, then one error line; no temp shard stays in $TMPDIR."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from gcs_emulator import Emulator  # pylint: disable=g-import-not-at-top
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  with Emulator() as emulator:
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator.url, "TMPDIR": str(scratch)}
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    try:
      storage.gcs_client().create_bucket("flaky")
      bucket = storage.gcs_client().bucket("flaky")
      log = open(tmp_path / "log", "w")
      proc = subprocess.Popen([sys.executable, "-m", "tpu_trainer.cli.convert", "--source=digits",
                               "--output_dir=gs://flaky/d", "--num_shards=400"],
                              stdout=log, stderr=log, env=env)
      deadline = time.time() + 120
      while not list(bucket.list_blobs(max_results=1)):
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.05)
    finally:
      os.environ.pop("STORAGE_EMULATOR_HOST")
  start = time.perf_counter()  # the emulator is gone from here
  proc.wait(timeout=240)
  waited = time.perf_counter() - start
  text = (tmp_path / "log").read_text()
  assert proc.returncode == 2, text[-3000:]
  assert waited < storage.UPLOAD_DEADLINE_S + 60, waited  # bounded, not TensorFlow's minutes
  assert "retrying for up to 60 s" in text
  errors = [l for l in text.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "Cannot write gs://flaky/d/" in errors[0], text[-3000:]
  assert "Run the same command again" in errors[0] and "Traceback" not in text
  assert os.listdir(scratch) == []
