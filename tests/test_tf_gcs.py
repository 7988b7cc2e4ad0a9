"""Training, evaluation and resume with data_dir and workdir on gs://, through
TensorFlow's own GCS filesystem (tf.data's reads, checkpoints, summaries,
tf.io.gfile), as on a TPU VM: fake-gcs-server behind a TLS-terminating proxy
(gcs_emulator.TensorFlowProxy). google-cloud-storage (uploads, the lock) talks to
the same emulator."""
import json

from conftest import run_cli


def test_train_evaluate_and_resume_on_gs(gcs_bucket, gcs_emulator, tf_gcs_proxy):
  env = {"STORAGE_EMULATOR_HOST": gcs_emulator.url, **tf_gcs_proxy.env}
  data, workdir = f"gs://{gcs_bucket}/digits", f"gs://{gcs_bucket}/run"
  result = run_cli("convert", "--source=digits", f"--output_dir={data}", "--min_shards=4",
                   env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  args = ["--config=configs/mlp.py", f"--workdir={workdir}", f"--config.data_dir={data}",
          "--config.batch_size=64", "--config.steps_per_execution=10", "--config.cpu_devices=2"]
  before = len(tf_gcs_proxy.requests)
  first = run_cli("train", *args, "--config.steps=40", env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  assert json.loads(first.stdout.splitlines()[0])["step"] == 40

  # TensorFlow itself read the shards and wrote checkpoints and summaries.
  through_tf = tf_gcs_proxy.requests[before:]
  assert any(m == "GET" and "tfrecord" in p for m, p in through_tf)
  assert any(m == "POST" and "checkpoints" in p for m, p in through_tf)
  assert any(m == "POST" and "tfevents" in p for m, p in through_tf)
  from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
  names = {b.name for b in storage.gcs_client().list_blobs(gcs_bucket, prefix="run/")}
  assert {"run/checkpoints/checkpoint", "run/config.json", "run/metrics.json",
          "run/model.keras", "run/saved_model/saved_model.pb"} <= names
  assert any(n.startswith("run/train/events.out.tfevents") for n in names)
  metrics = json.loads(storage.read_text(f"{workdir}/metrics.json"))
  assert metrics["step"] == 40 and metrics["accuracy"] > 0.8

  evaluation = run_cli("evaluate", f"--workdir={workdir}", env=env)
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  assert json.loads(evaluation.stdout.splitlines()[0])["accuracy"] == metrics["accuracy"]

  again = run_cli("train", *args, "--config.steps=60", env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resumed from {workdir}/checkpoints/ckpt-40" in again.stderr
  assert json.loads(again.stdout.splitlines()[0])["step"] == 60
