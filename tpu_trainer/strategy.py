"""get_strategy(): TPU when one answers, else several GPUs, one GPU, or the CPU.

The local TPU is probed only where one may be attached (a Google PCI device):
elsewhere the probe would cost every run time to learn nothing.

`cpu_devices=N` splits the CPU into N logical devices first, so a laptop runs the
same multi-replica code a TPU slice runs. On a machine with a TPU the TPU still
wins: one config serves the dry run and the real job.
"""
import glob
import json
import os

from absl import logging
import tensorflow as tf

from tpu_trainer.errors import UserError


def _probe_tpu(tpu: str, zone: str = "", project: str = ""):
  """Returns a connected TPUClusterResolver, or None with the reason."""
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu, zone=zone or None, project=project or None)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return resolver, ""
  except (ValueError, OSError, tf.errors.OpError) as e:
    # No TPU: "local" raises NotFoundError at once,
    # a named TPU that is not there OSError / URLError.
    return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips; also gVNIC network cards on GCE VMs


def may_have_local_tpu(pci_devices: str = "/sys/bus/pci/devices") -> bool:
  """False only when this Linux machine's PCI bus has no Google device: a laptop
  or a non-Google VM skips the local TPU probe. Elsewhere, or when
  the bus cannot be read, the probe decides."""
  if not os.path.isdir(pci_devices):
    return True
  for vendor_file in glob.glob(os.path.join(pci_devices, "*", "vendor")):
    try:
      with open(vendor_file) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      return True
  return False


def split_cpu(num_devices: int) -> None:
  """Makes `num_devices` logical CPUs; must run before TensorFlow initialises."""
  cpus = tf.config.list_physical_devices("CPU")
  current = tf.config.get_logical_device_configuration(cpus[0]) or []
  if len(current) == num_devices:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError as e:
    raise RuntimeError(
        f"cpu_devices={num_devices}: TensorFlow was initialised before the CPU "
        f"could be split; call get_strategy() first in the process ({e}).") from None


def get_strategy(kind: str = "auto", tpu: str = "", cpu_devices: int = 0,
                 tpu_zone: str = "", tpu_project: str = ""):
  """Picks a tf.distribute strategy and logs which one and why."""
  if cpu_devices > 0:
    split_cpu(cpu_devices)

  if kind == "multiworker":
    if not os.environ.get("TF_CONFIG"):
      raise UserError("strategy=multiworker needs the TF_CONFIG environment variable "
                      "(cluster and task of this worker).")
    try:
      task = json.loads(os.environ["TF_CONFIG"])["task"]
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"TF_CONFIG={os.environ['TF_CONFIG']!r} is not a cluster description "
                      f"with this worker's task ({type(e).__name__}: {e}): see the README's "
                      "multi-worker section.") from None
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    logging.info("Strategy: MultiWorkerMirroredStrategy (%s %s, %d replicas in sync).",
                 task.get("type"), task.get("index"), strategy.num_replicas_in_sync)
    return strategy

  if kind == "tpu" or (kind == "auto" and (tpu not in ("", "local") or may_have_local_tpu())):
    resolver, why_not = _probe_tpu(tpu or "local",
                                   tpu_zone, tpu_project)
    if resolver is not None:
      strategy = tf.distribute.TPUStrategy(resolver)
      logging.info("Strategy: TPUStrategy on %s (%d cores, %d hosts).",
                   tpu or "local", strategy.num_replicas_in_sync,
                   strategy.extended.num_hosts)
      return strategy
    if kind == "tpu":
      raise UserError(f"strategy=tpu but no TPU answered at tpu={tpu or 'local'!r} "
                      f"({why_not}); check config.tpu / tpu_zone / tpu_project.")
    logging.vlog(1, "TPU probe: %s", why_not)

  no_tpu = "No TPU found; using " if kind == "auto" else "Using "
  gpus = tf.config.list_logical_devices("GPU")
  if kind in ("auto", "gpu") and gpus:
    if len(gpus) > 1:
      strategy = tf.distribute.MirroredStrategy()
      logging.info("%sMirroredStrategy over %d GPUs.", no_tpu, len(gpus))
    else:
      strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
      logging.info("%sOneDeviceStrategy on the one GPU.", no_tpu)
    return strategy
  if kind == "gpu":
    raise UserError("strategy=gpu but TensorFlow sees no GPU; install tensorflow[and-cuda] "
                    "or use strategy=auto.")

  cpus = tf.config.list_logical_devices("CPU")
  if len(cpus) > 1:
    # Reduce through one device: collective all-reduce on logical CPUs reuses
    # instance keys across strategies in one process (shape-mismatch aborts).
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in cpus], cross_device_ops=tf.distribute.ReductionToOneDevice())
    logging.info("%sMirroredStrategy over %d logical CPU devices (cpu_devices=%d).",
                 no_tpu, len(cpus), cpu_devices)
  elif gpus:  # strategy=cpu on a machine with a GPU: keep the ops off it
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    logging.info("Using OneDeviceStrategy on the CPU (strategy=cpu).")
  else:
    # The default strategy, as plain Keras. Under OneDeviceStrategy("/cpu:0") glibc's
    # per-thread malloc arenas hand oneDNN's big buffers back to the kernel every
    # step (ResNet-50: ~45k page faults a step, 110 vs 150 ex/s; MALLOC_ARENA_MAX=1
    # cures it too, at the cost of one lock for every thread's malloc).
    strategy = tf.distribute.get_strategy()
    logging.info("%sthe default strategy on the CPU (no GPU either).", no_tpu)
  return strategy


def num_hosts(strategy) -> int:
  """Hosts that run this job's input and devices: >1 on TPU pod slices."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return strategy.extended.num_hosts
  return 1


def check_shared_paths(hosts: int, paths: dict) -> None:
  """On a multi-host TPU slice every host reads the data and the workdir: a
  local path exists on one host at most. Raises ValueError naming the path."""
  if hosts <= 1:
    return
  for key, path in paths.items():
    if not path.startswith("gs://"):
      raise UserError(f"{key}={path!r} is a local path, but this TPU slice has {hosts} "
                      "hosts that each need it: use gs://BUCKET/PATH.")


def platform(strategy) -> str:
  """'tpu', 'gpu' or 'cpu': the kind of device the strategy's replicas run on."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return "tpu"
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # the default strategy has none: ops go to a GPU when there is one
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
  return "gpu" if any("GPU" in d.upper() for d in devices) else "cpu"


def cpu_has_bf16() -> bool:
  """True when the CPU has native bfloat16 arithmetic (AVX512_BF16 or AMX)."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = f.read()
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, strategy) -> str:
  """'auto' → mixed_bfloat16 on TPU and bf16 CPUs, mixed_float16 on GPU, else float32."""
  if precision != "auto":
    return precision
  kind = platform(strategy)
  if kind == "tpu" or (kind == "cpu" and cpu_has_bf16()):
    return "mixed_bfloat16"
  if kind == "gpu":
    return "mixed_float16"
  return "float32"
