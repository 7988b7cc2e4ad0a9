"""Training, evaluation and resume with data_dir and workdir on gs://, through
TensorFlow's own GCS filesystem (tf.data's reads, checkpoints, summaries,
tf.io.gfile), as on a TPU VM: fake-gcs-server behind a TLS-terminating proxy
(gcs_emulator.TensorFlowProxy). google-cloud-storage (uploads, the lock) talks to
the same emulator."""
import json
import re
import time

from conftest import run_cli, start_cli, wait_for


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


def test_storage_gone_mid_run_ends_in_bounded_time_and_resumes(digits_dir, tmp_path,
                                                               monkeypatch):
  """A gs:// workdir whose storage goes away mid-run (the server killed: the
  proxy's connections then hang, as in a network partition, and TensorFlow's
  GCS client would retry each request for ten minutes): notices say what is
  being retried, then one error line naming the checkpoint to resume from,
  exit 75, within config.storage_timeout_secs. Storage back, the same command
  resumes from that checkpoint (the dead run's lock is no obstacle)."""
  from gcs_emulator import Emulator, TensorFlowProxy  # pylint: disable=g-import-not-at-top
  from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
  with Emulator(root=str(tmp_path / "objects")) as emulator, TensorFlowProxy(
      emulator.url, str(tmp_path)) as proxy:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    storage.gcs_client().create_bucket("outage")
    env = {"STORAGE_EMULATOR_HOST": emulator.url, **proxy.env}
    args = ["--config=configs/mlp.py", "--workdir=gs://outage/run",
            f"--config.data_dir={digits_dir}", "--config.batch_size=64",
            "--config.steps_per_execution=10", "--config.log_every_steps=100",
            "--config.checkpoint_every_steps=100", "--config.storage_timeout_secs=15"]
    log = tmp_path / "train.log"
    proc = start_cli("train", *args, "--config.steps=100000", log=log, env=env)
    wait_for(lambda: "step 300/" in log.read_text(), proc, log)
    emulator.proc.kill()
    gone = time.monotonic()
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    waited = time.monotonic() - gone
    lines = log.read_text().splitlines()
    assert waited < 15 + 15, waited  # the limit, plus the steps before the next write
    assert any("Still " in l and "retrying; the run gives up at 15 s" in l for l in lines)
    assert lines[-1].startswith("error: the storage of workdir=gs://outage/run did not answer "
                                "while "), lines[-5:]
    assert "Traceback" not in log.read_text()
    # The newest checkpoint known whole (saves are written in the background: the
    # one in flight when storage went may be whole too, or not).
    checkpoint = re.search(r"Last checkpoint: gs://outage/run/checkpoints/ckpt-(\d+)\.",
                           lines[-1])
    assert checkpoint and int(checkpoint.group(1)) >= 100, lines[-1]  # saved before the kill

    emulator.start()  # storage back, with what was written before
    again = run_cli("train", *args, "--config.steps=420", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = re.search(r"Resumed from gs://outage/run/checkpoints/ckpt-(\d+)\.", again.stderr)
    assert resumed and int(resumed.group(1)) >= int(checkpoint.group(1)), again.stderr[-3000:]


def test_a_gs_data_dir_gone_mid_run_ends_in_bounded_time_naming_it(digits_dir, tmp_path,
                                                                  monkeypatch):
  """The input's storage, not the workdir's: a streamed (uncached) gs://
  data_dir whose server is killed mid-run. The step waiting on its records is
  said while it waits, then one line naming data_dir and the checkpoint to
  resume from, exit 75, within config.storage_timeout_secs (it was 4 minutes
  of silence, then "internal error: AbortedError")."""
  from gcs_emulator import Emulator, TensorFlowProxy  # pylint: disable=g-import-not-at-top
  from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
  with Emulator(root=str(tmp_path / "objects")) as emulator, TensorFlowProxy(
      emulator.url, str(tmp_path)) as proxy:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    storage.gcs_client().create_bucket("input")
    env = {"STORAGE_EMULATOR_HOST": emulator.url, **proxy.env}
    converted = run_cli("convert", "--source=digits", "--output_dir=gs://input/digits",
                        "--min_shards=4", env=env)
    assert converted.returncode == 0, converted.stderr[-3000:]
    log = tmp_path / "train.log"
    proc = start_cli("train", "--config=configs/mlp.py", f"--workdir={tmp_path / 'run'}",
                     "--config.data_dir=gs://input/digits", "--config.input.cache=false",
                     "--config.input.shuffle_buffer=64", "--config.batch_size=64",
                     "--config.steps_per_execution=10", "--config.log_every_steps=100",
                     "--config.checkpoint_every_steps=100", "--config.steps=100000",
                     "--config.storage_timeout_secs=15", log=log, env=env)
    wait_for(lambda: "step 300/" in log.read_text(), proc, log)
    emulator.proc.kill()
    gone = time.monotonic()
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    assert time.monotonic() - gone < 15 + 15
    lines = log.read_text().splitlines()
    assert "Traceback" not in log.read_text()
    assert "internal error" not in log.read_text()
    assert "gs://input/digits" in lines[-1] and lines[-1].startswith("error:"), lines[-5:]
    checkpoint = re.search(rf"Last checkpoint: {tmp_path / 'run'}/checkpoints/ckpt-(\d+)\.",
                           lines[-1])
    # Known written whole (saves finish in the background): 100 at least.
    assert checkpoint and int(checkpoint.group(1)) >= 100, lines[-1]
    # Blocked in a training step, or in the evaluation (it reads data_dir too).
    assert re.match(r"error: no (training step|evaluation) returned in \d+ s \(the longest "
                    r"took [\d.]+ s\): records from gs://input/digits stopped coming",
                    lines[-1]), lines[-1]
    assert any(re.search(r"The (training step|evaluation) has not returned in \d+ s \(the "
                         r"longest took .*waiting for records from gs://input/digits", l)
               for l in lines)


def test_jax_checkpoints_on_gs_through_orbax(digits_dir, gcs_bucket, gcs_emulator,
                                             tf_gcs_proxy):
  """The JAX backend's Orbax checkpoints in a gs:// workdir: TensorStore writes the
  arrays (TENSORSTORE_GCS_HTTP_URL: the emulator), finalized, the newest `keep`
  kept, and a rerun resumes from them."""
  env = {"STORAGE_EMULATOR_HOST": gcs_emulator.url, "TENSORSTORE_GCS_HTTP_URL": gcs_emulator.url,
         **tf_gcs_proxy.env}
  workdir = f"gs://{gcs_bucket}/run"
  args = ["--config=configs/mlp.py", "--config.backend=jax", f"--workdir={workdir}",
          f"--config.data_dir={digits_dir}", "--config.batch_size=64",
          "--config.steps_per_execution=10", "--config.checkpoint_every_steps=10",
          "--config.keep_checkpoints=1"]
  first = run_cli("train", *args, "--config.steps=20", env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
  names = {b.name for b in storage.gcs_client().list_blobs(gcs_bucket, prefix="run/checkpoints/")}
  assert "run/checkpoints/20/commit_success.txt" in names
  assert not any(n.startswith("run/checkpoints/10/") for n in names)  # keep=1

  again = run_cli("train", *args, "--config.steps=30", env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resumed from {workdir}/checkpoints/20." in again.stderr
  assert "The input resumes where" in again.stderr
  assert json.loads(again.stdout.splitlines()[0])["step"] == 30
