"""The training loop: a Keras model and optimizer inside our own distributed loop.

One tf.function call runs `steps_per_execution` steps on every replica (the
TPU's main speed lever; Keras 3's fit cannot do that under MirroredStrategy
nor run under MultiWorkerMirroredStrategy). Between calls a short Python loop
writes summaries, evaluates, checkpoints and watches for SIGTERM.
"""
import contextlib
import json
import math
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
from tpu_trainer import metrics
from tpu_trainer import plots
from tpu_trainer import scaling
from tpu_trainer import storage
from tpu_trainer import strategy as strategy_lib
from tpu_trainer import versions
from tpu_trainer.data import manifest
from tpu_trainer.data import pipeline
from tpu_trainer.evaluate import Evaluator
from tpu_trainer.models import build_model
from tpu_trainer.models import check_model_name


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved. Rerun the same command to resume."""


class Diverged(Exception):
  """The loss became NaN or infinite: training stopped, nothing was exported."""


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
  path = storage.join(workdir, "config.json")
  if not tf.io.gfile.exists(path):
    return
  saved = config_lib.load(path).to_dict()
  changed = [f"{k}: {saved.get(k)!r} -> {resolved.get(k)!r}" for k in RESUME_KEYS
             if k in saved and saved.get(k) != resolved.get(k)]
  if changed:
    raise ValueError(f"workdir={workdir} holds a run with another model or data "
                     f"({'; '.join(changed)}); its checkpoints cannot resume this config. "
                     "Use another --workdir, or delete that one.")


def _round_up(value: int, multiple: int) -> int:
  return max(multiple, math.ceil(value / multiple) * multiple)


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def is_chief(strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def learning_rate_schedule(config, peak: float, steps_per_epoch: int, total_steps: int):
  """Linear warmup from 0 to peak, then cosine decay to 0, or constant."""
  warmup = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  alpha = 1.0 if config.lr_schedule == "constant" else 0.0
  if config.lr_schedule not in ("cosine", "constant"):
    raise ValueError(f"config.lr_schedule={config.lr_schedule!r} must be cosine or constant.")
  if warmup > 0:
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(1, total_steps - warmup), alpha=alpha, warmup_target=peak,
        warmup_steps=warmup)
  return keras.optimizers.schedules.CosineDecay(peak, max(1, total_steps), alpha=alpha)


def make_optimizer(config, schedule, precision: str):
  kwargs = {"learning_rate": schedule}
  if config.weight_decay:
    kwargs["weight_decay"] = config.weight_decay
  if config.optimizer == "adam":
    optimizer = keras.optimizers.Adam(**kwargs)
  elif config.optimizer == "adamw":
    kwargs.setdefault("weight_decay", 1e-4)
    optimizer = keras.optimizers.AdamW(**kwargs)
  elif config.optimizer == "sgd":
    optimizer = keras.optimizers.SGD(momentum=config.momentum, nesterov=True, **kwargs)
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r} must be adam, adamw or sgd.")
  if precision == "mixed_float16":  # float16 gradients underflow without it
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def run(config: ml_collections.ConfigDict, workdir: str, strategy=None) -> dict:
  """Trains config.model on config.data_dir; writes everything to workdir.

  Returns the final metrics (also written to workdir/metrics.json). Holds the
  workdir's lock (lock.py) from before config.json is written to the end.
  """
  with contextlib.ExitStack() as cleanup:
    return _run(config, workdir, strategy, cleanup)


def _run(config, workdir, strategy, cleanup) -> dict:
  stack = versions.check()
  logging.info("%s.", versions.describe(stack))
  config_lib.validate(config)
  if not config.data_dir:
    raise ValueError("config.data_dir is empty: pass --config.data_dir=DIR (a directory "
                     "written by tpu-trainer-convert).")
  check_model_name(config.model)
  dataset = manifest.read(config.data_dir)  # before touching devices: fail fast
  train_split = dataset.split(config.train_split)
  dataset.split(config.eval_split)
  manifest.check_shards(dataset, {config.train_split, config.eval_split})
  strategy = strategy or strategy_lib.get_strategy(
      config.strategy, config.tpu, config.cpu_devices, config.tpu_zone, config.tpu_project)
  strategy_lib.check_shared_paths(strategy_lib.num_hosts(strategy),
                                  {"config.data_dir": config.data_dir, "workdir": workdir})
  replicas = strategy.num_replicas_in_sync
  train_examples = train_split.num_examples
  batch_size, peak_lr, reasons = scaling.resolve(config, train_examples, replicas)
  config = ml_collections.ConfigDict(config.to_dict())  # the caller's stays as given
  config.batch_size = batch_size
  if config.batch_size % replicas:
    raise ValueError(f"config.batch_size={config.batch_size} does not divide over "
                     f"{replicas} replicas; use a multiple of {replicas}.")
  precision = strategy_lib.resolve_precision(config.precision, strategy)
  keras.mixed_precision.set_global_policy(precision)
  chief = is_chief(strategy)

  steps_per_epoch = max(1, train_examples // config.batch_size)
  total_steps = config.steps or config.epochs * steps_per_epoch
  too_few = scaling.warn_if_too_few_steps(total_steps, config.batch_size, train_examples)
  spe = min(config.steps_per_execution, total_steps)
  schedule = learning_rate_schedule(config, peak_lr, steps_per_epoch, total_steps)
  log_every = _round_up(config.log_every_steps or steps_per_epoch, spe)
  checkpoint_every = _round_up(config.checkpoint_every_steps or steps_per_epoch, spe)
  eval_every = _round_up(config.eval_every_epochs * steps_per_epoch, spe)
  profile = config_lib.parse_profile_steps(config.profile_steps) if config.profile_steps else None

  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.precision = precision
  resolved.update({"image_shape": list(dataset.image_shape),
                   "class_names": list(dataset.class_names),
                   "replicas": replicas, "steps_per_epoch": steps_per_epoch,
                   "total_steps": total_steps, "peak_learning_rate": peak_lr,
                   "strategy_class": type(strategy).__name__, "versions": stack,
                   "decisions": {**reasons, **({"steps": too_few} if too_few else {})}})
  check_resumable(workdir, resolved.to_dict())
  workdir_lock = None
  if chief:  # one live run per workdir; the other workers share the chief's
    workdir_lock = lock_lib.WorkdirLock(workdir).acquire()
    cleanup.callback(workdir_lock.release)
    tf.io.gfile.makedirs(workdir)
    config_lib.save(resolved, storage.join(workdir, "config.json"))
  logging.info("%s: %d train examples, batch %d over %d replicas, %d steps (%d per epoch), "
               "%d steps per execution, %s, peak learning rate %.4g.", config.model,
               train_examples, config.batch_size, replicas, total_steps, steps_per_epoch,
               spe, precision, peak_lr)

  image_shape, num_classes = dataset.image_shape, dataset.num_classes
  # Same seed, same initial weights: reruns, and runs on another replica count, compare.
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    model = build_model(config, image_shape, num_classes)
    optimizer = make_optimizer(config, schedule, precision)
    # Without this, MirroredStrategy fails at the first step (placeholder error).
    optimizer.build(model.trainable_variables)
  train_totals = metrics.Totals(strategy, "train")
  with strategy.scope():  # non-finite losses seen; read (summed) once per execution
    nonfinite = tf.Variable(0.0, trainable=False, name="nonfinite_losses",
                            synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.SUM)
  loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing,
                                                 reduction=None)

  # Every worker resumes from the chief's checkpoints; only the chief's are
  # kept. Other workers must save too (collective ops), into a temp dir.
  chief_checkpoints = storage.join(workdir, "checkpoints")
  checkpoint_dir = (chief_checkpoints if chief
                    else tempfile.mkdtemp(prefix="tpu_trainer_worker_ckpt_"))
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir,
                                       max_to_keep=config.keep_checkpoints)
  if chief:  # half-written checkpoints of killed runs (TF names them ckpt-N_temp)
    for stale in tf.io.gfile.glob(storage.join(chief_checkpoints, "*_temp*")):
      if tf.io.gfile.isdir(stale):
        tf.io.gfile.rmtree(stale)
      else:
        tf.io.gfile.remove(stale)
  latest = tf.train.latest_checkpoint(chief_checkpoints)
  if latest:
    checkpoint.restore(latest).assert_existing_objects_matched()
    logging.info("Resumed from %s.", latest)
  step = int(optimizer.iterations.numpy())

  def train_step(images, labels):
    with tf.GradientTape() as tape:
      probabilities = model(images, training=True)
      per_example = loss_fn(tf.one_hot(labels, num_classes), probabilities)
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
      if model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
      scaled_loss = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    train_totals.update(per_example, probabilities, labels)
    nonfinite.assign_add(tf.cast(tf.logical_not(tf.math.is_finite(loss)), tf.float32))

  @tf.function
  def train_steps(iterator, steps):
    for _ in tf.range(steps):
      strategy.run(train_step, args=next(iterator))

  train_fn = pipeline.train_input_fn(
      dataset, config.batch_size, split=config.train_split,
      seed=config.seed + step, shuffle_buffer=config.shuffle_buffer, cache=config.cache,
      cache_max_bytes=config.cache_max_bytes, augment=config.augment,
      deterministic=config.deterministic, threads=config.data_threads)
  iterator = iter(strategy.distribute_datasets_from_function(train_fn))
  evaluator = Evaluator(strategy, lambda x: model(x, training=False), dataset,
                        config.eval_split, config.batch_size, cache=config.cache,
                        cache_max_bytes=config.cache_max_bytes)

  writers = {kind: (tf.summary.create_file_writer(storage.join(workdir, kind)) if chief
                    else tf.summary.create_noop_writer()) for kind in ("train", "validation")}
  history_path = storage.join(workdir, "history.json")
  history = (json.loads(storage.read_text(history_path))
             if chief and step and tf.io.gfile.exists(history_path) else [])

  preempted = []
  previous_handler = None
  try:
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  except ValueError:  # not the main thread: the caller handles signals
    pass

  def record(kind, values, at_step):
    # The names Keras's TensorBoard callback writes: runs overlay plain-Keras ones.
    with writers[kind].as_default(step=at_step):
      for key, tag in (("loss", "epoch_loss"), ("accuracy", "epoch_accuracy"),
                       ("learning_rate", "epoch_learning_rate"),
                       ("examples_per_second", "examples_per_second")):
        if key in values:
          tf.summary.scalar(tag, values[key])
    history.append({"kind": kind, "step": at_step, **{k: values[k] for k in ("loss", "accuracy")}})

  best_accuracy, evals_without_gain = -1.0, 0
  train_seconds, train_examples_timed = 0.0, 0
  first_call, first_call_rate, last_log = True, 0.0, time.perf_counter()
  interval_start, interval_steps = time.perf_counter(), 0
  profiling = False
  try:
    while step < total_steps:
      if profile and not profiling and profile[0] <= step < profile[1] and chief:
        tf.profiler.experimental.start(storage.join(workdir, "train"))
        profiling = True
      n = min(spe, total_steps - step)
      start = time.perf_counter()
      train_steps(iterator, tf.constant(n))
      step = int(optimizer.iterations.numpy())  # also waits for the devices
      if float(nonfinite.numpy()):
        last_good = (tf.train.latest_checkpoint(chief_checkpoints)
                     or "none (no checkpoint was saved yet)")
        raise Diverged(f"The loss became NaN or infinite between steps {step - n + 1} and "
                       f"{step}; nothing was exported. Last good checkpoint: {last_good}. "
                       f"Lower the learning rate (peak {peak_lr:.3g}) or check the data.")
      if first_call:  # tracing and compilation: not part of the training rate
        first_call = False
        first_call_rate = n * config.batch_size / (time.perf_counter() - start)
        interval_start, interval_steps = time.perf_counter(), 0
      else:
        train_seconds += time.perf_counter() - start
        train_examples_timed += n * config.batch_size
        interval_steps += n
      if profiling and step >= profile[1]:
        tf.profiler.experimental.stop()
        profiling = False

      done = step >= total_steps
      # Once per epoch (log_every), and at least every 10 s of work.
      if step % log_every == 0 or done or time.perf_counter() - last_log >= 10:
        last_log = time.perf_counter()
        values = train_totals.result()
        elapsed = time.perf_counter() - interval_start
        # Right after the first call there is no steady interval yet: its rate,
        # compilation included, is what there is.
        values["examples_per_second"] = (interval_steps * config.batch_size / elapsed
                                         if interval_steps else first_call_rate)
        values["learning_rate"] = float(schedule(step))
        record("train", values, step)
        if workdir_lock:
          workdir_lock.renew()
        eta = (total_steps - step) * config.batch_size / max(values["examples_per_second"], 1e-9)
        logging.info("step %d/%d (%.0f%%): loss %.4f, accuracy %.4f, %.0f examples/s, lr %.3g, "
                     "ETA %s", step, total_steps, 100 * step / total_steps, values["loss"],
                     values["accuracy"], values["examples_per_second"], values["learning_rate"],
                     format_duration(eta))
        train_totals.reset()
        interval_start, interval_steps = time.perf_counter(), 0

      stop_early = False
      if step % eval_every == 0 and not done:
        values = evaluator()
        record("validation", values, step)
        logging.info("step %d: validation loss %.4f, accuracy %.4f", step, values["loss"],
                     values["accuracy"])
        if values["accuracy"] > best_accuracy:
          best_accuracy, evals_without_gain = values["accuracy"], 0
        else:
          evals_without_gain += 1
          stop_early = 0 < config.early_stopping_patience <= evals_without_gain
          if stop_early:
            logging.info("Early stopping: no gain in %d evaluations.", evals_without_gain)
        interval_start = time.perf_counter()

      if step % checkpoint_every == 0 or done or preempted or stop_early:
        manager.save(checkpoint_number=step)
        if chief:
          storage.write_text(history_path, json.dumps(history))
      if preempted:
        raise Preempted(f"SIGTERM at step {step}/{total_steps}; checkpoint saved in "
                        f"{checkpoint_dir}. Run the same command again to resume.")
      if stop_early:
        break
  except tf.errors.DataLossError as e:
    raise manifest.explain_data_loss(config.data_dir, e) from None
  finally:
    if profiling:
      tf.profiler.experimental.stop()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)
    for w in writers.values():
      w.flush()
    if not chief:
      shutil.rmtree(checkpoint_dir, ignore_errors=True)

  try:
    final = evaluator()
  except tf.errors.DataLossError as e:
    raise manifest.explain_data_loss(config.data_dir, e) from None
  record("validation", final, step)
  result = {"accuracy": final["accuracy"], "loss": final["loss"],
            "eval_examples": final["examples"], "step": step,
            "examples_per_second": (train_examples_timed / train_seconds
                                    if train_seconds else first_call_rate),
            # One execution only: its rate includes tracing and compilation.
            "examples_per_second_includes_compilation": not train_seconds,
            "replicas": replicas, "precision": precision, "model": config.model,
            # Equal on every host of a healthy multi-host run.
            "weights_fingerprint": float(sum(
                tf.reduce_sum(tf.square(tf.cast(v, tf.float64))) for v in model.weights))}
  if not train_seconds:
    logging.warning("The run was one execution (%d steps): too short to time without "
                    "compilation; examples_per_second %.0f includes it. Raise config.steps "
                    "or lower config.steps_per_execution for a steady rate.", step,
                    first_call_rate)
  logging.info("Final evaluation on %s (%d examples): loss %.4f, accuracy %.4f.",
               config.eval_split, final["examples"], final["loss"], final["accuracy"])
  if chief:
    storage.write_text(history_path, json.dumps(history))
    export_lib.export(model, workdir, dataset.class_names)
    plots.learning_curves(history, storage.join(workdir, "learning_curves.png"))
    # Last: its presence means the run and its export are complete. A run killed
    # before it (SIGTERM during export, say) finishes the export when rerun.
    storage.write_text(storage.join(workdir, "metrics.json"),
                       json.dumps(_strict_json(result), indent=2, allow_nan=False) + "\n")
  return result

