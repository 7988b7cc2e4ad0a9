"""Cloud TPU generations: slice sizes, peak FLOPs, and which backend runs on which
runtime image. The one table the doctor, the launcher and the README read.

Facts (2026) and where they come from:
- Peak bf16 TFLOP/s per chip: Cloud TPU's system architecture pages (v2 45, v3
  123, v4 275, v5e 197, v5p 459, v6e 918) and its TPU7x page (2307).
- HBM per chip, GiB (the same pages): v2 16, v3 32, v4 32, v5e 16, v5p 95, v6e 32,
  TPU7x 192; a device gets its chip's share (v2/v3 and TPU7x: two per chip).
- TensorFlow images: Cloud TPU's supported-versions page. TF TPU images stop at
  2.19 (tensorflow-tpu 2.20 on PyPI is the last TPU build); v6e has one,
  tpu-vm-tf-2.18.0-pjrt-v5e-and-v6, and no TF job in Google's own TF-on-TPU
  tests; the TPU7x page: "You can use the JAX framework on TPU7x. TensorFlow is
  not supported."
- JAX images: the runtimes Cloud TPU's JAX quickstarts use (v2-alpha-tpuv6e,
  v2-alpha-tpuv5, v2-alpha-tpuv5-lite, tpu-ubuntu2204-base), then
  `pip install "jax[tpu]"`. TPU7x is offered through GKE only (its page).

Runs here without TensorFlow or JAX: `python3 -m tpu_trainer.tpus --accelerator=v6e-8
--backend=jax` prints the hosts and the runtime image (scripts/launch_tpu.sh asks it).
"""
import dataclasses
import math
import re
import sys

from tpu_trainer.errors import UserError

# The newest TF TPU image whose TensorFlow CI tests (scripts/env.sh, oldest stack).
TF_RUNTIME = "tpu-vm-tf-2.16.1-pjrt"
TF_POD_RUNTIME = "tpu-vm-tf-2.16.1-pod-pjrt"


@dataclasses.dataclass(frozen=True)
class Generation:
  name: str
  peak_bf16_tflops: float
  size_counts: str        # what the N of NAME-N counts: "cores" (2 per chip) or "chips"
  chips_per_host: int     # of a multi-host slice
  tensorflow: str         # "supported" | "experimental" | "none"
  tensorflow_runtime: str  # "" where TensorFlow has no image
  jax_runtime: str        # "" where TPU VMs are not offered (GKE only)
  hbm_gib_per_chip: float
  devices_per_chip: int = 1  # what a framework sees per chip (megacore: one)
  # GKE: the node label cloud.google.com/gke-tpu-accelerator ("" where GKE has
  # no such node pools), the machine type's stem (-1t: one chip, -4t: four), and
  # the topology's dimensions (2: a torus of chips AxB; 3: AxBxC).
  gke_accelerator: str = ""
  gke_machine: str = ""
  gke_dimensions: int = 2
  # GKE: node pools placed by a workload policy (a Compute Engine resource policy
  # of type HIGH_THROUGHPUT), whose name GKE puts on every node as the label
  # cloud.google.com/placement-policy-name (xpk: TPU7x, every topology).
  gke_workload_policy: bool = False

  @property
  def hbm_bytes_per_device(self) -> float:
    return self.hbm_gib_per_chip * 2**30 / self.devices_per_chip


GENERATIONS = {g.name: g for g in (
    Generation("v2", 45, "cores", 4, "supported", TF_RUNTIME, "tpu-ubuntu2204-base", 16, 2),
    Generation("v3", 123, "cores", 4, "supported", TF_RUNTIME, "tpu-ubuntu2204-base", 32, 2),
    Generation("v4", 275, "cores", 4, "supported", TF_RUNTIME, "tpu-ubuntu2204-base", 32,
               gke_accelerator="tpu-v4-podslice", gke_machine="ct4p-hightpu",
               gke_dimensions=3),
    Generation("v5litepod", 197, "chips", 4, "supported", TF_RUNTIME, "v2-alpha-tpuv5-lite",
               16, gke_accelerator="tpu-v5-lite-podslice", gke_machine="ct5lp-hightpu"),
    Generation("v5p", 459, "cores", 4, "supported", TF_RUNTIME, "v2-alpha-tpuv5", 95,
               gke_accelerator="tpu-v5p-slice", gke_machine="ct5p-hightpu", gke_dimensions=3),
    Generation("v6e", 918, "chips", 4, "experimental", "tpu-vm-tf-2.18.0-pjrt-v5e-and-v6",
               "v2-alpha-tpuv6e", 32, gke_accelerator="tpu-v6e-slice",
               gke_machine="ct6e-standard"),
    # Two TensorCores per chip, seen as two devices ("dual-chiplet").
    Generation("tpu7x", 2307, "cores", 4, "none", "", "", 192, 2, gke_accelerator="tpu7x",
               gke_machine="tpu7x-standard", gke_dimensions=3, gke_workload_policy=True),
)}
ALIASES = {"v5e": "v5litepod"}  # GKE's and xpk's name for v5litepod


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator: str
  hosts: int
  replicas: int  # devices a framework sees: TensorCores, or chips with megacore
  chips: int
  generation: Generation


def parse_accelerator(accelerator: str) -> Slice:
  """v2-8 / v3-32 (cores), v4-8 / v5p-16 / tpu7x-8 (TensorCores, 2 per chip),
  v5litepod-8 / v6e-16 (chips)."""
  match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator)
  name = match and ALIASES.get(match.group(1), match.group(1))
  if not match or name not in GENERATIONS:
    raise UserError(f"--accelerator={accelerator!r}: expected TYPE-SIZE with TYPE one of "
                    f"{', '.join([*GENERATIONS, *ALIASES])}, e.g. v4-8, v3-32, v6e-16.")
  generation, size = GENERATIONS[name], int(match.group(2))
  chips = size // 2 if generation.size_counts == "cores" else size
  chips = max(chips, 1)
  if generation.name in ("v2", "v3"):  # 4 chips (8 cores) a host
    hosts = math.ceil(size / 8)
  elif generation.size_counts == "chips":  # a host holds 8 chips up to v5e-8 / v6e-8
    hosts = 1 if size <= 8 else math.ceil(size / generation.chips_per_host)
  else:
    hosts = math.ceil(chips / generation.chips_per_host)
  return Slice(accelerator, hosts, chips * generation.devices_per_chip, chips, generation)


@dataclasses.dataclass(frozen=True)
class GkeSlice:
  """A slice as GKE schedules it: `vms` nodes of `chips_per_vm` chips each."""
  accelerator: str  # node label cloud.google.com/gke-tpu-accelerator
  topology: str     # node label cloud.google.com/gke-tpu-topology, e.g. 2x4, 2x2x2
  machine_type: str
  vms: int
  chips_per_vm: int
  # The workload policy its node pool is placed by ("" for generations without):
  # xpk's name for it, DEVICE-TOPOLOGY-placement-policy (tpu7x-8-2x2x1-...).
  placement_policy: str = ""


def topology(chips: int, dimensions: int) -> str:
  """The torus GKE names for `chips` (1, or a power of two from 4): the smallest
  side doubled, the last of equals first (2x4, 4x4, 2x2x1, 2x2x4, 2x4x4, 4x4x4)."""
  sides = [1] * dimensions if chips == 1 else [2, 2] + [1] * (dimensions - 2)
  while math.prod(sides) < chips:
    smallest = min(sides)
    sides[max(i for i, side in enumerate(sides) if side == smallest)] *= 2
  return "x".join(map(str, sides))


def gke_slice(tpu_slice: Slice) -> GkeSlice:
  """GKE's node pool for a slice (xpk's system characteristics): 4 chips a VM,
  one VM of one chip for a single chip. UserError where GKE has none."""
  generation, chips = tpu_slice.generation, tpu_slice.chips
  if not generation.gke_accelerator:
    raise UserError(f"GKE has no {generation.name} node pools: use --platform=tpu-vm, or "
                    f"one of {', '.join(g.name for g in GENERATIONS.values() if g.gke_accelerator)}.")
  if chips != 1 and (chips < 4 or chips & (chips - 1)):
    raise UserError(f"--accelerator={tpu_slice.accelerator} is {chips} chips: GKE's TPU "
                    "slices are 1 chip or a power of two from 4 (e.g. "
                    f"{generation.name}-{4 * (2 if generation.size_counts == 'cores' else 1)}).")
  per_vm = min(chips, 4)
  torus = topology(chips, generation.gke_dimensions)
  policy = (f"{generation.name}-{chips * generation.devices_per_chip}-{torus}-placement-policy"
            if generation.gke_workload_policy else "")
  return GkeSlice(generation.gke_accelerator, torus, f"{generation.gke_machine}-{per_vm}t",
                  chips // per_vm, per_vm, policy)


def runtime(tpu_slice: Slice, backend: str) -> str:
  """The TPU VM runtime image for a backend; ValueError saying what to do when none."""
  generation = tpu_slice.generation
  if backend == "jax":
    if not generation.jax_runtime:
      raise UserError(f"{generation.name} is offered through GKE only, not as TPU VMs "
                      "(Cloud TPU's TPU7x page): tpu-trainer-launch --platform=gke "
                      f"--cluster=CLUSTER --accelerator={tpu_slice.accelerator} starts it "
                      "there (README, Run on GKE).")
    return generation.jax_runtime
  if generation.tensorflow == "none":
    raise UserError(f"TensorFlow does not run on {generation.name} (Cloud TPU: \"TensorFlow "
                    "is not supported\"): use --backend=jax.")
  if generation.tensorflow_runtime == TF_RUNTIME and tpu_slice.hosts > 1:
    return TF_POD_RUNTIME
  return generation.tensorflow_runtime


def support(generation: Generation) -> str:
  """The support table's row for a generation, in words."""
  tf = {"supported": f"TensorFlow: {generation.tensorflow_runtime} (pod: {TF_POD_RUNTIME})",
        "experimental": f"TensorFlow: experimental ({generation.tensorflow_runtime}; no TF "
                        "job in Google's TF-on-TPU tests), prefer --config.backend=jax",
        "none": "TensorFlow: not supported"}[generation.tensorflow]
  jax = (f"JAX: {generation.jax_runtime} + jax[tpu]" if generation.jax_runtime
         else "JAX: through GKE only")
  return f"{tf}; {jax}"


def main(argv: list[str]) -> int:
  """--accelerator=A --backend=B: prints 'HOSTS RUNTIME', or one error line (exit 2)."""
  args = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
  try:
    tpu_slice = parse_accelerator(args.get("accelerator", ""))
    print(tpu_slice.hosts, runtime(tpu_slice, args.get("backend", "tensorflow")))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
