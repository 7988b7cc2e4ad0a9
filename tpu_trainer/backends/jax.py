"""The JAX runner: Keras's JAX backend over every device of every host, for TPU
generations without TensorFlow (TPU7x) or with little of it (v6e).

The data path is the TensorFlow one: our tf.data pipeline, one per host (tf.data
on the host CPU), whose per-host batches become global arrays over the mesh of
all devices (`jax.make_array_from_process_local_data`). The variables are
replicated by `keras.distribution.DataParallel`, so XLA's SPMD partitioner
turns the jitted step's gradient into one all-reduce. One jitted call runs a
whole execution (`jax.lax.fori_loop` over `steps_per_execution` batches sent
to the devices as one uint8 array) and returns the sums the controller reads;
nothing in it waits for the host. Several hosts: `jax.distributed` from the
TPU environment, or from TF_CONFIG (worker 0's address is the coordinator),
so one launch recipe serves both backends.
"""
import contextlib
import functools
import io
import json
import os
import re
import sys
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import keras
import numpy as np
import tensorflow as tf

from tpu_trainer import controller
from tpu_trainer import export as export_lib
from tpu_trainer import storage
from tpu_trainer import strategy as strategy_lib
from tpu_trainer.data import pipeline
from tpu_trainer.data import position
from tpu_trainer.errors import OtherVariables
from tpu_trainer.errors import TryAgain
from tpu_trainer.errors import UserError


def cluster_from_tf_config(tf_config: str) -> tuple[str, int, int]:
  """(comma-separated addresses, process count, this process's id) from TF_CONFIG:
  the chief (if any) then the workers, in order; the first is the coordinator."""
  try:
    spec = json.loads(tf_config)
    cluster, task = spec["cluster"], spec["task"]
    order = [(job, i) for job in ("chief", "worker") for i in range(len(cluster.get(job, [])))]
    addresses = [cluster[job][i] for job, i in order]
    process_id = order.index((task["type"], int(task.get("index", 0))))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise UserError(f"TF_CONFIG={tf_config!r} is not a cluster description with this "
                    f"task in it ({type(e).__name__}: {e}): see the README's multi-worker "
                    "section.") from None
  return ",".join(addresses), len(addresses), process_id


GKE_COORDINATOR_PORT = "8482"  # JAX's own for a TPU slice (jax/_src/clusters)


def cluster_from_gke(env) -> tuple[str, int, int] | None:
  """(coordinator address, process count, this process's id) from what GKE gives
  a TPU pod (TPU_WORKER_HOSTNAMES, TPU_WORKER_ID; MEGASCALE_* across slices),
  as JAX reads them on a TPU; None outside GKE. JAX_COORDINATOR_PORT overrides
  the port."""
  hostnames = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  if not hostnames:
    return None
  try:
    workers = hostnames.split(",")
    slices = int(env.get("MEGASCALE_NUM_SLICES") or 1)
    index = int(env["TPU_WORKER_ID"]) + int(env.get("MEGASCALE_SLICE_ID") or 0) * len(workers)
  except (KeyError, ValueError) as e:
    raise UserError(f"TPU_WORKER_HOSTNAMES={hostnames!r} is set but GKE's TPU_WORKER_ID / "
                    f"MEGASCALE_* are not numbers ({type(e).__name__}: {e}).") from None
  host = (env.get("MEGASCALE_COORDINATOR_ADDRESS") or workers[0]).split(":")[0]
  return f"{host}:{env.get('JAX_COORDINATOR_PORT', GKE_COORDINATOR_PORT)}", \
      len(workers) * slices, index


def _join(timeout_s: float, coordinator=None, count=None, index=None) -> None:
  """jax.distributed.initialize, bounded by our own line. JAX ends a process
  with a C++ abort and its stack when the others have not all joined by its
  initialization timeout, or when one stops sending heartbeats (a lost
  worker): both set past timeout_s, so that this timer, and the step watchdog
  (watchdog.StepWatchdog, the same limit), speak first."""
  where = f" at {coordinator}" if coordinator else ""
  logging.info("Joining the other processes of this job%s (waiting up to %.0f s for all "
               "of them to start: config.storage_timeout_secs).", where, timeout_s)

  def not_joined():
    print(f"error: not every process of this job joined the coordinator{where} in "
          f"{timeout_s:.0f} s (process {index} of {count}): start every worker with the same "
          "command, the coordinator (worker 0) included, or raise "
          "config.storage_timeout_secs.", file=sys.stderr, flush=True)
    os._exit(TryAgain.exit_status)  # pylint: disable=protected-access

  timer = threading.Timer(timeout_s, not_joined)
  timer.daemon = True
  timer.start()
  try:
    # What keras.distribution.initialize does, with the timeouts; the seed is
    # set by training.build, on every process alike.
    jax.distributed.initialize(coordinator, count, index,
                               initialization_timeout=int(timeout_s) + 30,
                               heartbeat_timeout_seconds=int(1.5 * timeout_s) + 10)
  finally:
    timer.cancel()


def join_processes(kind: str, timeout_s: float) -> str:
  """Starts jax.distributed when the job has several processes; says how."""
  if jax.distributed.is_initialized():
    return "already joined"
  if kind == "multiworker":
    if not os.environ.get("TF_CONFIG"):
      raise UserError("strategy=multiworker needs the TF_CONFIG environment variable "
                      "(cluster and task of this worker).")
    addresses, count, index = cluster_from_tf_config(os.environ["TF_CONFIG"])
    # CPU collectives between processes (a GPU or TPU job has its own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _join(timeout_s, addresses.split(",")[0], count, index)
    return f"process {index} of {count}, coordinator {addresses.split(',')[0]} (TF_CONFIG)"
  gke = cluster_from_gke(os.environ) if kind in ("tpu", "auto") else None
  if gke and gke[1] > 1:
    coordinator, count, index = gke
    # For CPU devices only (pods simulated as processes); a TPU has its own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _join(timeout_s, coordinator, count, index)
    return f"process {index} of {count}, coordinator {coordinator} (GKE)"
  if kind == "tpu" or (kind == "auto" and strategy_lib.may_have_local_tpu()):
    try:  # a Cloud TPU VM describes its slice itself
      _join(timeout_s)
      return f"process {jax.process_index()} of {jax.process_count()} (Cloud TPU)"
    except (ValueError, RuntimeError) as e:
      if kind == "tpu":
        raise UserError(f"strategy=tpu but JAX found no TPU slice ({e}).") from None
      return f"one process ({str(e).splitlines()[0][:120]})"
  return "one process"


def local_value(array) -> np.ndarray:
  """A replicated global array's value, read from this host's copy (a
  multi-host array is not addressable as a whole)."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    array = array.addressable_data(0)
  return np.asarray(array)


def wait_for_every_process(name: str) -> None:
  """A barrier: a process that exits while another still works ends the other
  (the coordination service takes it for a lost peer)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Checkpoints:
  """workdir/checkpoints/STEP/: the model's and the optimizer's variables (the
  step is the optimizer's) and the input's position, written by orbax-checkpoint:
  every process its own shards of them, in the background (training goes on;
  the next save and close() wait for it), finalized atomically (a save killed
  midway is never the one restored), the newest `keep` kept. Restored onto this
  run's devices, whatever the process count that wrote them. Checkpoints of
  tpu_trainer before Orbax (ckpt-STEP.npz, written whole by the chief) are
  restored once; Orbax's from there on, and close() removes the older ones."""

  NPZ = re.compile(r"ckpt-(\d+)\.npz")

  def __init__(self, variables: list, workdir: str, chief: bool, keep: int, input_position):
    """input_position: fn() -> the input's position (position.py) to save."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (the JAX extra)
    self._ocp = ocp
    self.directory = storage.join(workdir, "checkpoints")
    self._variables, self._chief = variables, chief
    self._input_position_now = input_position
    # Orbax takes absolute paths only (a relative --workdir was "a bug to report").
    where = self.directory if storage.is_gcs(self.directory) else os.path.abspath(self.directory)
    self._manager = ocp.CheckpointManager(where, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True))
    self._saving = None  # the checkpoint being written, until known written
    self.written = None  # the newest checkpoint known written whole
    self.restored = None  # the checkpoint restored
    self.saved_input_position = None  # its input position; None if it has none

  def _npz_steps(self) -> list[int]:
    if not storage.is_gcs(self.directory) and not os.path.isdir(self.directory):
      return []
    names = storage.list_sizes(self.directory)
    return sorted(int(m.group(1)) for m in map(self.NPZ.fullmatch, names) if m)

  def _npz_path(self, step: int) -> str:
    return storage.join(self.directory, f"ckpt-{step}.npz")

  def _path(self, step: int) -> str:
    return storage.join(self.directory, str(step))

  def latest(self) -> str | None:
    step = self._manager.latest_step()
    if step is not None:
      return self._path(step)
    npz = self._npz_steps()
    return self._npz_path(npz[-1]) if npz else None

  def _names(self) -> list[str]:
    return [v.path for v in self._variables]

  def restore(self) -> str | None:
    """The checkpoint restored, or None."""
    step = self._manager.latest_step()
    if step is None:
      return self._restore_npz()
    ocp = self._ocp
    abstract = [jax.ShapeDtypeStruct(v.value.shape, v.value.dtype, sharding=v.value.sharding)
                for v in self._variables]
    try:
      saved = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except ValueError as e:  # another tree of variables, or other shapes
      raise OtherVariables(self._path(step)) from e
    self._check_names(saved.meta["names"], self._path(step))
    for variable, value in zip(self._variables, saved.state):
      variable.assign(value)
    self.saved_input_position = np.asarray(saved.meta["input_position"], np.int64)
    self.restored = self._path(step)
    logging.info("Resumed from %s.", self.restored)
    return self.restored

  def _check_names(self, names: list[str], path: str) -> None:
    # By count, not path: a model built twice in one process (a notebook) numbers
    # its layers anew (dense_1); shapes are checked by the restore itself.
    if len(names) != len(self._variables):
      raise OtherVariables(path)

  def _restore_npz(self) -> str | None:
    steps = self._npz_steps()
    if not steps:
      return None
    latest = self._npz_path(steps[-1])
    with storage.open_read(latest) as f:
      saved = np.load(io.BytesIO(f.read()))
    self._check_names(saved["names"], latest)
    for i, variable in enumerate(self._variables):
      variable.assign(saved[f"v{i}"])
    # The oldest have no input position either.
    self.saved_input_position = (saved["input_position"] if "input_position" in saved
                                 else None)
    self.restored = latest
    logging.info("Resumed from %s (a checkpoint of tpu_trainer before Orbax: the next ones "
                 "are Orbax's, in %s/STEP/).", latest, self.directory)
    return latest

  def save(self, step: int) -> str:
    """Starts writing checkpoint `step` (after the last one's writes end) and
    returns once its values are copied off the devices."""
    ocp = self._ocp
    self._manager.save(step, args=ocp.args.Composite(  # after the last one ended
        state=ocp.args.StandardSave([v.value for v in self._variables]),
        meta=ocp.args.JsonSave({"names": self._names(),
                                "input_position": self._input_position_now().tolist()})))
    self.written, self._saving = self._saving or self.written, self._path(step)
    return self._saving

  def wait(self) -> None:
    """Until the last save is written and finalized."""
    self._manager.wait_until_finished()
    self.written, self._saving = self._saving or self.written, None

  def close(self) -> None:
    self._manager.close()  # waits for the last save too
    latest = self._manager.latest_step()
    if self._chief and latest is not None:
      for old in self._npz_steps():
        if old <= latest:
          storage.delete(self._npz_path(old))


def step_fn(model, optimizer, global_batch: int, label_smoothing: float, num_classes: int,
            from_logits: bool = False):
  """fn(state, images[batch...], labels) -> (state, [loss sum, correct, examples,
  not finite, exploded]): one optimizer step. state: (trainable, non-trainable, optimizer)
  variable values, as Keras's stateless API takes them. The model gets float32
  0-255 images and returns probabilities, or logits (from_logits)."""
  loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing,
                                                 from_logits=from_logits, reduction=None)
  limit = controller.divergence_limit(num_classes)

  def train_step(state, images, labels):
    trainable, non_trainable, optimizer_variables = state

    def loss_and_outputs(trainable, non_trainable):
      outputs, non_trainable, losses = model.stateless_call(
          trainable, non_trainable, images.astype(jnp.float32), training=True,
          return_losses=True)
      # float32 whatever the policy: the loss needs the range (low-precision logits).
      probabilities = outputs.astype(jnp.float32)
      per_example = loss_fn(jax.nn.one_hot(labels, num_classes), probabilities)
      loss = jnp.sum(per_example.astype(jnp.float32)) / global_batch
      if losses:
        loss += sum(losses)
      return optimizer.scale_loss(loss), (loss, per_example, probabilities, non_trainable)

    grads, (loss, per_example, probabilities, non_trainable) = jax.grad(
        loss_and_outputs, has_aux=True)(trainable, non_trainable)
    trainable, optimizer_variables = optimizer.stateless_apply(
        optimizer_variables, grads, trainable)
    correct = jnp.argmax(probabilities, -1) == labels
    mean_loss = jnp.mean(per_example.astype(jnp.float32))
    nonfinite = ~jnp.isfinite(loss)
    exploded = nonfinite | (mean_loss > limit)
    sums = jnp.stack([jnp.sum(per_example.astype(jnp.float32)),
                      jnp.sum(correct.astype(jnp.float32)),
                      jnp.float32(labels.shape[0]), nonfinite.astype(jnp.float32),
                      exploded.astype(jnp.float32)])
    return (trainable, non_trainable, optimizer_variables), sums

  return train_step


def agreed_fn(sums, host_flags):
  """([loss sum, correct, examples], [steps not finite, steps exploded, a host got
  SIGTERM, wants a line, wants a checkpoint]): host_flags max-reduced over every
  device."""
  return sums[:3], jnp.concatenate([sums[3:], jnp.max(host_flags, axis=0)])


def execution_fn(model, optimizer, global_batch: int, label_smoothing: float,
                 num_classes: int, from_logits: bool = False):
  """fn(state, images[steps_max, batch...], labels, steps, host_flags) -> (state,
  sums, agreed) (see agreed_fn): `steps` optimizer steps in one compiled call,
  a lax.fori_loop that compiles once whatever the count."""
  train_step = step_fn(model, optimizer, global_batch, label_smoothing, num_classes,
                       from_logits)

  def execution(state, images, labels, steps, host_flags):
    def body(i, carry):
      state, sums = carry
      state, step_sums = train_step(state, images[i], labels[i])
      return state, sums + step_sums

    state, sums = jax.lax.fori_loop(0, steps, body, (state, jnp.zeros(5, jnp.float32)))
    return (state,) + agreed_fn(sums, host_flags)

  return execution


class Runner:
  """Runs a run's executions on every JAX device of every host."""

  name = "jax"
  # A collective whose peer is gone (gloo: "Connection closed by peer").
  peer_errors = (jax.errors.JaxRuntimeError,)

  def __init__(self, config):
    joined = join_processes(config.strategy, config.storage_timeout_secs)
    if config.strategy in ("gpu", "cpu") and jax.default_backend() != config.strategy:
      raise UserError(f"strategy={config.strategy} but JAX runs on {jax.default_backend()}.")
    if config.cpu_devices > 1 and jax.default_backend() == "cpu":
      # XLA's in-process CPU all-reduce deadlocks on small machines (see the README).
      raise UserError("config.cpu_devices is for backend=tensorflow; with backend=jax, "
                      "run one process per device (strategy=multiworker with TF_CONFIG).")
    self.distribution = keras.distribution.DataParallel()
    keras.distribution.set_distribution(self.distribution)
    self.replicas = jax.device_count()
    # Hosts that each need the data and workdir paths (a TPU slice's: a local
    # path exists on one of them); processes on one machine share its disk.
    self.hosts = jax.process_count() if jax.default_backend() == "tpu" else 1
    self.chief = jax.process_index() == 0
    self.processes = jax.process_count()
    self.platform = jax.default_backend()
    self._host_loop = self.platform == "cpu"  # see _compile_execution
    self.description = f"DataParallel over {self.replicas} {self.platform} devices"
    logging.info("JAX backend: %s, %d process(es) [%s].", self.description, self.hosts,
                 joined)
    mesh = self.distribution.device_mesh.backend_mesh
    axis = self.distribution.batch_dim_name
    spec = jax.sharding.PartitionSpec
    self._by_batch = jax.sharding.NamedSharding(mesh, spec(axis))
    self._steps_by_batch = jax.sharding.NamedSharding(mesh, spec(None, axis))
    self._replicated = jax.sharding.NamedSharding(mesh, spec())
    self._identity = jax.jit(lambda tree: tree, out_shardings=self._replicated)

  def agree(self, values: np.ndarray) -> np.ndarray:
    """Per value (int64, one per key): whether every process of the job holds the same."""
    if jax.process_count() == 1:
      return np.ones(len(values), bool)
    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64)))
    gathered = gathered.reshape(jax.process_count(), -1)
    return (gathered == gathered[0]).all(axis=0)

  def precision(self, requested: str, model: str = "") -> tuple[str, str]:
    del model  # one rule for every model under JAX
    if requested != "auto":
      return requested, "as given (config.precision)"
    if self.platform == "tpu":
      return "mixed_bfloat16", "auto on TPU"
    if self.platform == "gpu":
      return "mixed_float16", "auto on GPU"
    return "float32", ("auto on the CPU under JAX: XLA's CPU backend runs bfloat16 slower "
                       "than float32")

  def scope(self):
    return self.distribution.scope()

  def _input_context(self) -> tf.distribute.InputContext:
    """One pipeline per host; its 'replica' batch is the host's share."""
    hosts = jax.process_count()
    return tf.distribute.InputContext(hosts, jax.process_index(), hosts)

  def made_in_scope(self, variable) -> bool:
    """Whether a Keras variable was created under this runner's distribution
    (replicated over every device; one made before it lives on one device)."""
    value = variable.value
    return not isinstance(value, jax.Array) or value.sharding.is_equivalent_to(
        self._replicated, value.ndim)

  def start(self, model, optimizer, schedule, plan: controller.Plan, dataset, input_config,
            seed: int, label_smoothing: float, from_logits: bool = False) -> None:
    """The jitted execution; the input starts at the first one."""
    self.model, self.optimizer, self.schedule = model, optimizer, schedule
    self._from_logits = from_logits
    self._state_variables = (model.trainable_variables, model.non_trainable_variables,
                             optimizer.variables)
    spe = plan.steps_per_execution

    self._position = position.Tracker(pipeline.layout(
        dataset, plan.batch_size, jax.process_count(), jax.process_count(), input_config,
        seed), dataset, input_config.train_split)

    def make_input(step):
      ds = pipeline.train_input_fn(dataset, plan.batch_size, input_config, seed,
                                   self._position.position, step)(self._input_context())
      return ds.batch(spe, drop_remainder=True).prefetch(1).as_numpy_iterator()

    self._input, self._iterator, self._total_steps = make_input, None, plan.total_steps
    self._checkpoints = None
    self._execute = self._compile_execution(plan.batch_size, label_smoothing,
                                            dataset.num_classes, from_logits)
    self._sums = None
    # The state as the execution returns it (jit outputs carry their mesh in their
    # type): otherwise the second execution compiles the step all over again.
    self._assign(self._placed(self._state()))

  def _placed(self, tree):
    """`tree` put where jit outputs are: replicated over the mesh, typed with it."""
    return self._identity(tree)

  def _assign(self, state) -> None:
    for variables, values in zip(self._state_variables, state):
      for variable, value in zip(variables, values):
        variable.assign(value)

  def _state(self):
    return jax.tree_util.tree_map(lambda v: v.value, self._state_variables)

  def _compile_execution(self, global_batch: int, label_smoothing: float, num_classes: int,
                         from_logits: bool):
    """On TPUs and GPUs one compiled call per execution (execution_fn). On a CPU,
    one compiled step that the host calls `steps` times without waiting: XLA's
    CPU backend runs a convolution inside a loop about 10x slower than outside
    one (the seed CNN; README: Speed), and unrolling the steps instead costs a
    compilation as long as the run."""
    # DataParallel replicates every variable: the state stays replicated.
    if not self._host_loop:
      return jax.jit(execution_fn(self.model, self.optimizer, global_batch, label_smoothing,
                                  num_classes, from_logits), donate_argnums=0,
                     out_shardings=self._replicated)
    step = jax.jit(step_fn(self.model, self.optimizer, global_batch, label_smoothing,
                           num_classes, from_logits), donate_argnums=0,
                   out_shardings=self._replicated)
    agreed = jax.jit(agreed_fn, out_shardings=self._replicated)

    def execution(state, images, labels, steps, host_flags):
      sums = self._placed(jnp.zeros(5, jnp.float32))
      for i in range(steps):
        state, step_sums = step(state, images[i], labels[i])
        sums = sums + step_sums
      return (state,) + agreed(sums, host_flags)

    return execution

  def _global(self, sharding, local: np.ndarray):
    return jax.make_array_from_process_local_data(sharding, local)

  def step(self) -> int:
    """The optimizer's step (reading it waits for the devices)."""
    return int(local_value(self.optimizer.iterations.value))

  def _device_input(self):
    # Named as TensorFlow's op is: xprof counts time in "IteratorGetNext" events as
    # the step waiting for input (its input-pipeline page and our profile summary).
    with jax.profiler.TraceAnnotation("IteratorGetNext"):
      images, labels = next(self._iterator)
    return (self._global(self._steps_by_batch, images),
            self._global(self._steps_by_batch, labels))

  def execute(self, steps: int, host_flags: list[bool]) -> controller.Agreed:
    if self._iterator is None:  # a resumed run reads on where its checkpoint's stopped
      self._step = self.step()
      self._position.resume_after(self._checkpoints, self._step)
      self._iterator = self._input(self._step)
      self._next_input = self._device_input()
    images, labels = self._next_input
    flags = np.tile(np.asarray(host_flags, np.float32), (jax.local_device_count(), 1))
    state, sums, agreed = self._execute(self._state(), images, labels, steps,
                                        self._global(self._by_batch, flags))
    self._step += steps
    # The next execution's input goes to the devices while this one runs (as
    # TensorFlow's distributed iterator prefetches to the devices).
    self._next_input = self._device_input() if self._step < self._total_steps else None
    # The variables hold the new state: checkpoints, evaluation and export read them.
    self._assign(state)
    self._sums = sums if self._sums is None else self._sums + sums
    agreed = local_value(agreed)
    return controller.Agreed(nonfinite=bool(agreed[0]), exploded_share=float(agreed[1]) / steps,
                             stop=bool(agreed[2]), line_due=bool(agreed[3]),
                             checkpoint_due=bool(agreed[4]))

  def train_totals(self) -> dict:
    """Loss and accuracy since the last call."""
    loss, correct, examples = local_value(self._sums) if self._sums is not None else (0, 0, 0)
    self._sums = None
    n = max(float(examples), 1.0)
    return {"loss": float(loss) / n, "accuracy": float(correct) / n,
            "examples": int(examples)}

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  def evaluator(self, dataset, split: str, batch_size: int, input_config):
    """fn() -> loss, accuracy and count over every example of `split` once."""
    dataset_fn, steps = pipeline.eval_input_fn(dataset, batch_size, jax.process_count(),
                                               split, input_config)
    iterator = dataset_fn(self._input_context()).as_numpy_iterator()
    model, num_classes, from_logits = self.model, dataset.num_classes, self._from_logits
    loss_fn = keras.losses.CategoricalCrossentropy(reduction=None)

    @functools.partial(jax.jit, out_shardings=self._replicated)
    def eval_step(trainable, non_trainable, sums, images, labels, weights):
      outputs, _ = model.stateless_call(trainable, non_trainable, images.astype(jnp.float32),
                                        training=False)
      probabilities = outputs.astype(jnp.float32)
      if from_logits:
        probabilities = jax.nn.softmax(probabilities)
      per_example = loss_fn(jax.nn.one_hot(labels, num_classes), probabilities)
      correct = (jnp.argmax(probabilities, -1) == labels).astype(jnp.float32)
      return sums + jnp.stack([jnp.sum(per_example * weights), jnp.sum(correct * weights),
                               jnp.sum(weights)])

    def evaluate() -> dict:
      trainable = [v.value for v in model.trainable_variables]
      non_trainable = [v.value for v in model.non_trainable_variables]
      sums = self._placed(jnp.zeros(3, jnp.float32))
      for _ in range(steps):
        images, labels, weights = (self._global(self._by_batch, x) for x in next(iterator))
        sums = eval_step(trainable, non_trainable, sums, images, labels, weights)
      loss, correct, examples = local_value(sums)
      n = max(float(examples), 1.0)
      return {"loss": float(loss) / n, "accuracy": float(correct) / n,
              "examples": int(round(float(examples)))}

    return evaluate

  def checkpoints(self, workdir: str, keep: int) -> Checkpoints:
    self._checkpoints = Checkpoints(self.model.variables + self.optimizer.variables, workdir,
                                    self.chief, keep, self._position.array)
    return self._checkpoints

  def prepare_profile(self) -> None:
    """Nothing: profiled executions are the same compiled ones."""

  def start_profile(self, logdir: str) -> None:
    jax.profiler.start_trace(logdir)  # plugins/profile/RUN/*.xplane.pb, as TensorFlow's

  def stop_profile(self) -> None:
    jax.profiler.stop_trace()

  def trace_step(self, step: int):
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def weights(self) -> list[np.ndarray]:
    return [local_value(v.value) for v in self.model.weights]

  @contextlib.contextmanager
  def export_scope(self):
    """The chief alone exports: the models it loads and traces there must live
    on its own devices, not on the whole job's (creating a variable on every
    host's devices is itself a collective, which the other hosts would not join)."""
    keras.distribution.set_distribution(None)
    try:
      yield
    finally:
      keras.distribution.set_distribution(self.distribution)

  def finish(self) -> None:
    """Every process waits for the chief's export."""
    wait_for_every_process("export")

  def save_serving_model(self, model, class_names: list[str], path: str,
                         from_logits: bool = False, image_shape=None) -> None:
    """The same signature as the TensorFlow backend's (export.save_serving_model):
    `image` float32 -> probabilities, class_id, class_name. The model's function is
    converted by Keras's export archive (jax2tf); the names are added in TF."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    image_shape = export_lib.serving_shape(model, image_shape)

    def probabilities(image):
      outputs = keras.ops.cast(model(image, training=False), "float32")
      return keras.ops.softmax(outputs) if from_logits else outputs

    model_fn = archive.add_endpoint(
        "probabilities", probabilities,
        input_signature=[keras.InputSpec(shape=image_shape, dtype="float32")])
    names = tf.constant(class_names)

    @tf.function(input_signature=[tf.TensorSpec(image_shape, tf.float32, name="image")],
                 autograph=False)
    def serve(image):
      probabilities = tf.cast(model_fn(image), tf.float32)
      class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
      return {"probabilities": probabilities, "class_id": class_id,
              "class_name": tf.gather(names, class_id)}

    serve.get_concrete_function()
    archive.add_endpoint("serving_default", serve)
    archive.write_out(path, verbose=False)
