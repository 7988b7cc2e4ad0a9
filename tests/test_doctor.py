"""tpu-trainer-doctor: each check passes on good input and fails, with what to
change, on bad input."""
import os
import re
import shutil
import time

import pytest

from configs import mlp as mlp_config
from conftest import run_cli
from tpu_trainer import doctor
from tpu_trainer import memory


def _config(data_dir, **overrides):
  config = mlp_config.get_config()
  config.data_dir = data_dir
  config.update(overrides)
  return config


def _by_name(checks):
  return {c.name: c for c in checks}


def _shape(accelerator):
  tpu_slice = doctor.parse_accelerator(accelerator)
  return tpu_slice.hosts, tpu_slice.replicas, tpu_slice.chips


def test_slice_shapes():
  assert _shape("v4-8") == (1, 4, 4)
  assert _shape("v4-32") == (4, 16, 16)
  assert _shape("v3-8") == (1, 8, 4)
  assert _shape("v3-32")[0] == 4
  assert _shape("v5litepod-16") == (4, 16, 16)
  assert _shape("v6e-8") == (1, 8, 8)
  assert _shape("v5p-16") == (2, 8, 8)
  assert _shape("tpu7x-8") == (1, 8, 4)  # two devices per chip
  with pytest.raises(ValueError, match="v4-8"):
    doctor.parse_accelerator("tpu-8")


@pytest.mark.parametrize("accelerator,backend,status,says", [
    ("v4-8", "tensorflow", "OK", "tpu-vm-tf-2.16.1-pjrt"),
    ("v6e-8", "tensorflow", "WARN", "experimental"),
    ("v6e-8", "jax", "OK", "v2-alpha-tpuv6e + jax[tpu]"),
    ("tpu7x-8", "tensorflow", "FAIL", "--config.backend=jax"),
    ("tpu7x-8", "jax", "WARN", "GKE only"),
])
def test_backend_row_of_the_support_table(accelerator, backend, status, says):
  check = doctor.backend_check(backend, doctor.parse_accelerator(accelerator))
  assert check.status == status and says in check.detail


def test_cli_passes_on_good_data(digits_dir):
  result = run_cli("doctor", "--config=configs/cnn.py", f"--config.data_dir={digits_dir}",
                   "--accelerator=v4-8", "--input_seconds=0.5")
  assert result.returncode == 0, result.stdout + result.stderr
  lines = result.stdout.splitlines()
  status = {name: next(l.split()[0] for l in lines if name in l)
            for name in ("data reachable", "metadata matches shards", "shards >= hosts",
                         "shard sizes", "batch per replica", "model compiles (bf16, XLA)",
                         "input rate vs step rate", "bucket region")}
  # digits: 16 shards, batch 32 (auto) over 8 replicas: 4 each, fine but not 128-wide.
  assert status == {"data reachable": "OK", "metadata matches shards": "OK",
                    "shards >= hosts": "OK", "shard sizes": "OK", "batch per replica": "WARN",
                    "model compiles (bf16, XLA)": "OK", "input rate vs step rate": "OK",
                    "bucket region": "SKIP"}, result.stdout
  assert "Ready to launch." in result.stdout


def test_cli_exits_1_and_names_what_failed(digits_dir, tmp_path):
  data = str(tmp_path / "d")
  shutil.copytree(digits_dir, data)
  from tpu_trainer.data import manifest  # pylint: disable=g-import-not-at-top
  os.remove(manifest.read(data).splits["train"].files[0])
  result = run_cli("doctor", "--config=configs/mlp.py", f"--config.data_dir={data}",
                   "--accelerator=v4-8", "--input_seconds=0.2")
  assert result.returncode == 1, result.stdout + result.stderr
  failed = [l for l in result.stdout.splitlines() if l.startswith("FAIL")]
  assert len(failed) == 1 and "metadata matches shards" in failed[0] and "is missing" in failed[0]
  assert "Ready to launch." not in result.stdout


def test_an_unreachable_service_fails_its_row_and_the_rest_still_runs(digits_dir):
  """config.input.service with no dispatcher there: the doctor hung, silent."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  result = run_cli("doctor", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
                   f"--config.input.service=grpc://localhost:{port}", "--accelerator=v4-8",
                   "--input_seconds=0.2", timeout=120)
  assert result.returncode == 1, result.stdout + result.stderr
  failed = [l for l in result.stdout.splitlines() if l.startswith("FAIL")]
  assert len(failed) == 1 and "tf.data service reachable" in failed[0], result.stdout
  assert f"No tf.data service dispatcher answers at grpc://localhost:{port}" in failed[0]
  assert any(l.startswith("OK") and "input rate vs step rate" in l
             for l in result.stdout.splitlines()), result.stdout


def test_bad_manifest_shard_count_and_batch_fail(digits_dir, tmp_path):
  data = str(tmp_path / "d")
  shutil.copytree(digits_dir, data)
  from tpu_trainer.data import manifest  # pylint: disable=g-import-not-at-top
  dataset = manifest.read(data)
  missing = os.path.basename(dataset.splits["train"].files[3])
  grown = os.path.basename(dataset.splits["test"].files[0])
  os.remove(os.path.join(data, missing))
  with open(os.path.join(data, grown), "ab") as f:
    f.write(b"extra")
  checks = _by_name(doctor.run_checks(_config(data, batch_size=100), "v4-256",
                                      input_seconds=0.2))
  metadata = checks["metadata matches shards"]
  assert metadata.status == "FAIL"
  assert f"{missing} is missing" in metadata.detail
  assert f"{grown} crc32c" in metadata.detail and f"{grown} has" in metadata.detail
  assert checks["shards >= hosts"].status == "FAIL"
  assert "--min_shards=128" in checks["shards >= hosts"].detail
  assert checks["batch per replica"].status == "FAIL"
  assert "multiple of 1024" in checks["batch per replica"].detail


def test_batch_tiles(digits_dir):
  check = doctor._batch_check(_config(digits_dir, batch_size=40), doctor.parse_accelerator("v4-8"))  # pylint: disable=protected-access
  assert check.status == "FAIL" and "multiple of 8" in check.detail
  check = doctor._batch_check(_config(digits_dir, batch_size=64), doctor.parse_accelerator("v4-8"))  # pylint: disable=protected-access
  assert check.status == "WARN" and "128" in check.detail
  check = doctor._batch_check(_config(digits_dir, batch_size=512), doctor.parse_accelerator("v4-8"))  # pylint: disable=protected-access
  assert check.status == "OK"


def test_missing_data_fails_and_skips_the_rest(tmp_path):
  checks = _by_name(doctor.run_checks(_config(str(tmp_path / "none")), "v4-8"))
  assert checks["data reachable"].status == "FAIL"
  assert checks["model compiles (bf16, XLA)"].status == "SKIP"


def test_unknown_model_fails(digits_dir):
  checks = _by_name(doctor.run_checks(_config(digits_dir, model="vgg"), "v4-8"))
  assert checks["model known"].status == "FAIL"


def test_bucket_checks_against_the_emulator(gcs_bucket, gcs_emulator):
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  data = f"gs://{gcs_bucket}/digits"
  convert.convert(sources.digits(), data, min_shards=2)
  # The emulator puts every bucket in us-central1.
  for zone, status in (("us-central1-b", "OK"), ("europe-west4-a", "FAIL")):
    checks = _by_name(doctor.run_checks(_config(data, tpu_zone=zone), "v4-8"))
    assert checks["data reachable"].status == "OK"
    assert checks["metadata matches shards"].status == "OK"
    region = checks["bucket region"]
    assert region.status == status and "bucket in us-central1" in region.detail, region
    assert checks["input rate vs step rate"].status == "SKIP"

  start = time.perf_counter()
  checks = _by_name(doctor.run_checks(_config("gs://no-such-bucket/x"), "v4-8"))
  assert checks["data reachable"].status == "FAIL"
  assert time.perf_counter() - start < 60  # no minutes of retries (not a speed test)


@pytest.mark.parametrize("location,status", [("europe-west4", "OK"), ("eu", "WARN"),
                                             ("europe", "WARN"), ("us", "WARN"),
                                             ("us-central1", "FAIL"), ("", "FAIL")])
def test_region_check(location, status):
  assert doctor.region_check(location, "europe-west4").status == status


def test_an_input_bound_job_is_told_how_many_service_workers_would_feed_it(digits_dir):
  # Batch 1024 at the 1 ms floor per step: ~1M examples/s per host, more than the
  # uncached pipeline gives here; the doctor times a tf.data service worker on it.
  result = run_cli("doctor", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
                   "--config.batch_size=1024", "--config.input.cache=false",
                   "--accelerator=v4-8", "--input_seconds=0.5")
  line = next(l for l in result.stdout.splitlines() if "input rate vs step rate" in l)
  assert line.split()[0] == "WARN" and "input-bound" in line, result.stdout
  workers = re.search(r"gives ([\d,]+) examples/s on this pipeline: ~(\d+) such worker", line)
  assert workers and int(workers.group(1).replace(",", "")) > 0, line
  assert f"--data_service_workers={workers.group(2)}" in line


def test_the_memory_estimate_counts_weights_optimizer_and_activations():
  """The arithmetic a user trusts before launch: weights, gradients and Adam's two
  moments in float32 (16 bytes a parameter), plus every layer's output for the
  replica's batch in bf16; compared with the generation's HBM per device."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((4, 4, 1))
  x = keras.layers.Flatten()(inputs)                        # 16 values
  outputs = keras.layers.Dense(10)(keras.layers.Dense(8)(x))  # 8 + 10 values
  model = keras.Model(inputs, outputs)
  assert memory.activation_values(model) == 16 + 16 + 8 + 10  # the input's too
  config = _config("", optimizer="adam", precision="auto")
  v4 = doctor.parse_accelerator("v4-8")
  check = doctor.memory_check(model, config, 128, v4)
  params = model.count_params()  # (16 + 1) * 8 + (8 + 1) * 10
  expected = params * 16 + 50 * 128 * 2
  assert check.status == "OK" and f"{params:,} parameters" in check.detail
  assert f"{expected / 2**20:.1f} MiB" in check.detail and "32.00 GiB HBM" in check.detail
  tiny = dataclasses.replace(v4, generation=dataclasses.replace(
      v4.generation, hbm_gib_per_chip=expected * 0.9 / 2**30))
  assert doctor.memory_check(model, config, 128, tiny).status == "WARN"
  assert "will not fit" in doctor.memory_check(model, config, 128, tiny).detail
  assert doctor.parse_accelerator("tpu7x-8").generation.hbm_bytes_per_device == 96 * 2**30


def test_the_doctor_builds_a_users_model_and_says_its_size(digits_dir, tmp_path):
  (tmp_path / "mine.py").write_text(
      "import keras\n"
      "def build(input_shape, num_classes, config):\n"
      "  inputs = keras.Input(input_shape)\n"
      "  x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))\n"
      "  return keras.Model(inputs, keras.layers.Dense(num_classes)(x))\n")
  result = run_cli("doctor", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
                   f"--config.model={tmp_path / 'mine.py'}:build", "--accelerator=v5litepod-8",
                   "--config.batch_size=1024", "--input_seconds=0.2")
  assert result.returncode == 0, result.stdout + result.stderr
  memory = [l for l in result.stdout.splitlines() if "memory per device" in l]
  assert memory and memory[0].startswith("OK") and "650 parameters" in memory[0]
  assert "at 128 per replica" in memory[0]
  assert "v5litepod's 16.00 GiB HBM per device" in memory[0]
