"""Conversion to gs:// against a real fake-gcs-server process."""
import json
import time

import pytest

from tpu_trainer import storage
from tpu_trainer.data import convert
from tpu_trainer.data import sources


def _objects(bucket, prefix):
  return {b.name: b for b in storage.gcs_client().list_blobs(bucket, prefix=prefix)}


def test_convert_uploads_shards_and_manifest_then_verifies(gcs_bucket):
  out = f"gs://{gcs_bucket}/digits"
  info = convert.convert(sources.digits(), out, min_shards=4)
  objects = _objects(gcs_bucket, "digits/")
  assert len(objects) == 9  # 8 shards + dataset_info.json
  manifest = json.loads(objects["digits/dataset_info.json"].download_as_text())
  assert manifest == info
  for split in info["splits"].values():
    for shard in split["shards"]:
      assert objects[f"digits/{shard['file']}"].crc32c == shard["crc32c"]
  assert convert.verify(out) == {"examples": 1797, "shards": 8}


def test_verify_names_a_bad_object(gcs_bucket):
  out = f"gs://{gcs_bucket}/d"
  convert.convert(sources.digits(), out, min_shards=2)
  bad = "d/digits-test.tfrecord-00001-of-00002"
  storage.gcs_client().bucket(gcs_bucket).blob(bad).upload_from_string(b"garbage")
  with pytest.raises(ValueError, match="digits-test.tfrecord-00001-of-00002"):
    convert.verify(out)


def test_rerun_keeps_uploaded_shards(gcs_bucket):
  out = f"gs://{gcs_bucket}/d"
  convert.convert(sources.digits(), out, min_shards=2)
  before = {n: b.generation for n, b in _objects(gcs_bucket, "d/").items()}
  storage.gcs_client().bucket(gcs_bucket).blob("d/dataset_info.json").delete()
  convert.convert(sources.digits(), out, min_shards=2)
  after = {n: b.generation for n, b in _objects(gcs_bucket, "d/").items()}
  shards = [n for n in before if "tfrecord" in n]
  assert shards and all(before[n] == after[n] for n in shards)
  assert "d/dataset_info.json" in after


def test_missing_bucket_fails_fast(gcs_emulator, monkeypatch):
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
  start = time.perf_counter()
  with pytest.raises(ValueError, match="Bucket gs://no-such-bucket does not exist"):
    convert.convert(sources.digits(), "gs://no-such-bucket/x")
  assert time.perf_counter() - start < 10


def test_missing_credentials_fail_fast(monkeypatch, tmp_path):
  monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
  monkeypatch.setenv("NO_GCE_CHECK", "True")  # never dial the metadata server from tests
  start = time.perf_counter()
  with pytest.raises(ValueError, match="Cannot reach bucket gs://some-bucket"):
    convert.convert(sources.digits(), "gs://some-bucket/x")
  assert time.perf_counter() - start < 10


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
