"""A training run as a GKE JobSet: one replicated job per slice set, one pod per
TPU VM of a slice, the trainer's exit codes deciding restart or failure.

What it follows (read from the sources; FIELD_NOTES.md): JobSet's TPU examples
(replicas = slices, parallelism = completions = VMs per slice, backoffLimit 0,
the exclusive-topology annotation, hostNetwork) and xpk's policy (exit codes
mapped to restart or fail, a grace period for the last checkpoint). GKE gives
each pod TPU_WORKER_HOSTNAMES / TPU_WORKER_ID (and MEGASCALE_* across slices):
the JAX backend joins its peers from them (backends/jax.py).
"""
import dataclasses
import re
import shlex

from tpu_trainer import tpus
from tpu_trainer.errors import UserError

# Exit codes that restart the JobSet (from its last checkpoint): storage gone
# (75) and every signal (128+N: SIGTERM on preemption 143, SIGKILL 137). All
# others fail it at once: bad settings (2), divergence (3), a bug (1).
RESTART_EXIT_CODES = (75, *range(128, 256))
# Seconds from SIGTERM to SIGKILL. The trainer's own, measured here
# (benchmarks/sigterm_exit.py, README): exit within 5.0 s of SIGTERM for every
# recipe at 64x64 on a 2-core CPU (resnet50 on JAX the slowest), its checkpoint
# written by then; 60 s leaves room for models ten times the size. GKE Spot
# gives pods 15 s whatever this says (the launcher warns).
GRACE_PERIOD_S = 60
SPOT_NOTICE_S = 15
JAX_IMAGE = "us-docker.pkg.dev/cloud-tpu-images/jax-ai-image/tpu:latest"
CONTAINER = "trainer"


@dataclasses.dataclass(frozen=True)
class Job:
  name: str            # the JobSet's name (a DNS label)
  accelerator: str     # e.g. v6e-16
  slices: int
  image: str
  command: list        # the trainer's command line, run in every pod
  setup: str = ""      # shell run before it (installs the wheel)
  spot: bool = False
  max_restarts: int = 10
  grace_period_s: int = GRACE_PERIOD_S
  placement_policy: str = ""  # TPU7x: the node pool's workload policy; "" = xpk's name


def check_name(name: str) -> str:
  if not (0 < len(name) <= 40 and name.replace("-", "").isalnum() and name.islower()
          and name[0].isalpha() and name[-1] != "-"):
    raise UserError(f"--name={name!r}: a JobSet's name is a DNS label: lowercase letters, "
                    "digits and '-', starting with a letter, at most 40 characters.")
  return name


def jobset(job: Job) -> dict:
  """The JobSet manifest (a dict; kubectl takes it as YAML or JSON)."""
  node = check(job.accelerator, job.slices, placement_policy=job.placement_policy)
  node_selector = {"cloud.google.com/gke-tpu-accelerator": node.accelerator,
                   "cloud.google.com/gke-tpu-topology": node.topology}
  if node.placement_policy:  # TPU7x pools: the pods wait for nodes of this label
    node_selector["cloud.google.com/placement-policy-name"] = node.placement_policy
  tolerations = [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]
  if job.spot:
    node_selector["cloud.google.com/gke-spot"] = "true"
    tolerations.append({"key": "cloud.google.com/gke-spot", "operator": "Equal",
                        "value": "true", "effect": "NoSchedule"})
  script = "set -e\n" + (job.setup + "\n" if job.setup else "") + "exec " + shlex.join(
      job.command)  # exec: the trainer is PID 1 and gets the SIGTERM itself
  pod = {
      "metadata": {"labels": {"app": "tpu-trainer", "tpu-trainer/run": job.name}},
      "spec": {
          "restartPolicy": "Never",  # JobSet restarts the whole set
          "terminationGracePeriodSeconds": job.grace_period_s,
          # TPU VMs talk over the host's network; JobSet's DNS names still resolve.
          "hostNetwork": True,
          "dnsPolicy": "ClusterFirstWithHostNet",
          "nodeSelector": node_selector,
          "tolerations": tolerations,
          "containers": [{
              "name": CONTAINER,
              "image": job.image,
              "command": ["bash", "-c", script],
              "ports": [{"containerPort": 8471}, {"containerPort": 8080},
                        {"containerPort": 8482}],  # TPU runtime, megascale, jax coordinator
              "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
              "resources": {"limits": {"google.com/tpu": node.chips_per_vm}},
          }],
      },
  }
  return {
      "apiVersion": "jobset.x-k8s.io/v1alpha2",
      "kind": "JobSet",
      "metadata": {
          "name": job.name,
          "labels": {"app": "tpu-trainer"},
          # One slice's pods on one node pool, the pool whole for them.
          "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology":
                          "cloud.google.com/gke-nodepool"},
      },
      "spec": {
          "failurePolicy": {
              "maxRestarts": job.max_restarts,
              # A job failed by its podFailurePolicy (below) fails the set at once.
              "rules": [{"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}],
          },
          "replicatedJobs": [{
              "name": "slice",
              "replicas": job.slices,
              "template": {"spec": {
                  "parallelism": node.vms,
                  "completions": node.vms,
                  "completionMode": "Indexed",
                  "backoffLimit": 0,
                  "podFailurePolicy": {"rules": [{
                      "action": "FailJob",
                      "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn",
                                      "values": list(RESTART_EXIT_CODES)}}]},
                  "template": pod,
              }},
          }],
      },
  }



STAGING = "/tmp/tpu_trainer"  # in the pod: the wheel and the config, fetched at start


def pod_setup(launch_dir: str, wheel: str) -> str:
  """Shell run in each pod before the trainer: fetch launch_dir (gs://: the wheel
  the launcher built, the config and the .py files beside it) and install the
  wheel with TensorFlow for CPU (tf.data) beside the image's jax[tpu]."""
  fetch = ("import os, sys; from google.cloud import storage; "
           "bucket, _, prefix = sys.argv[1][5:].partition('/'); "
           "os.makedirs(sys.argv[2], exist_ok=True); "
           "[b.download_to_filename(os.path.join(sys.argv[2], os.path.basename(b.name))) "
           "for b in storage.Client().list_blobs(bucket, prefix=prefix.rstrip('/') + '/')]")
  return "\n".join([
      "python3 -m pip install -q google-cloud-storage",
      shlex.join(["python3", "-c", fetch, launch_dir, STAGING]),
      shlex.join(["python3", "-m", "pip", "install", "-q", f"{STAGING}/{wheel}[jax,cpu]"]),
  ])


def trainer_command(config: str, workdir: str, data_dir: str, backend: str,
                    overrides: list[str]) -> list[str]:
  """What each pod runs once set up: `config` a recipe of the package (cnn.py) or
  a file staged (STAGING/NAME.py), the run's gs:// paths."""
  command = ["python3", "-m", "tpu_trainer.cli.train", f"--config={config}",
             f"--workdir={workdir}", f"--config.backend={backend}"]
  if data_dir:
    command.append(f"--config.data_dir={data_dir}")
  return command + list(overrides)


def worker_zero(name: str) -> str:
  """kubectl's label selector for the first pod of the first slice (its log is the run's)."""
  return (f"jobset.sigs.k8s.io/jobset-name={name},"
          "jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0")


def check(accelerator: str, slices: int, backend: str = "jax",
          placement_policy: str = "") -> tpus.GkeSlice:
  """The node pool of `slices` x `accelerator` on GKE (placed by the workload
  policy named `placement_policy`, where the generation's are: "" = xpk's name);
  UserError for what GKE or the backend cannot run. TensorFlow on GKE: one TPU VM
  (a slice of several VMs needs TensorFlow's own cluster resolver for GKE, which
  this launcher does not set up)."""
  tpu_slice = tpus.parse_accelerator(accelerator)
  node = tpus.gke_slice(tpu_slice)
  if placement_policy:
    if not node.placement_policy:
      raise UserError(f"--placement_policy={placement_policy}: {accelerator}'s node pools "
                      "are not placed by a workload policy (TPU7x's are): leave it out.")
    node = dataclasses.replace(node, placement_policy=placement_policy)
  if slices < 1:
    raise UserError(f"--slices={slices}: at least 1.")
  if slices > 1 and node.vms == 1:  # GKE's multislice: multi-host node pools only
    generation, size = accelerator.rsplit("-", 1)
    bigger = int(size) * slices
    instead = (f" (--accelerator={generation}-{bigger} --slices=1)"
               if bigger & (bigger - 1) == 0 else "")
    raise UserError(f"--slices={slices} x {accelerator}: GKE runs multislice on multi-host "
                    f"slices only, and {accelerator} is one TPU VM ({node.topology}): use one "
                    f"bigger slice{instead}, or slices of several VMs each.")
  if backend not in ("jax", "tensorflow"):
    raise UserError(f"--backend={backend!r}: jax or tensorflow.")
  if backend == "tensorflow":
    if tpu_slice.generation.tensorflow == "none":
      raise UserError(f"TensorFlow does not run on {tpu_slice.generation.name} (Cloud TPU: "
                      "\"TensorFlow is not supported\"): use --backend=jax.")
    if node.vms * slices > 1:
      raise UserError(f"--backend=tensorflow on GKE trains on one TPU VM; {accelerator} x "
                      f"{slices} is {node.vms * slices}: use --backend=jax.")
  return node


def node_pool_commands(accelerator: str, slices: int, cluster: str, location: str,
                       spot: bool = False, placement_policy: str = "") -> list[list[str]]:
  """The gcloud commands that create the node pools a job of `slices` x
  `accelerator` runs on (xpk's node-pool flags, from the same table as the
  JobSet's selectors): one pool per slice, of `vms` TPU VMs; multi-VM pools
  placed compactly by their topology, TPU7x pools by a workload policy instead
  (created first; in the location's region)."""
  node = check(accelerator, slices, placement_policy=placement_policy)
  commands, placement = [], []
  if node.placement_policy:
    policy = node.placement_policy
    region = re.sub(r"-[a-z]$", "", location)  # a zone's region (us-central1-c)
    commands.append(["gcloud", "beta", "compute", "resource-policies", "create",
                     "workload-policy", policy, f"--region={region}", "--type=HIGH_THROUGHPUT",
                     f"--accelerator-topology={node.topology}"])
    placement = [f"--placement-policy={policy}"]
  elif node.vms > 1:
    placement = [f"--tpu-topology={node.topology}", "--placement-type=COMPACT"]
  for i in range(slices):
    commands.append(["gcloud", "container", "node-pools", "create", f"{accelerator}-{i}",
                     f"--cluster={cluster}", f"--location={location}",
                     f"--machine-type={node.machine_type}", f"--num-nodes={node.vms}",
                     *placement, *(["--spot"] if spot else [])])
  return commands


def to_yaml(manifest: dict) -> str:
  """The manifest as YAML, multi-line strings (the pod's script) as blocks."""
  import yaml  # pylint: disable=g-import-not-at-top

  class Dumper(yaml.SafeDumper):
    pass

  def string(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

  def sequence(dumper, value):  # exit codes on one line
    flow = all(isinstance(v, int) for v in value) and len(value) > 4
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

  Dumper.add_representer(str, string)
  Dumper.add_representer(list, sequence)
  return yaml.dump(manifest, Dumper=Dumper, sort_keys=False, width=100)
