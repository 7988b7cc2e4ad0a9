"""The cadence of a training run, written once for every backend.

Orbit's split: the controller decides when to log, evaluate, checkpoint and
stop; a runner (backends/tensorflow.py, backends/jax.py) runs one execution of
`steps_per_execution` steps, evaluates, saves and restores. Both backends
therefore log the same lines, write the same TensorBoard tags, save at the same
steps and stop for the same reasons.
"""
import contextlib
import dataclasses
import json
import math
import time
from typing import NamedTuple

from absl import logging
import tensorflow as tf

from tpu_trainer import config as config_lib
from tpu_trainer import profiling
from tpu_trainer import scaling
from tpu_trainer import storage
from tpu_trainer.errors import Diverged
from tpu_trainer.errors import UserError
from tpu_trainer.progress import Progress


class Agreed(NamedTuple):
  """What the whole job agrees on after an execution: every host reads the same
  values after the same execution, so all of them log, stop and save at the
  same step. A decision taken by one host alone (on its own clock, say) would
  leave the others waiting in a collective."""
  nonfinite: bool       # a replica's loss was NaN or infinite (in this run)
  exploded_share: float # of this execution's steps: not finite, or above divergence_limit
  stop: bool            # a host got SIGTERM
  line_due: bool        # a host wants a progress line (since the last read)
  checkpoint_due: bool  # a host's last checkpoint is older than it should be


def divergence_limit(num_classes: int) -> float:
  """A mean cross-entropy above this is a diverged run. Keras clips probabilities
  to [eps, 1 - eps] on the JAX backend, so no loss there exceeds -ln(eps) (16.1)
  however far a run has exploded; on TensorFlow it takes the softmax's logits
  and is uncapped (SGD at 1e6 reaches 1e30 while finite). Three quarters of the
  cap (12.1: the true class given 6e-6 on average, far worse than a uniform
  guess's ln K) reads the same on both; with thousands of classes, 1.5 ln K
  (past the cap there: only NaN and infinities count on JAX)."""
  cap = -math.log(keras_epsilon())
  return max(0.75 * cap, 1.5 * math.log(max(num_classes, 2)))


def keras_epsilon() -> float:
  import keras  # pylint: disable=g-import-not-at-top  (imported by then on every path)
  return keras.config.epsilon()


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
  decisions: dict  # why, for what config left open (saved in config.json)


def _round_up(value: int, multiple: int) -> int:
  return max(multiple, math.ceil(value / multiple) * multiple)


def plan_run(config, train_examples: int, replicas: int, precision: tuple[str, str]) -> Plan:
  """precision: (the resolved precision, why) from the runner."""
  batch_size, peak_lr, decisions = scaling.resolve(config, train_examples, replicas)
  if batch_size % replicas:
    raise UserError(f"config.batch_size={batch_size} does not divide over {replicas} "
                    f"replicas; use a multiple of {replicas}.")
  steps_per_epoch = max(1, train_examples // batch_size)
  total_steps = config.steps or config.epochs * steps_per_epoch
  too_few = scaling.warn_if_too_few_steps(total_steps, batch_size, train_examples)
  if too_few:
    decisions["steps"] = too_few
  decisions["precision"] = precision[1]
  spe = min(config.steps_per_execution, total_steps)
  return Plan(batch_size, peak_lr, steps_per_epoch, total_steps, spe,
              log_every=_round_up(config.log_every_steps or steps_per_epoch, spe),
              checkpoint_every=_round_up(config.checkpoint_every_steps or steps_per_epoch, spe),
              checkpoint_min_secs=(0.0 if config.checkpoint_every_steps
                                   else config.checkpoint_min_secs),
              eval_every=_round_up(config.eval_every_epochs * steps_per_epoch, spe),
              precision=precision[0], decisions=decisions)


class Phases:
  """Where a run's time went, by phase, in seconds: one line at the end and
  metrics.json's `seconds`. A small job's time is its fixed costs (start-up,
  compilation, evaluations, export): what to cut first is what this says."""

  NAMES = ("start-up and imports", "setup", "compile", "training", "evaluation",
           "checkpoints", "export")

  def __init__(self, started: float | None = None):
    """started: time.time() when the process started (a CLI's), if known."""
    self._run_start = time.time()
    self._started = started if started is not None else self._run_start
    self.seconds = dict.fromkeys(self.NAMES, 0.0)
    self.seconds["start-up and imports"] = self._run_start - self._started

  @contextlib.contextmanager
  def timing(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] += time.perf_counter() - start

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] += seconds

  def since_run_start(self) -> float:
    return time.time() - self._run_start

  def summary(self) -> dict:
    """{phase: seconds} with `other` (logs, summaries, waits) and `total`."""
    total = time.time() - self._started
    out = {name: round(s, 3) for name, s in self.seconds.items()}
    return {**out, "other": round(max(0.0, total - sum(self.seconds.values())), 3),
            "total": round(total, 3)}

  def describe(self) -> str:
    summary = self.summary()
    parts = ", ".join(f"{name} {s:.1f} s" for name, s in summary.items()
                      if name != "total" and s >= 0.05)
    return f"Time: {summary['total']:.1f} s in all: {parts}."


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
  on a terminal, lines with ETA in logs). Only the chief writes files. tf.summary
  writes the event files on both backends (TensorFlow is there for tf.data)."""

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
  """A TensorBoard profile of steps [START, END) (config.profile_steps), on the
  chief, through the runner's own profiler (both write plugins/profile/)."""

  def __init__(self, runner, profile_steps: str, logdir: str, chief: bool):
    self.steps = (config_lib.parse_profile_steps(profile_steps)
                  if profile_steps and chief else None)
    self.runner, self.logdir, self.active = runner, logdir, False

  def before(self, step: int, steps: int) -> None:
    """Before the execution of `steps` steps from `step`: the profile starts with
    the first execution whose first step is in [START, END); the runner prepares
    its profiled executions one execution earlier."""
    if not self.steps or self.active:
      return
    if self.steps[0] <= step < self.steps[1]:
      self.runner.start_profile(self.logdir)
      self.active = True
    elif self.steps[0] <= step + steps < self.steps[1]:
      self.runner.prepare_profile()

  def step_marker(self, step: int):
    """Around one execution while profiling: a profiler step (the overview and
    input-pipeline pages need them), numbered by its first optimizer step."""
    return self.runner.trace_step(step) if self.active else contextlib.nullcontext()

  def after(self, step: int) -> None:
    if self.active and step >= self.steps[1]:
      self.close()
      profiling.write_summary(self.logdir)  # what the trace says, in one line

  def close(self) -> None:
    if self.active:
      self.runner.stop_profile()
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


class CheckpointClock:
  """Per-epoch checkpoints no closer than min_secs: this host's wish, which the
  job acts on when any host's is agreed (Agreed.checkpoint_due)."""

  def __init__(self, min_secs: float):
    self._min_secs, self._last_save = min_secs, time.monotonic()

  def due(self) -> bool:
    return time.monotonic() - self._last_save >= self._min_secs

  def saved(self) -> None:
    self._last_save = time.monotonic()


def explosion_patience(plan: Plan) -> int:
  """Steps in a row a finite loss may stay above divergence_limit before the run
  counts as diverged: an early explosion that recovers (Adam on a layer with a
  large fan-in: the seed MLP on 128x128x3 images went 18.4 -> 5.9 -> 2.3 in its
  first epochs, plain Keras) is not divergence. NaN and infinities are at once."""
  return max(2 * plan.steps_per_epoch, 3 * plan.steps_per_execution)


def train(runner, plan: Plan, report: Report, checkpoints, evaluate, profiler: Profiler,
          sigterm, early_stopping: EarlyStopping, num_classes: int,
          step: int, watchdog, steps_watchdog, source: str, renew_lock=lambda: None,
          confirm_lock=lambda: None, phases: Phases | None = None) -> tuple[int, Speed]:
  """Runs executions from `step` to plan.total_steps (or an early stop), with the
  logs, evaluations and checkpoints that fall due between them, each write to
  the workdir under `watchdog` (watchdog.StorageWatchdog), each execution under
  `steps_watchdog` (watchdog.StepWatchdog; source: where the input comes from,
  as its lines name it). The workdir's lock
  is renewed at every progress line and confirmed before every checkpoint,
  before those writes: a run that lost it (lock.py) writes nothing more.
  Returns the last step and the speed, and adds the time of executions,
  evaluations and checkpoints to `phases`. Raises Diverged, or Preempted after saving."""
  speed, clock = Speed(plan.batch_size), CheckpointClock(plan.checkpoint_min_secs)
  phases = phases or Phases()
  exploded_since = None  # where the executions in a row whose loss exploded began
  while step < plan.total_steps:
    n = min(plan.steps_per_execution, plan.total_steps - step)
    profiler.before(step, n)
    first = not speed.first_rate
    if first:
      report.progress.log("Compiling the training step (the first execution, %d steps)...", n)
    start = time.perf_counter()
    with profiler.step_marker(step), steps_watchdog.running("training step", source):
      agreed = runner.execute(n, [sigterm.received, report.progress.line_due(), clock.due()])
    step = runner.step()
    elapsed = time.perf_counter() - start
    speed.executed(n, elapsed)
    phases.add("compile" if first else "training", elapsed)
    if first:
      report.progress.log("First execution, compilation included: %.1f s.", elapsed)
    report.progress.update(n)
    profiler.after(step)
    done = step >= plan.total_steps
    exploded_since = (step - n if exploded_since is None else exploded_since
                      ) if agreed.exploded_share >= 0.5 else None  # most of its steps
    if agreed.nonfinite or (exploded_since is not None and (
        step - exploded_since >= explosion_patience(plan) or done)):
      limit = divergence_limit(num_classes)
      when = (f"between steps {step - n + 1} and {step}" if agreed.nonfinite else
              f"for {step - exploded_since} steps in a row, steps {exploded_since + 1} to "
              f"{step}")
      raise Diverged(f"The loss diverged (NaN, infinite, or a mean cross-entropy above "
                     f"{limit:.1f}: the true class given under {math.exp(-limit):.0e} on "
                     f"average) {when}; nothing was exported. Last good checkpoint: "
                     f"{checkpoints.latest() or 'none (none saved yet)'}. Lower the "
                     f"learning rate (peak {plan.peak_lr:.3g}) or check the data.")
    if step % plan.log_every == 0 or done or agreed.line_due:
      values = {**runner.train_totals(), "examples_per_second": speed.interval_rate(),
                "learning_rate": runner.learning_rate(step)}
      with watchdog.waiting(f"renewing the lock and writing step {step}'s summaries"):
        renew_lock()
        report.train(step, values)
    stop_early = False
    if step % plan.eval_every == 0 and not done and not agreed.stop:  # stopping: save first
      eval_start = time.perf_counter()
      values = evaluate()
      with watchdog.waiting(f"writing step {step}'s validation summaries"):
        report.validation(step, values)
      stop_early = early_stopping.stop(values["accuracy"])
      eval_seconds = time.perf_counter() - eval_start
      speed.exclude(eval_seconds)
      phases.add("evaluation", eval_seconds)
    if ((step % plan.checkpoint_every == 0 and agreed.checkpoint_due) or done
        or agreed.stop or stop_early):
      with watchdog.waiting(f"saving checkpoint {step}"), phases.timing("checkpoints"):
        confirm_lock()
        checkpoints.save(step)  # written in the background
        # What a storage failure names to resume from: only checkpoints known whole.
        watchdog.saved(checkpoints.written)
        report.save_history()
      clock.saved()
    if agreed.stop:
      with watchdog.waiting(f"finishing checkpoint {step}"):
        checkpoints.wait()
      watchdog.saved(checkpoints.written)
      # What a preemption's notice must cover (GKE Spot gives pods 15 s): logged by
      # the process that got the signal.
      where = (f"here at step {step}/{plan.total_steps}, checkpoint written "
               f"{sigterm.seconds_since():.1f} s after it" if sigterm.received
               else f"on another worker at step {step}/{plan.total_steps}")
      raise sigterm.stopped(f"{where}; every worker saved checkpoint {step} in "
                            f"{checkpoints.directory}. Run the same command again to resume.")
    if stop_early:
      break
  return step, speed
