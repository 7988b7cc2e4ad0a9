"""The TensorFlow runner: tf.distribute strategies (TPUStrategy on TPU v2-v5p,
MirroredStrategy on GPUs and logical CPUs, MultiWorkerMirroredStrategy), the
compiled execution of loop.py, tf.train checkpoints and a SavedModel traced
from the model itself."""
import contextlib
import os
import re
import shutil
import tempfile

from absl import logging
import numpy as np
import tensorflow as tf

from tpu_trainer import controller
from tpu_trainer import export as export_lib
from tpu_trainer import loop
from tpu_trainer import metrics
from tpu_trainer import storage
from tpu_trainer import strategy as strategy_lib
from tpu_trainer.data import pipeline
from tpu_trainer.data import position
from tpu_trainer.errors import OtherVariables
from tpu_trainer.evaluation import Evaluator


def is_chief(strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


class Checkpoints:
  """The chief's checkpoints, in workdir/checkpoints; every worker resumes from them.

  Written asynchronously: save() copies the variables to host memory and returns;
  a thread of TensorFlow's writes them (ckpt-N_temp, renamed when whole) while
  training goes on; the next save, wait() and close() wait for it. What is
  checkpointed is the list of the model's then the optimizer's variables (the
  tf.Variables under Keras's), their paths beside them, and the input's position:
  TensorFlow's async checkpoint fails on the Keras objects themselves (Keras 3's
  _copy_trackable_to_cpu creates a variable inside TensorFlow's tf.function: "only
  supports singleton tf.Variables", TF 2.21, Keras 3.15). Matched by place, not
  path: a model built twice in one process numbers its layers anew (dense_1).
  Checkpoints of the model and optimizer objects (tpu_trainer before this) are
  still restored.

  Other workers must save too (a save runs collective ops), into a temp dir of
  their own that close() removes: they leave nothing in the workdir.
  """

  INPUT_POSITION = "input_position/.ATTRIBUTES/VARIABLE_VALUE"
  VARIABLES = "variables/"  # the checkpoint keys of this class's variables start so

  def __init__(self, model, optimizer, workdir: str, chief: bool, keep: int,
               input_position):
    """input_position: fn() -> the input's position (position.py) to save."""
    self.directory = storage.join(workdir, "checkpoints")
    self._chief = chief
    self._own = self.directory if chief else tempfile.mkdtemp(prefix="tpu_trainer_worker_ckpt_")
    self._input_position_now = input_position
    self._input_position = tf.Variable(tf.zeros([position.Position.SIZE], tf.int64),
                                       trainable=False)
    self._objects = {"model": model, "optimizer": optimizer}
    variables = model.variables + optimizer.variables
    self._checkpoint = tf.train.Checkpoint(
        variables=[v.value for v in variables], input_position=self._input_position,
        variable_paths=tf.Variable([v.path for v in variables], trainable=False))
    self._manager = tf.train.CheckpointManager(self._checkpoint, self._own, max_to_keep=keep)
    self._options = tf.train.CheckpointOptions(enable_async=True)
    self._saving = None  # the step of the checkpoint being written, until known written
    self.written = None  # the newest checkpoint known written whole
    self.restored = None  # the checkpoint restored
    self.saved_input_position = None  # its input position; None if it has none

  def latest(self) -> str | None:
    return tf.train.latest_checkpoint(self.directory)

  def _path(self, step: int, directory: str | None = None) -> str:
    return storage.join(directory or self.directory, f"ckpt-{step}")

  def restore(self) -> str | None:
    """The checkpoint restored, or None."""
    if self._chief:
      self._remove_half_written()
    latest = self.latest()
    if not latest:
      return None
    keys = tf.train.load_checkpoint(latest).get_variable_to_shape_map()
    has_position = self.INPUT_POSITION in keys
    listed = sum(key.startswith(self.VARIABLES) for key in keys)
    if listed:
      checkpoint = self._checkpoint
      if listed != len(checkpoint.variables):
        raise OtherVariables(latest)
    else:  # the model and optimizer objects; the oldest without an input position
      checkpoint = tf.train.Checkpoint(**self._objects, **(
          {"input_position": self._input_position} if has_position else {}))
    try:
      checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
      raise OtherVariables(latest) from e
    self.saved_input_position = self._input_position.numpy() if has_position else None
    self.restored = latest
    logging.info("Resumed from %s.", latest)
    return latest

  def save(self, step: int) -> str:
    """Starts writing checkpoint `step` (after the last one's writes end) and
    returns once its values are copied off the devices."""
    self._input_position.assign(self._input_position_now())
    self._manager.save(checkpoint_number=step, options=self._options)  # the last one ended
    if self._saving is not None:  # (its error raised above)
      self.written = self._path(self._saving)
    self._saving = step
    return self._path(step)

  def wait(self) -> None:
    """Until the last save is written, its error raised here if it failed."""
    if self._saving is None:
      return
    self._manager.sync()
    step, self._saving = self._saving, None
    # sync() does not raise what the writing thread caught (the next save would).
    helper = getattr(self._checkpoint, "_async_checkpointer_impl", None)
    if helper is not None:
      helper._check_async_thread_error()  # pylint: disable=protected-access
    if not tf.io.gfile.exists(self._path(step, self._own) + ".index"):
      raise OSError(f"Checkpoint {self._path(step, self._own)} was not written.")
    self.written = self._path(step)

  # What TensorFlow writes while saving (ckpt-N_temp/, then renamed): a killed
  # run's leftovers. Only these, named exactly; a link is removed, not followed.
  HALF_WRITTEN = re.compile(r"ckpt-\d+_temp")

  def _remove_half_written(self) -> None:
    if not tf.io.gfile.isdir(self.directory):
      return
    for name in tf.io.gfile.listdir(self.directory):
      name = name.rstrip("/")
      if not self.HALF_WRITTEN.fullmatch(name):
        continue
      path = storage.join(self.directory, name)
      if not storage.is_gcs(path) and os.path.islink(path):
        os.remove(path)
      elif tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)

  def close(self) -> None:
    self.wait()
    if not self._chief:
      shutil.rmtree(self._own, ignore_errors=True)


# Models that bfloat16 makes slower on a CPU with bf16 arithmetic, and by how much
# (measured on this project's 2-core AVX512_BF16 machine, digits, batch 64). The
# others' compute limits, bf16 / float32 alternately (`tpu-trainer-benchmark
# precision`): cnn 1.8-1.9x, resnet50 1.3-1.5x, mlp 1.0-1.35x, conv_bn 1.0-1.14x.
CPU_BF16_SLOWER = {
    "mobilenet_v2": "its depthwise convolutions ran 1.8x slower in bfloat16 (285 vs 501 "
                    "examples/s)",
}


class Runner:
  """Runs a run's executions on a tf.distribute strategy."""

  name = "tensorflow"
  # A lost peer's errors besides TensorFlow's own (UnavailableError): none.
  peer_errors = ()

  def __init__(self, config, strategy=None):
    self.strategy = strategy or strategy_lib.get_strategy(
        config.strategy, config.tpu, config.cpu_devices, config.tpu_zone, config.tpu_project)
    self.replicas = self.strategy.num_replicas_in_sync
    self.hosts = strategy_lib.num_hosts(self.strategy)
    self.chief = is_chief(self.strategy)
    # Programs in the job (MultiWorkerMirroredStrategy's workers; one client drives a TPU).
    self.processes = (pipeline.num_input_pipelines(self.strategy)
                      if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
                      else 1)
    self.platform = strategy_lib.platform(self.strategy)
    self.description = type(self.strategy).__name__
    self._profiling = False  # while a profile runs (start_profile .. stop_profile)

  def agree(self, values: np.ndarray) -> np.ndarray:
    """Per value (int64, one per key): whether every process of the job holds the same."""
    if self.processes == 1:
      return np.ones(len(values), bool)
    per_replica = self.strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant(values, tf.int64))
    gathered = self.strategy.gather(per_replica, axis=0).numpy().reshape(-1, len(values))
    return (gathered == gathered[0]).all(axis=0)

  def precision(self, requested: str, model: str = "") -> tuple[str, str]:
    resolved = strategy_lib.resolve_precision(requested, self.strategy)
    if requested != "auto":
      return resolved, "as given (config.precision)"
    platform = strategy_lib.platform(self.strategy)
    if platform == "cpu" and resolved == "mixed_bfloat16":
      if model in CPU_BF16_SLOWER:
        return "float32", f"auto on a bf16 CPU, float32 for {model}: {CPU_BF16_SLOWER[model]}"
      # Small models and batches can go either way (conv_bn at batch 32 on 8x8
      # digits: bf16 0.88x float32; at batch 1024 on 28x28: 1.0-1.14x).
      return resolved, ("auto on a bf16 CPU, as a TPU computes; on a CPU bf16 can be slower "
                        "for a model and batch: `tpu-trainer-benchmark precision` times both")
    return resolved, f"auto on {platform}"

  def scope(self):
    return self.strategy.scope()

  def made_in_scope(self, variable) -> bool:
    """Whether a Keras variable was created under this runner's scope."""
    return self.strategy.extended.variable_created_in_scope(variable.value)

  def start(self, model, optimizer, schedule, plan: controller.Plan, dataset, input_config,
            seed: int, label_smoothing: float, from_logits: bool = False) -> None:
    """The compiled execution; the input starts at the first one."""
    self.model, self.optimizer, self.schedule = model, optimizer, schedule
    self._from_logits = from_logits
    self._totals = metrics.Totals(self.strategy, "train")
    self._signals = loop.Signals(self.strategy)
    step_fn = loop.train_step(model, optimizer, plan.batch_size, label_smoothing,
                              dataset.num_classes, self._totals, self._signals, from_logits)
    self._run = loop.compile_steps(self.strategy, step_fn, self._signals)
    # While profiling: the same steps without a while loop (see compile_steps).
    self._run_unrolled = loop.compile_steps(self.strategy, step_fn, self._signals,
                                            unrolled=True)
    self._position = position.Tracker(pipeline.layout(
        dataset, plan.batch_size, pipeline.num_input_pipelines(self.strategy), self.replicas,
        input_config, seed), dataset, input_config.train_split)
    self._input = lambda step: iter(self.strategy.distribute_datasets_from_function(
        pipeline.train_input_fn(dataset, plan.batch_size, input_config, seed,
                                self._position.position, step)))
    self._iterator = self._checkpoints = None

  def step(self) -> int:
    """The optimizer's step (reading it waits for the devices)."""
    return int(self.optimizer.iterations.numpy())

  def execute(self, steps: int, host_flags: list[bool]) -> controller.Agreed:
    if self._iterator is None:  # a resumed run reads on where its checkpoint's stopped
      step = self.step()
      self._position.resume_after(self._checkpoints, step)
      self._iterator = self._input(step)
    if self._profiling:
      self._run_unrolled(self._iterator, steps, tf.constant(host_flags, tf.float32))
    else:
      self._run(self._iterator, tf.constant(steps), tf.constant(host_flags, tf.float32))
    return self._signals.read(steps)

  def train_totals(self) -> dict:
    """Loss and accuracy since the last call."""
    values = self._totals.result()
    self._totals.reset()
    return values

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  def evaluator(self, dataset, split: str, batch_size: int, input_config):
    def predict(images):
      outputs = self.model(images, training=False)
      return tf.nn.softmax(tf.cast(outputs, tf.float32)) if self._from_logits else outputs

    return Evaluator(self.strategy, predict, dataset, split, batch_size, input_config,
                     profiling=lambda: self._profiling)

  def checkpoints(self, workdir: str, keep: int) -> Checkpoints:
    self._checkpoints = Checkpoints(self.model, self.optimizer, workdir, self.chief, keep,
                                    self._position.array)
    return self._checkpoints

  def prepare_profile(self) -> None:
    """From the next execution on, the unrolled steps (loop.compile_steps): the
    controller asks one execution before the profile, so that their first run
    (tracing, graph optimisation: a second or more) is not in it."""
    self._profiling = True

  def start_profile(self, logdir: str) -> None:
    self._profiling = True
    tf.profiler.experimental.start(logdir)

  def stop_profile(self) -> None:
    self._profiling = False
    tf.profiler.experimental.stop()

  def trace_step(self, step: int):
    return tf.profiler.experimental.Trace("train", step_num=step, _r=1)

  def weights(self) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in self.model.weights]

  def export_scope(self):
    return contextlib.nullcontext()

  def finish(self) -> None:
    """Nothing to wait for: a worker's exit does not end the others."""

  def save_serving_model(self, model, class_names: list[str], path: str,
                         from_logits: bool = False, image_shape=None) -> None:
    export_lib.save_serving_model(model, class_names, path, from_logits, image_shape)
