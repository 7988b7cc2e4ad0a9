"""tpu-trainer-launch: start a training run on Cloud TPUs, follow its log, delete it.

Examples:
  tpu-trainer-launch --platform=gke --cluster=my-cluster --location=us-east5 \\
      --name=resnet --accelerator=v6e-16 --config=configs/resnet50.py \\
      --workdir=gs://B/runs/resnet --data_dir=gs://B/imagenet [--slices=2] [--spot] \\
      [--dry_run] [-- --config.epochs=10]
  tpu-trainer-launch --platform=gke --cluster=my-cluster --location=us-east5 \\
      --name=resnet --delete
  tpu-trainer-launch --platform=tpu-vm --name=my-tpu --location=us-central2-b \\
      --accelerator=v4-8 --config=configs/resnet50.py --workdir=gs://B/runs/r1

--platform=gke writes a JobSet (one pod per TPU VM of each slice; README "Run on
GKE"), saves it as WORKDIR/jobset.yaml, applies it with kubectl and follows the
log of the first pod; the package is built here as a wheel, put in
WORKDIR/launch/ with the config (and the .py files beside it) and installed in
each pod at start. Preemption (exit 128+N) and storage going away (75) restart
the JobSet from its last checkpoint, up to --max_restarts; bad settings (2),
divergence (3) and bugs (1) fail it at once. --platform=tpu-vm runs
scripts/launch_tpu.sh (a checkout's) with the same flags.
"""
import glob
import os
import shlex
import subprocess
import sys
import tempfile
import time

from absl import flags
from absl import logging

from tpu_trainer import cli
from tpu_trainer.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_enum("platform", "gke", ["gke", "tpu-vm"], "Where the TPUs are.")
flags.DEFINE_string("name", None, "The run's JobSet (gke) or TPU VM (tpu-vm) name.")
flags.DEFINE_string("cluster", None, "gke: the GKE cluster with TPU node pools.")
flags.DEFINE_string("location", None, "The cluster's region or zone (gke); the TPU's "
                    "zone (tpu-vm).")
flags.DEFINE_string("project", None, "Google Cloud project (default: gcloud's).")
flags.DEFINE_string("accelerator", "v6e-8", "TYPE-SIZE, e.g. v5e-8, v5p-32, v6e-64, tpu7x-8.")
flags.DEFINE_integer("slices", 1, "gke: slices of --accelerator in one job (multislice).")
flags.DEFINE_bool("spot", False, "Spot capacity (preempted with ~30 s notice).")
flags.DEFINE_integer("max_restarts", 10, "gke: restarts of the whole job (preemptions, "
                     "storage outages) before it fails.")
flags.DEFINE_string("image", None, "gke: the container image, with JAX for TPU (default "
                    "Google's JAX AI image).")
flags.DEFINE_enum("backend", "jax", ["jax", "tensorflow"], "Keras's backend in the job.")
flags.DEFINE_string("config", None, "The config file (configs/NAME.py[:variant] or yours).")
flags.DEFINE_string("workdir", None, "gs:// directory of the run.")
flags.DEFINE_string("data_dir", None, "gs:// dataset directory (config.data_dir).")
flags.DEFINE_bool("dry_run", False, "Print the JobSet and every command instead of running.")
flags.DEFINE_bool("delete", False, "Delete the run's JobSet (or TPU VM) and exit.")
flags.DEFINE_bool("follow", True, "gke: follow the first pod's log after applying.")
flags.DEFINE_string("placement_policy", "", "gke, TPU7x: the workload policy its node pools "
                    "were created with (default xpk's name, e.g. tpu7x-16-2x2x2-placement-policy).")
flags.DEFINE_bool("node_pools", False, "gke: print the gcloud commands that create the node "
                  "pools this job runs on (--accelerator, --slices, --spot), and exit.")


def _run(command: list[str], dry_run: bool, **kwargs) -> subprocess.CompletedProcess | None:
  print(f"+ {shlex.join(command)}", flush=True)
  if dry_run:
    return None
  try:
    return subprocess.run(command, check=True, **kwargs)
  except FileNotFoundError:
    raise UserError(f"{command[0]} is not installed here: install the Google Cloud CLI "
                    "(gcloud, and `gcloud components install kubectl`).") from None
  except subprocess.CalledProcessError as e:
    raise UserError(f"`{shlex.join(command[:4])} ...` failed (exit {e.returncode}); its "
                    "output is above.") from None


def _checkout() -> str:
  """The checkout this package runs from (the wheel is built from it)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if not os.path.isfile(os.path.join(root, "setup.py")):
    raise UserError("tpu-trainer-launch builds the package it sends from a checkout of "
                    "tpu_trainer: run it from one (git clone, then pip install -e .).")
  return root


def _tpu_vm(extra: list[str]) -> None:
  args = [f"--name={FLAGS.name}", f"--zone={FLAGS.location}",
          f"--accelerator={FLAGS.accelerator}", f"--backend={FLAGS.backend}"]
  for flag in ("project", "config", "workdir", "data_dir"):
    if FLAGS[flag].value:
      args.append(f"--{flag}={FLAGS[flag].value}")
  args += [f"--{b}" for b in ("spot", "dry_run", "delete") if FLAGS[b].value]
  script = os.path.join(_checkout(), "scripts", "launch_tpu.sh")
  os.execvp("bash", ["bash", script, *args, *(["--", *extra] if extra else [])])


def _config() -> tuple[str, list[str]]:
  """(--config as the pod gives it, the local files to send with it): a recipe of
  the checkout travels in the wheel; a config of the user's goes with the .py
  files beside it (their model builder)."""
  from tpu_trainer import gke  # pylint: disable=g-import-not-at-top
  if not FLAGS.config:
    raise UserError("--config is required, e.g. --config=configs/resnet50.py.")
  path, sep, variant = FLAGS.config.partition(":")
  recipes = os.path.join(_checkout(), "configs")
  if not os.path.isfile(path):
    path = cli.packaged_recipe(path) or path
  if not os.path.isfile(path):
    raise UserError(f"--config={FLAGS.config}: no file {path}.")
  name = os.path.basename(path)
  if os.path.dirname(os.path.abspath(path)) == recipes:
    return name + sep + variant, []
  beside = glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), "*.py"))
  return f"{gke.STAGING}/{name}{sep}{variant}", sorted(beside)


def _gke(extra: list[str]) -> None:
  from tpu_trainer import gke  # pylint: disable=g-import-not-at-top
  from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
  if not FLAGS.cluster or not FLAGS.location:
    raise UserError("--platform=gke needs --cluster=NAME and --location=REGION_OR_ZONE.")
  project = [f"--project={FLAGS.project}"] if FLAGS.project else []
  if FLAGS.node_pools:
    for command in gke.node_pool_commands(FLAGS.accelerator, FLAGS.slices, FLAGS.cluster,
                                          FLAGS.location, FLAGS.spot, FLAGS.placement_policy):
      print(shlex.join(command + project))
    return
  name = gke.check_name(FLAGS.name or "")
  where = [f"--location={FLAGS.location}", *project]
  credentials = ["gcloud", "container", "clusters", "get-credentials", FLAGS.cluster, *where]
  if FLAGS.delete:
    _run(credentials, FLAGS.dry_run)
    _run(["kubectl", "delete", "jobset", name], FLAGS.dry_run)
    return
  if not (FLAGS.workdir or "").startswith("gs://"):
    raise UserError(f"--workdir={FLAGS.workdir}: a GKE job's pods share only Cloud Storage: "
                    "give gs://BUCKET/PATH.")
  if FLAGS.data_dir and not FLAGS.data_dir.startswith("gs://"):
    raise UserError(f"--data_dir={FLAGS.data_dir}: the pods cannot read this machine's "
                    "disk: give gs://BUCKET/PATH (tpu-trainer-convert --output_dir=gs://...).")
  node = gke.check(FLAGS.accelerator, FLAGS.slices, FLAGS.backend,
                   FLAGS.placement_policy)  # before any upload
  config, sent = _config()
  launch_dir = storage.join(FLAGS.workdir, "launch")
  with tempfile.TemporaryDirectory() as staging:
    # With this Python's setuptools: no download of a build environment.
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", staging, _checkout()], FLAGS.dry_run, stdout=subprocess.DEVNULL)
    wheels = glob.glob(os.path.join(staging, "*.whl"))
    wheel = os.path.basename(wheels[0]) if wheels else "tpu_trainer-VERSION-py3-none-any.whl"
    for local in [os.path.join(staging, wheel), *sent]:
      target = storage.join(launch_dir, os.path.basename(local))
      print(f"+ upload {local} {target}")
      if not FLAGS.dry_run:
        storage.publish_copy(local, target)
    job = gke.Job(
        name=name, accelerator=FLAGS.accelerator, slices=FLAGS.slices,
        image=FLAGS.image or gke.JAX_IMAGE, spot=FLAGS.spot, max_restarts=FLAGS.max_restarts,
        placement_policy=FLAGS.placement_policy,
        setup=gke.pod_setup(launch_dir, wheel),
        command=gke.trainer_command(config, FLAGS.workdir, FLAGS.data_dir, FLAGS.backend,
                                    extra))
    print(f"{FLAGS.accelerator} on GKE: {FLAGS.slices} slice(s) of {node.vms} x "
          f"{node.machine_type} ({node.topology}), one pod per VM.")
    if FLAGS.spot and job.grace_period_s > gke.SPOT_NOTICE_S:
      logging.warning("Spot: GKE gives a pod %d s from SIGTERM, not the %d s grace period. "
                      "The recipes save and exit within 5 s here (README, SIGTERM to exit); "
                      "a model whose save takes longer loses the steps since its last "
                      "periodic checkpoint.", gke.SPOT_NOTICE_S, job.grace_period_s)
    manifest = gke.to_yaml(gke.jobset(job))
    local_manifest = os.path.join(staging, "jobset.yaml")
    with open(local_manifest, "w") as f:
      f.write(manifest)
    if FLAGS.dry_run:
      print(manifest, end="")
    else:
      storage.write_text(storage.join(FLAGS.workdir, "jobset.yaml"), manifest)
    _run(credentials, FLAGS.dry_run)
    _run(["kubectl", "apply", "-f", local_manifest], FLAGS.dry_run)
  if FLAGS.follow and not FLAGS.dry_run:
    _follow(name)


def _follow(name: str, timeout_s: float = 3600) -> None:
  """The first pod's log once it exists (capacity may take long: waits up to an hour)."""
  from tpu_trainer import gke  # pylint: disable=g-import-not-at-top
  selector = gke.worker_zero(name)
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    found = subprocess.run(["kubectl", "get", "pods", "-l", selector, "-o",
                            "jsonpath={.items[0].metadata.name}"],
                           capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip():
      _run(["kubectl", "logs", "-f", "--pod-running-timeout=60m", found.stdout.strip()], False)
      return
    time.sleep(10)
  raise UserError(f"No pod of JobSet {name} after {timeout_s:.0f} s: `kubectl describe "
                  f"jobset {name}` says why (capacity, quota, node pool labels).")


def main(argv):
  extra = argv[1:]  # after --: the trainer's own flags (--config.KEY=VALUE)
  if FLAGS.platform == "tpu-vm":
    _tpu_vm(extra)
  else:
    _gke(extra)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
