"""Training, top to bottom: setup -> loop -> export.

run() checks everything a user can get wrong before touching a device or a
file, resolves the batch size and learning rate, takes the workdir, builds the
model and resumes it, then runs the controller loop: one compiled execution of
`steps_per_execution` steps (loop.py) at a time, and between executions the
summaries, evaluations, checkpoints and the SIGTERM check. Last, the final
evaluation, the export (export.py) and metrics.json.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
import time

from absl import logging
import keras
import ml_collections
import tensorflow as tf

from tpu_trainer import config as config_lib
from tpu_trainer import export as export_lib
from tpu_trainer import lock as lock_lib
from tpu_trainer import loop
from tpu_trainer import metrics
from tpu_trainer import optimizer as optimizer_lib
from tpu_trainer import scaling
from tpu_trainer import storage
from tpu_trainer import strategy as strategy_lib
from tpu_trainer import versions
from tpu_trainer.data import manifest
from tpu_trainer.data import pipeline
from tpu_trainer.evaluate import Evaluator
from tpu_trainer.models import build_model
from tpu_trainer.models import check_model_name
from tpu_trainer.progress import Progress


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved. Rerun the same command to resume."""


class Diverged(Exception):
  """The loss diverged (NaN, infinite or exploding): training stopped, nothing was
  exported."""


# What decides the model's variables or the data: a workdir's checkpoints only
# resume under the same values. Anything else (epochs, logging...) may change.
RESUME_KEYS = ("model", "dropout", "pooling", "weights", "fine_tune_layers", "optimizer",
               "data_dir", "image_shape", "class_names")


def _strict_json(value):
  """NaN and infinities as null: metrics.json stays parseable by strict JSON readers."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _strict_json(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_strict_json(v) for v in value]
  return value


def check_resumable(workdir: str, resolved: dict) -> None:
  """Refuses, before anything in the workdir changes, to resume a run whose
  model or data differ from this one's."""
  saved = config_lib.load_if_exists(storage.join(workdir, "config.json"))
  if saved is None:
    return
  saved = saved.to_dict()
  changed = [f"{k}: {saved.get(k)!r} -> {resolved.get(k)!r}" for k in RESUME_KEYS
             if k in saved and saved.get(k) != resolved.get(k)]
  if changed:
    raise ValueError(f"workdir={workdir} holds a run with another model or data "
                     f"({'; '.join(changed)}); its checkpoints cannot resume this config. "
                     "Use another --workdir, or delete that one.")


def check_workdir(workdir: str) -> None:
  if not storage.is_gcs(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir={workdir} is a file, not a directory: pass another --workdir.")


def is_chief(strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run does, resolved from the config, the data and the replicas."""
  batch_size: int
  peak_lr: float
  steps_per_epoch: int
  total_steps: int
  steps_per_execution: int
  log_every: int
  checkpoint_every: int
  checkpoint_min_secs: float  # 0: every checkpoint_every steps
  eval_every: int
  precision: str
  decisions: dict  # why, for what config.batch_size etc. left open (saved in config.json)


def _round_up(value: int, multiple: int) -> int:
  return max(multiple, math.ceil(value / multiple) * multiple)


def plan_run(config, train_examples: int, strategy) -> Plan:
  replicas = strategy.num_replicas_in_sync
  batch_size, peak_lr, decisions = scaling.resolve(config, train_examples, replicas)
  if batch_size % replicas:
    raise ValueError(f"config.batch_size={batch_size} does not divide over {replicas} "
                     f"replicas; use a multiple of {replicas}.")
  steps_per_epoch = max(1, train_examples // batch_size)
  total_steps = config.steps or config.epochs * steps_per_epoch
  too_few = scaling.warn_if_too_few_steps(total_steps, batch_size, train_examples)
  if too_few:
    decisions["steps"] = too_few
  spe = min(config.steps_per_execution, total_steps)
  return Plan(batch_size, peak_lr, steps_per_epoch, total_steps, spe,
              log_every=_round_up(config.log_every_steps or steps_per_epoch, spe),
              checkpoint_every=_round_up(config.checkpoint_every_steps or steps_per_epoch, spe),
              checkpoint_min_secs=(0.0 if config.checkpoint_every_steps
                                   else config.checkpoint_min_secs),
              eval_every=_round_up(config.eval_every_epochs * steps_per_epoch, spe),
              precision=strategy_lib.resolve_precision(config.precision, strategy),
              decisions=decisions)


def check_data(config) -> manifest.Dataset:
  """The config and its data: every key, the model, both splits and the shards'
  sizes. All before any device, file or bucket is written."""
  config_lib.validate(config)
  if not config.data_dir:
    raise ValueError("config.data_dir is empty: pass --config.data_dir=DIR (a directory "
                     "written by tpu-trainer-convert).")
  check_model_name(config.model)
  dataset = manifest.read(config.data_dir)
  splits = {config.input.train_split, config.input.eval_split}
  for split in splits:
    dataset.split(split)
  manifest.check_shards(dataset, splits)
  return dataset


class Checkpoints:
  """The chief's checkpoints, in workdir/checkpoints; every worker resumes from them.

  Other workers must save too (a save runs collective ops), into a temp dir of
  their own that close() removes: they leave nothing in the workdir.
  """

  def __init__(self, model, optimizer, workdir: str, chief: bool, keep: int,
               min_secs: float = 0.0):
    self._min_secs, self._last_save = min_secs, time.monotonic()
    self.directory = storage.join(workdir, "checkpoints")
    self._chief = chief
    self._own = self.directory if chief else tempfile.mkdtemp(prefix="tpu_trainer_worker_ckpt_")
    self._checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    self._manager = tf.train.CheckpointManager(self._checkpoint, self._own, max_to_keep=keep)

  def latest(self) -> str | None:
    return tf.train.latest_checkpoint(self.directory)

  def restore(self) -> None:
    if self._chief:  # half-written checkpoints of killed runs (TF names them ckpt-N_temp)
      for stale in tf.io.gfile.glob(storage.join(self.directory, "*_temp*")):
        (tf.io.gfile.rmtree if tf.io.gfile.isdir(stale) else tf.io.gfile.remove)(stale)
    latest = self.latest()
    if latest:
      self._checkpoint.restore(latest).assert_existing_objects_matched()
      logging.info("Resumed from %s.", latest)

  def due(self) -> bool:
    """This host's wish; the job saves when any host's is agreed (loop.Signals)."""
    return time.monotonic() - self._last_save >= self._min_secs

  def save(self, step: int) -> None:
    self._manager.save(checkpoint_number=step)
    self._last_save = time.monotonic()

  def close(self) -> None:
    if not self._chief:
      shutil.rmtree(self._own, ignore_errors=True)


class Speed:
  """Training examples per second. The first execution (tracing and compilation)
  is timed apart: it is the rate only of a run that has nothing else."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.first_rate = 0.0
    self._seconds = self._steps = 0
    self._start_interval()

  def _start_interval(self):
    self._interval_start, self._interval_steps, self._excluded = time.perf_counter(), 0, 0.0

  def executed(self, steps: int, seconds: float) -> None:
    if not self.first_rate:
      self.first_rate = steps * self.batch_size / seconds
      self._start_interval()
      return
    self._seconds += seconds
    self._steps += steps
    self._interval_steps += steps

  def exclude(self, seconds: float) -> None:
    """Time in the interval that was not training (evaluation)."""
    self._excluded += seconds

  def interval_rate(self) -> float:
    """Since the last call, wall time (checkpoints and logs included, evaluation
    not); right after the first execution, that execution's rate."""
    seconds = time.perf_counter() - self._interval_start - self._excluded
    rate = (self._interval_steps * self.batch_size / seconds if self._interval_steps
            else self.first_rate)
    self._start_interval()
    return rate

  def overall(self) -> tuple[float, bool]:
    """(examples/s over the executions after the first, whether there were none
    and the first execution's rate, compilation included, is all there is)."""
    if self._seconds:
      return self._steps * self.batch_size / self._seconds, False
    return self.first_rate, True


class Report:
  """What a run shows: TensorBoard scalars, history.json, and progress (a live bar
  on a terminal, lines with ETA in logs). Only the chief writes files."""

  # The names Keras's TensorBoard callback writes: runs overlay plain-Keras ones.
  TAGS = (("loss", "epoch_loss"), ("accuracy", "epoch_accuracy"),
          ("learning_rate", "epoch_learning_rate"), ("examples_per_second", "examples_per_second"))

  def __init__(self, workdir: str, chief: bool, total_steps: int, step: int,
               batch_size: int):
    self.chief, self.batch_size = chief, batch_size
    self.writers = {kind: (tf.summary.create_file_writer(storage.join(workdir, kind)) if chief
                           else tf.summary.create_noop_writer())
                    for kind in ("train", "validation")}
    self.history_path = storage.join(workdir, "history.json")
    self.history = (json.loads(storage.read_text(self.history_path))
                    if chief and step and tf.io.gfile.exists(self.history_path) else [])
    self.progress = Progress(total_steps, "step", initial=step)

  def scalars(self, kind: str, values: dict, step: int) -> None:
    with self.writers[kind].as_default(step=step):
      for key, tag in self.TAGS:
        if key in values:
          tf.summary.scalar(tag, values[key])
    self.history.append({"kind": kind, "step": step,
                         **{k: values[k] for k in ("loss", "accuracy")}})

  def train(self, step: int, values: dict) -> None:
    self.scalars("train", values, step)
    rate = values["examples_per_second"]
    self.progress.log(
        "step %d/%d (%.0f%%): loss %.4f, accuracy %.4f, %.0f examples/s, lr %.3g, ETA %s",
        step, self.progress.total, 100 * step / self.progress.total, values["loss"],
        values["accuracy"], rate, values["learning_rate"],
        self.progress.eta(rate / self.batch_size))

  def validation(self, step: int, values: dict) -> None:
    self.scalars("validation", values, step)
    self.progress.log("step %d: validation loss %.4f, accuracy %.4f", step, values["loss"],
                      values["accuracy"])

  def save_history(self) -> None:
    if self.chief:
      storage.write_text(self.history_path, json.dumps(self.history))

  def close(self) -> None:
    self.progress.close()
    for writer in self.writers.values():
      writer.flush()


class Profiler:
  """A TensorBoard profile of steps [START, END) (config.profile_steps), on the chief."""

  def __init__(self, profile_steps: str, logdir: str, chief: bool):
    self.steps = (config_lib.parse_profile_steps(profile_steps)
                  if profile_steps and chief else None)
    self.logdir, self.active = logdir, False

  def before(self, step: int) -> None:
    if self.steps and not self.active and self.steps[0] <= step < self.steps[1]:
      tf.profiler.experimental.start(self.logdir)
      self.active = True

  def after(self, step: int) -> None:
    if self.active and step >= self.steps[1]:
      self.close()

  def close(self) -> None:
    if self.active:
      tf.profiler.experimental.stop()
      self.active = False


class EarlyStopping:
  def __init__(self, patience: int):
    self.patience, self.best, self.without_gain = patience, -1.0, 0

  def stop(self, accuracy: float) -> bool:
    """After an evaluation: whether `patience` evaluations in a row brought no gain."""
    if accuracy > self.best:
      self.best, self.without_gain = accuracy, 0
      return False
    self.without_gain += 1
    if 0 < self.patience <= self.without_gain:
      logging.info("Early stopping: no gain in %d evaluations.", self.without_gain)
      return True
    return False


class Sigterm:
  """SIGTERM while training: noted, and acted on after the current execution, when
  every worker saves the same checkpoint (see loop.Signals). Once training and
  its final evaluation are over (during the export), it raises Preempted at
  once: metrics.json, written last, is then absent and the rerun exports."""

  def __init__(self):
    self.received, self.raise_at_once = False, False
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: the caller handles signals
      self._previous = None

  def _handle(self, *_):
    self.received = True
    if self.raise_at_once:
      self.raise_at_once = False
      raise Preempted("SIGTERM during the export; nothing half-written is left. Run the "
                      "same command again to finish the export.")

  def raise_from_now_on(self) -> None:
    """Also for a SIGTERM that came during the final evaluation."""
    self.raise_at_once = True
    if self.received:
      self._handle()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run(config: ml_collections.ConfigDict, workdir: str, strategy=None) -> dict:
  """Trains config.model on config.data_dir; writes everything to workdir.

  Returns the final metrics (also written to workdir/metrics.json, last). Holds
  the workdir's lock (lock.py) from before config.json is written to the end.
  """
  with contextlib.ExitStack() as cleanup:
    # Setup. Whatever a user can get wrong fails here, before anything is written.
    stack = versions.check()
    logging.info("%s.", versions.describe(stack))
    dataset = check_data(config)
    check_workdir(workdir)
    check_resumable(workdir, {**config.to_dict(), "image_shape": list(dataset.image_shape),
                              "class_names": list(dataset.class_names)})
    strategy = strategy or strategy_lib.get_strategy(
        config.strategy, config.tpu, config.cpu_devices, config.tpu_zone, config.tpu_project)
    strategy_lib.check_shared_paths(strategy_lib.num_hosts(strategy),
                                    {"config.data_dir": config.data_dir, "workdir": workdir})
    train_examples = dataset.split(config.input.train_split).num_examples
    plan = plan_run(config, train_examples, strategy)
    config = ml_collections.ConfigDict(config.to_dict())  # the caller's stays as given
    config.batch_size = plan.batch_size
    chief = is_chief(strategy)
    workdir_lock = None
    if chief:  # one live run per workdir; the other workers share the chief's
      workdir_lock = lock_lib.WorkdirLock(workdir).acquire()
      cleanup.callback(workdir_lock.release)
      config_lib.save(_resolved(config, plan, dataset, strategy, stack),
                      storage.join(workdir, "config.json"))
    _log_plan(config, plan, train_examples, strategy)

    model, optimizer, schedule = build(config, plan, dataset, strategy)
    checkpoints = Checkpoints(model, optimizer, workdir, chief, config.keep_checkpoints,
                              plan.checkpoint_min_secs)
    cleanup.callback(checkpoints.close)
    checkpoints.restore()
    step = int(optimizer.iterations.numpy())

    totals, signals = metrics.Totals(strategy, "train"), loop.Signals(strategy)
    train_steps = loop.compile_steps(strategy, loop.train_step(
        model, optimizer, config, dataset.num_classes, totals, signals), signals)
    # A resumed run reads the data in another order (seed + step), not the same again.
    iterator = iter(strategy.distribute_datasets_from_function(pipeline.train_input_fn(
        dataset, config.batch_size, config.input, seed=config.seed + step)))
    evaluator = Evaluator(strategy, lambda x: model(x, training=False), dataset,
                          config.input.eval_split, config.batch_size, config.input)
    report = Report(workdir, chief, plan.total_steps, step, config.batch_size)
    cleanup.callback(report.close)
    profiler = Profiler(config.profile_steps, storage.join(workdir, "train"), chief)
    cleanup.callback(profiler.close)
    sigterm = Sigterm()
    cleanup.callback(sigterm.close)
    speed, early_stopping = Speed(config.batch_size), EarlyStopping(config.early_stopping_patience)

    # The loop: one execution of steps at a time, then whatever is due.
    try:
      while step < plan.total_steps:
        n = min(plan.steps_per_execution, plan.total_steps - step)
        profiler.before(step)
        start = time.perf_counter()
        train_steps(iterator, tf.constant(n), tf.constant(
            [sigterm.received, report.progress.line_due(), checkpoints.due()], tf.float32))
        step = int(optimizer.iterations.numpy())  # also waits for the devices
        speed.executed(n, time.perf_counter() - start)
        report.progress.update(n)
        profiler.after(step)
        agreed = signals.read()  # the same on every host
        if agreed.diverged:
          raise Diverged(f"The loss diverged (NaN, infinite or above "
                         f"{loop.divergence_limit(dataset.num_classes):.0f}, 100x a uniform "
                         f"guess's) between steps {step - n + 1} and {step}; nothing was "
                         "exported. Last good checkpoint: "
                         f"{checkpoints.latest() or 'none (none saved yet)'}. Lower the "
                         f"learning rate (peak {plan.peak_lr:.3g}) or check the data.")
        done = step >= plan.total_steps
        if step % plan.log_every == 0 or done or agreed.line_due:
          report.train(step, {**totals.result(), "examples_per_second": speed.interval_rate(),
                              "learning_rate": float(schedule(step))})
          totals.reset()
          if workdir_lock:
            workdir_lock.renew()
        stop_early = False
        if step % plan.eval_every == 0 and not done:
          eval_start = time.perf_counter()
          values = evaluator()
          report.validation(step, values)
          stop_early = early_stopping.stop(values["accuracy"])
          speed.exclude(time.perf_counter() - eval_start)
        if ((step % plan.checkpoint_every == 0 and agreed.checkpoint_due) or done
            or agreed.stop or stop_early):
          checkpoints.save(step)
          report.save_history()
        if agreed.stop:
          where = "here" if sigterm.received else "on another worker"
          raise Preempted(f"SIGTERM {where} at step {step}/{plan.total_steps}; every worker "
                          f"saved checkpoint {step} in {checkpoints.directory}. Run the same "
                          "command again to resume.")
        if stop_early:
          break
      final = evaluator()
    except tf.errors.DataLossError as e:
      raise manifest.explain_data_loss(config.data_dir, e) from None
    report.scalars("validation", final, step)
    report.close()

    result = _results(config, plan, strategy, model, speed, final, step)
    sigterm.raise_from_now_on()  # The export, on the chief.
    if chief:
      report.save_history()
      export_lib.export(model, workdir, dataset.class_names)
      # Last: its presence means the run and its export are complete. A run killed
      # before it (SIGTERM during export, say) finishes the export when rerun.
      storage.write_text(storage.join(workdir, "metrics.json"),
                         json.dumps(_strict_json(result), indent=2, allow_nan=False) + "\n")
    return result


def build(config, plan: Plan, dataset, strategy):
  """(model, optimizer, learning-rate schedule), the variables on the strategy. Same
  seed, same initial weights: reruns, and runs on another replica count, compare."""
  keras.mixed_precision.set_global_policy(plan.precision)
  keras.utils.set_random_seed(config.seed)
  schedule = optimizer_lib.learning_rate_schedule(config, plan.peak_lr, plan.steps_per_epoch,
                                                  plan.total_steps)
  with strategy.scope():
    model = build_model(config, dataset.image_shape, dataset.num_classes)
    optimizer = optimizer_lib.make_optimizer(config, schedule, plan.precision)
    # Without this, MirroredStrategy fails at the first step (placeholder error).
    optimizer.build(model.trainable_variables)
  return model, optimizer, schedule


def _log_plan(config, plan: Plan, train_examples: int, strategy) -> None:
  logging.info("%s: %d train examples, batch %d over %d replicas, %d steps (%d per epoch), "
               "%d steps per execution, %s, peak learning rate %.4g.", config.model,
               train_examples, plan.batch_size, strategy.num_replicas_in_sync,
               plan.total_steps, plan.steps_per_epoch, plan.steps_per_execution,
               plan.precision, plan.peak_lr)


def _results(config, plan: Plan, strategy, model, speed: Speed, final: dict, step: int) -> dict:
  """metrics.json: the final evaluation and the training speed."""
  rate, includes_compilation = speed.overall()
  if includes_compilation:
    logging.warning("The run was one execution (%d steps): too short to time without "
                    "compilation; examples_per_second %.0f includes it. Raise config.steps "
                    "or lower config.steps_per_execution for a steady rate.", step, rate)
  logging.info("Final evaluation on %s (%d examples): loss %.4f, accuracy %.4f.",
               config.input.eval_split, final["examples"], final["loss"], final["accuracy"])
  return {"accuracy": final["accuracy"], "loss": final["loss"],
          "eval_examples": final["examples"], "step": step, "examples_per_second": rate,
          "examples_per_second_includes_compilation": includes_compilation,
          "replicas": strategy.num_replicas_in_sync, "precision": plan.precision,
          "model": config.model,
          # Equal on every host of a healthy multi-host run.
          "weights_fingerprint": float(sum(
              tf.reduce_sum(tf.square(tf.cast(v, tf.float64))) for v in model.weights))}


def _resolved(config, plan: Plan, dataset, strategy, stack) -> ml_collections.ConfigDict:
  """config.json: the config as run, with what was decided for it and why."""
  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.precision = plan.precision
  resolved.update({"image_shape": list(dataset.image_shape),
                   "class_names": list(dataset.class_names),
                   "replicas": strategy.num_replicas_in_sync,
                   "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
                   "peak_learning_rate": plan.peak_lr, "strategy_class": type(strategy).__name__,
                   "versions": stack, "decisions": plan.decisions})
  return resolved
