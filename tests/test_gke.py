"""Launch on GKE without a cluster: golden JobSet manifests checked against
Kubernetes's own schemas, tpu-trainer-launch's kubectl/gcloud calls recorded by
fakes on PATH, and the manifest's pods simulated as local processes with the
environment GKE gives each (hostnames mapped to localhost, JAX on CPU, gloo)."""
import dataclasses
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO
from conftest import fake_cloud
from conftest import run_cli
from tpu_trainer import gke
from tpu_trainer import tpus
from tpu_trainer.errors import UserError

GOLDEN = pathlib.Path(__file__).parent / "gke_golden"
# (file, accelerator, slices, spot): v5e 2x4, v5p 2x2x2 twice, v6e 4x4, TPU7x 2x2x1.
CASES = [("v5e-2x4", "v5e-8", 1, False), ("v5p-2x2x2-2-slices", "v5p-16", 2, True),
         ("v6e-4x4", "v6e-16", 1, False), ("tpu7x-2x2x1", "tpu7x-8", 1, True)]


def _job(name, accelerator, slices, spot, command=None):
  return gke.Job(name=name, accelerator=accelerator, slices=slices, image=gke.JAX_IMAGE,
                 spot=spot, setup=gke.pod_setup("gs://bucket/runs/r/launch",
                                                "tpu_trainer-0.1.0-py3-none-any.whl"),
                 command=command or gke.trainer_command(
                     "resnet50.py", "gs://bucket/runs/r", "gs://bucket/imagenet", "jax", []))


@pytest.mark.parametrize("golden, accelerator, slices, spot", CASES)
def test_golden_manifests_are_valid_kubernetes_and_jobset(golden, accelerator, slices, spot):
  """The manifest equals its golden file (regenerate: TPU_TRAINER_GOLDEN=write); its
  Job template is a valid batch/v1 Job by Kubernetes's schema (strict: no unknown
  field); the JobSet fields say one job per slice, one pod per VM."""
  import kubernetes_validate  # pylint: disable=g-import-not-at-top
  manifest = gke.to_yaml(gke.jobset(_job("run", accelerator, slices, spot)))
  path = GOLDEN / f"{golden}.yaml"
  if os.environ.get("TPU_TRAINER_GOLDEN") == "write":
    path.write_text(manifest)
  assert manifest == path.read_text()

  jobset = yaml.safe_load(manifest)
  job = jobset["spec"]["replicatedJobs"][0]
  kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job",
                                "metadata": {"name": "run-slice-0"},
                                "spec": job["template"]["spec"]}, "1.30", strict=True)
  node = tpus.gke_slice(tpus.parse_accelerator(accelerator))
  spec = job["template"]["spec"]
  assert (jobset["apiVersion"], jobset["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
  assert job["replicas"] == slices
  assert spec["parallelism"] == spec["completions"] == node.vms and spec["backoffLimit"] == 0
  pod = spec["template"]["spec"]
  assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == golden.split("-")[1]
  assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == 4
  assert ("cloud.google.com/gke-spot" in pod["nodeSelector"]) == spot
  assert jobset["metadata"]["annotations"][
      "alpha.jobset.sigs.k8s.io/exclusive-topology"] == "cloud.google.com/gke-nodepool"
  assert jobset["spec"]["failurePolicy"]["rules"] == [
      {"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]


def _fails_at_once(manifest: dict, exit_code: int) -> bool:
  """Whether the Job's podFailurePolicy fails the job (and so the JobSet) on this exit."""
  rule, = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]["rules"]
  codes = rule["onExitCodes"]
  return (exit_code in codes["values"]) == (codes["operator"] == "In")


def test_tpu7x_pods_select_the_workload_policy_their_node_pools_were_made_with():
  """TPU7x node pools are placed by a workload policy whose name GKE labels every
  node with: a pod without that selector (or another name) never schedules."""
  def selector(accelerator, **job):
    manifest = gke.jobset(dataclasses.replace(_job("run", accelerator, 1, False), **job))
    return manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "nodeSelector"]
  label = "cloud.google.com/placement-policy-name"
  assert selector("tpu7x-16")[label] == "tpu7x-16-2x2x2-placement-policy"  # xpk's name
  assert selector("tpu7x-16", placement_policy="mine")[label] == "mine"
  assert label not in selector("v6e-16")
  with pytest.raises(UserError, match="not placed by a workload policy"):
    selector("v6e-16", placement_policy="mine")


def test_the_node_pool_commands_match_the_jobs_selectors():
  """--node_pools prints what makes the nodes the JobSet selects: one pool per
  slice, of the slice's VMs and machine type, compact by topology, TPU7x by its
  workload policy (created first, in the zone's region)."""
  result = run_cli("launch", "--platform=gke", "--cluster=c1", "--location=us-central1-c",
                   "--accelerator=tpu7x-16", "--slices=2", "--spot", "--project=p",
                   "--node_pools")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == [
      "gcloud beta compute resource-policies create workload-policy "
      "tpu7x-16-2x2x2-placement-policy --region=us-central1 --type=HIGH_THROUGHPUT "
      "--accelerator-topology=2x2x2 --project=p",
      *(f"gcloud container node-pools create tpu7x-16-{i} --cluster=c1 "
        "--location=us-central1-c --machine-type=tpu7x-standard-4t --num-nodes=2 "
        "--placement-policy=tpu7x-16-2x2x2-placement-policy --spot --project=p"
        for i in range(2))]
  v6e = gke.node_pool_commands("v6e-16", 1, "c1", "us-east5-b")
  assert v6e == [["gcloud", "container", "node-pools", "create", "v6e-16-0", "--cluster=c1",
                  "--location=us-east5-b", "--machine-type=ct6e-standard-4t", "--num-nodes=4",
                  "--tpu-topology=4x4", "--placement-type=COMPACT"]]
  one_vm = gke.node_pool_commands("v6e-4", 1, "c1", "us-east5-b")[0]
  assert "--num-nodes=1" in one_vm and not any("topology" in a for a in one_vm)


def test_exit_codes_decide_restart_or_failure():
  manifest = gke.jobset(_job("run", "v6e-16", 1, False))
  for code in (75, 130, 137, 143):  # storage gone, interrupted, killed, preempted
    assert not _fails_at_once(manifest, code), code
  for code in (1, 2, 3):  # a bug, bad settings, divergence
    assert _fails_at_once(manifest, code), code


@pytest.mark.parametrize("accelerator, slices, backend, expected", [
    ("v4-8", 1, "tensorflow", None),
    ("v5e-8", 1, "tensorflow", "on GKE trains on one TPU VM; v5e-8 x 1 is 2"),
    ("tpu7x-8", 1, "tensorflow", "TensorFlow does not run on tpu7x"),
    ("v5e-12", 1, "jax", "v5e-12 is 12 chips: GKE's TPU slices are 1 chip or a power of two"),
    ("v3-8", 1, "jax", "GKE has no v3 node pools"),
    ("v6e-4", 2, "jax", "multi-host slices only, and v6e-4 is one TPU VM (2x2): use one bigger "
     "slice (--accelerator=v6e-8 --slices=1)"),
])
def test_what_gke_cannot_run_is_one_line(accelerator, slices, backend, expected):
  try:
    gke.check(accelerator, slices, backend)
    gke.jobset(_job("run", accelerator, slices, False))
  except UserError as e:
    assert expected and expected in str(e), str(e)
  else:
    assert expected is None


def test_launch_builds_uploads_applies_follows_and_deletes(tmp_path, gcs_bucket):
  """Fake kubectl and gcloud record what the launcher runs; the wheel, the user's
  config with the builder beside it, and jobset.yaml land in the workdir."""
  env = {**os.environ, **fake_cloud(tmp_path)}
  project = tmp_path / "project"
  project.mkdir()
  (project / "my_config.py").write_text("from configs.cnn import get_config\n")
  (project / "my_models.py").write_text("# the user's builder\n")
  log = tmp_path / "calls.log"
  workdir = f"gs://{gcs_bucket}/runs/r"
  common = ["--platform=gke", "--cluster=c1", "--location=us-east5", "--name=run"]
  result = run_cli("launch", *common, "--accelerator=v6e-16", f"--workdir={workdir}",
                   f"--config={project / 'my_config.py'}", "--", "--config.epochs=3", env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  calls = log.read_text().splitlines()
  assert calls[0] == "gcloud container clusters get-credentials c1 --location=us-east5"
  assert calls[1].startswith("kubectl apply -f ")
  assert calls[2].startswith("kubectl get pods -l jobset.sigs.k8s.io/jobset-name=run,")
  assert calls[3] == "kubectl logs -f --pod-running-timeout=60m run-slice-0-0-abcde"
  assert "step 1/10 (10%)" in result.stdout

  from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
  applied = pathlib.Path(str(log) + ".applied").read_text()
  assert storage.read_text(f"{workdir}/jobset.yaml") == applied
  sent = sorted(storage.list_sizes(f"{workdir}/launch"))
  assert sent[:2] == ["my_config.py", "my_models.py"] and sent[2].endswith(".whl")
  script = yaml.safe_load(applied)["spec"]["replicatedJobs"][0]["template"]["spec"][
      "template"]["spec"]["containers"][0]["command"][2]
  assert script.splitlines()[-1] == (
      f"exec python3 -m tpu_trainer.cli.train --config={gke.STAGING}/my_config.py "
      f"--workdir={workdir} --config.backend=jax --config.epochs=3")

  log.unlink()
  deleted = run_cli("launch", *common, "--delete", env=env)
  assert deleted.returncode == 0, deleted.stderr[-3000:]
  assert log.read_text().splitlines()[1] == "kubectl delete jobset run"


def test_launch_refuses_a_local_workdir_before_any_call(tmp_path):
  result = run_cli("launch", "--platform=gke", "--cluster=c1", "--location=us-east5",
                   "--name=run", "--config=configs/cnn.py", f"--workdir={tmp_path}")
  assert result.returncode == 2
  assert "a GKE job's pods share only Cloud Storage" in result.stderr


def gke_pods(name: str, slices: int, vms: int, port: int) -> list[dict]:
  """What GKE and JobSet give each pod, in process order, with its DNS names
  mapped to localhost: TPU_WORKER_HOSTNAMES (the slice's pods), TPU_WORKER_ID,
  MEGASCALE_* across slices; the JAX coordinator's port made free here."""
  envs = []
  for s in range(slices):
    for i in range(vms):
      env = {"TPU_WORKER_HOSTNAMES": ",".join(["localhost"] * vms), "TPU_WORKER_ID": str(i),
             "HOSTNAME": f"{name}-slice-{s}-{i}", "JAX_COORDINATOR_PORT": str(port),
             "JAX_PLATFORMS": "cpu"}
      if slices > 1:
        env.update(MEGASCALE_COORDINATOR_ADDRESS="localhost",
                   MEGASCALE_NUM_SLICES=str(slices), MEGASCALE_SLICE_ID=str(s))
      envs.append(env)
  return envs


def _pod_command(manifest: dict) -> list[str]:
  """The trainer command of the manifest's pod script (after its setup)."""
  script = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
      "containers"][0]["command"][2]
  last = script.splitlines()[-1]
  assert last.startswith("exec ")
  command = shlex.split(last[len("exec "):])
  assert command[0] == "python3"
  return [sys.executable, *command[1:]]


def _start_pods(job, tmp_path, log_name):
  from test_jax_backend import _free_port  # pylint: disable=g-import-not-at-top
  manifest = gke.jobset(job)
  vms = tpus.gke_slice(tpus.parse_accelerator(job.accelerator)).vms
  envs = gke_pods(job.name, job.slices, vms, _free_port())
  procs, logs = [], []
  for k, env in enumerate(envs):
    logs.append(tmp_path / f"{log_name}-{k}.log")
    procs.append(subprocess.Popen(_pod_command(manifest), cwd=REPO,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
                                  stdout=subprocess.PIPE, stderr=open(logs[-1], "w"),
                                  text=True))
  return procs, logs


def _finish(procs, timeout=300):
  try:
    return [proc.communicate(timeout=timeout)[0] for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()


def test_the_manifests_pods_form_one_job_that_trains_like_one_process(tmp_path):
  """v5e-8 on GKE is two VMs: its two pods, started as processes with GKE's
  environment and the manifest's command, join as one JAX job (each feeding
  half of every batch) and end with the weights of one process given the whole."""
  from test_jax_backend import EQUAL_RUN, _assert_same_weights, _flags, _initial_cnn_weights, \
      _weights  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "data")
  convert.convert(sources.digits(), data, num_shards=1, min_shards=1, workers=1)
  overrides = [*_flags(EQUAL_RUN), "--config.input.cache=False",
               "--config.input.shuffle_buffer=1", "--config.input.deterministic=True"]
  one = run_cli("train", "--config=configs/cnn.py", "--config.backend=jax",
                f"--config.data_dir={data}", f"--workdir={tmp_path / 'one'}", *overrides)
  assert one.returncode == 0, one.stderr[-3000:]

  job = _job("run", "v5e-8", 1, False, gke.trainer_command(
      "cnn.py", str(tmp_path / "gke"), data, "jax", overrides))
  procs, logs = _start_pods(job, tmp_path, "pod")
  outs = _finish(procs)
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log.read_text()[-3000:]
  assert "process 1 of 2, coordinator localhost:" in logs[1].read_text()
  assert "(GKE)" in logs[1].read_text()
  metrics = [json.loads(next(line for line in out.splitlines() if line.startswith("{")))
             for out in outs]
  assert [m["replicas"] for m in metrics] == [2, 2]
  _assert_same_weights(_weights(str(tmp_path / "gke" / "model.keras")),
                       _weights(str(tmp_path / "one" / "model.keras")),
                       _initial_cnn_weights())


def test_a_sigterm_to_one_pod_ends_every_pod_with_a_restart_exit_code(digits_dir, tmp_path):
  """Two slices of two VMs each (multislice's MEGASCALE_* environment; GKE's
  multislice needs multi-host slices): a preemption's SIGTERM to a pod of the
  second slice stops all four after a saved checkpoint, each with 143, an exit
  the JobSet restarts on."""
  job = _job("run", "v5e-8", 2, True, gke.trainer_command(
      "cnn.py", str(tmp_path / "w"), digits_dir, "jax",
      ["--config.steps=100000", "--config.steps_per_execution=5",
       "--config.log_every_steps=5"]))
  procs, logs = _start_pods(job, tmp_path, "pod")
  deadline = time.time() + 240
  while not all("step 5/" in log.read_text() for log in logs):
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        "\n".join(log.read_text()[-2000:] for log in logs)
    time.sleep(0.5)
  procs[2].send_signal(signal.SIGTERM)
  _finish(procs, timeout=120)
  assert [p.returncode for p in procs] == [143] * 4, [l.read_text()[-2000:] for l in logs]
  assert not _fails_at_once(gke.jobset(job), 143)
  assert "SIGTERM here at step" in logs[2].read_text()
  assert "on another worker at step" in logs[0].read_text()


def test_the_tpu_vm_platform_runs_launch_tpu_sh_with_the_same_flags():
  """--platform=tpu-vm is scripts/launch_tpu.sh: the very commands it prints."""
  flags = ["--name=tpu1", "--accelerator=v4-8", "--config=configs/cnn.py",
           "--workdir=gs://bkt/run1", "--data_dir=gs://bkt/digits", "--spot", "--dry_run"]
  launched = run_cli("launch", "--platform=tpu-vm", "--location=us-central2-b", *flags,
                     "--backend=tensorflow", "--", "--config.epochs=3")
  script = subprocess.run(["bash", os.path.join(REPO, "scripts", "launch_tpu.sh"),
                           "--zone=us-central2-b", *flags, "--", "--config.epochs=3"],
                          capture_output=True, text=True, timeout=60)
  assert launched.returncode == script.returncode == 0, launched.stderr[-2000:]
  commands = [l for l in launched.stdout.splitlines() if l.startswith("+ ")]
  assert commands and commands == [l for l in script.stdout.splitlines() if l.startswith("+ ")]
  assert commands[0].startswith("+ gcloud compute tpus tpu-vm create tpu1 ")
