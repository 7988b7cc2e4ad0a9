"""Memory: what a training step needs on one device (estimated from the model),
and what this host has. The doctor says it against a TPU generation's HBM;
training refuses, before the first step, a step that cannot fit here (an
allocation failing inside TensorFlow or XLA is an error naming no setting)."""
import dataclasses
import math
import os

import keras

# Optimizer slots per weight (float32): momentum for sgd, two moments for adam(w).
SLOTS = {"sgd": 1, "adam": 2, "adamw": 2}


def host_bytes() -> int:
  """This host's memory, in all."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_available_bytes() -> int:
  """What this host can still give (Linux's MemAvailable; else all of it)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return host_bytes()


def activation_values(model) -> int | None:
  """Values of every layer output for one example (through nested models): what
  the backward pass keeps. None for a subclassed model (no graph of layers)."""
  total = 0
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      inner = activation_values(layer)
      if inner is None:
        return None
      total += inner
      continue
    nodes = layer._inbound_nodes  # pylint: disable=protected-access
    if not nodes:  # a subclassed model's layers: called in Python, not a graph
      return None
    for node in nodes:
      total += sum(math.prod(d for d in t.shape[1:] if d) for t in node.output_tensors)
  return total


def gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """One device's share of a training step."""
  params: int
  state_bytes: int               # float32 weights, their gradients, the optimizer's slots
  activation_bytes: int | None   # every layer's output for the replica's batch; None: unknown
  per_replica: int

  @property
  def total(self) -> int:
    return self.state_bytes + (self.activation_bytes or 0)

  def describe(self) -> str:
    activations = (gib(self.activation_bytes) if self.activation_bytes is not None
                   else "unknown for a subclassed model")
    return (f"{self.params:,} parameters; ~{gib(self.total)} per device at "
            f"{self.per_replica} per replica (weights, gradients, optimizer: "
            f"{gib(self.state_bytes)}; activations: {activations})")


def step_memory(model, optimizer: str, precision: str, per_replica: int) -> StepMemory:
  """Estimated: each layer's output kept in the compute dtype for the backward
  pass (two bytes under mixed precision)."""
  params = model.count_params()
  values = activation_values(model)
  bytes_per_value = 2 if precision in ("auto", "mixed_bfloat16", "mixed_float16") else 4
  return StepMemory(params, params * 4 * (2 + SLOTS.get(optimizer, 2)),
                    None if values is None else values * per_replica * bytes_per_value,
                    per_replica)
