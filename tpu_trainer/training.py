"""Training, top to bottom: setup -> controller -> export, on either backend.

run() checks everything a user can get wrong before touching a device or a
file, picks the backend's runner (backends/), resolves the batch size, learning
rate and precision, builds the model (a user's checked against its contract:
models/custom.py), takes the workdir and resumes the model from it, then
hands the loop to the controller (controller.py: the cadence, the same for
both backends). Last, the final evaluation, the export (export.py) and
metrics.json.
"""
import contextlib
import json
import math
import os
import re
import shutil
import zlib

from absl import logging
import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tpu_trainer import backends
from tpu_trainer import config as config_lib
from tpu_trainer import controller
from tpu_trainer import errors
from tpu_trainer import export as export_lib
from tpu_trainer import lock as lock_lib
from tpu_trainer import memory
from tpu_trainer import models
from tpu_trainer import optimizer as optimizer_lib
from tpu_trainer import stopping
from tpu_trainer import storage
from tpu_trainer import strategy as strategy_lib
from tpu_trainer import versions
from tpu_trainer import watchdog as watchdog_lib
from tpu_trainer.data import manifest
from tpu_trainer.data import pipeline
from tpu_trainer.data import service
from tpu_trainer.errors import MissingError
from tpu_trainer.errors import UserError
from tpu_trainer.models import applications
from tpu_trainer.models import custom

Preempted = stopping.Preempted
Diverged = errors.Diverged

# What decides the model's variables or the data: a workdir's checkpoints only
# resume under the same values. Anything else (epochs, logging...) may change.
RESUME_KEYS = ("model", "dropout", "pooling", "weights", "fine_tune_layers", "optimizer",
               "dataset_identity", "image_shape", "class_names", "backend")


def _strict_json(value):
  """NaN and infinities as null: metrics.json stays parseable by strict JSON readers."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _strict_json(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_strict_json(v) for v in value]
  return value


def check_resumable(workdir: str, saved, resolved: dict, identities=()) -> None:
  """Refuses, before anything in the workdir changes, to resume a run (saved: its
  config.json, or None) whose model or data differ from this one's. The data by
  its identity (content), not its path: a copy elsewhere resumes, a reconversion
  in place with another content does not. identities: what else the data's
  identity was once written as."""
  if saved is None:
    return
  saved = {"backend": "tensorflow", **saved.to_dict()}  # workdirs from before backends
  if "class_names" in saved:  # recorded before names were NFC
    saved["class_names"] = [manifest.class_name(n) for n in saved["class_names"]]
  keys = list(RESUME_KEYS)
  if "dataset_identity" not in saved:  # workdirs from before identities: the path
    keys.append("data_dir")
    saved["data_dir"] = saved.get("data_dir", "").rstrip("/")
    resolved = {**resolved, "data_dir": resolved.get("data_dir", "").rstrip("/")}
  changed = [f"{k}: {saved.get(k)!r} -> {resolved.get(k)!r}" for k in keys
             if k in saved and k != "dataset_identity" and saved.get(k) != resolved.get(k)]
  if saved.get("dataset_identity", resolved.get("dataset_identity")) not in (
      resolved.get("dataset_identity"), *identities):
    changed.append(f"the dataset: {saved.get('data_dir')} as it was then -> "
                   f"{resolved.get('data_dir')} now, another content (converted again? "
                   "another seed re-draws the splits)")
  if changed:
    raise UserError(f"workdir={workdir} holds a run with another model or data "
                    f"({'; '.join(changed)}); its checkpoints cannot resume this config. "
                    "Use another --workdir, or delete that one.")


# What a run (and tpu-trainer-eval) writes into its workdir, and nothing else.
WORKDIR_FILES = ("config.json", "history.json", "metrics.json", "model.keras",
                 "learning_curves.png")
WORKDIR_DIRS = ("checkpoints", "train", "validation", "saved_model")
WORKDIR_PATTERN = re.compile(r"eval_[\w.-]+(\.json|_confusion\.png|_predictions\.png)")


def clear_workdir(workdir: str) -> None:
  """Removes what runs wrote into a local workdir (named exactly, links as links,
  never what they point to); anything else stays. Hold the workdir's lock."""
  if not os.path.isdir(workdir):
    return
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    ours = name in WORKDIR_FILES or WORKDIR_PATTERN.fullmatch(name)
    if name in WORKDIR_DIRS and os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif (ours or name in WORKDIR_DIRS) and (os.path.islink(path) or os.path.isfile(path)):
      os.remove(path)


def finished_run(workdir: str, saved, plan: controller.Plan) -> dict | None:
  """metrics.json of the run in workdir when it finished (its planned steps, or
  an early stop) and this config asks no more of it: as many examples or fewer
  (steps x batch, so a changed batch size compares). None otherwise. A finished
  run stays finished: rerunning its command changes nothing."""
  text = storage.read_text_if_exists(storage.join(workdir, "metrics.json"))
  if text is None:
    return None
  metrics = json.loads(text)
  if "total_steps" in metrics:
    planned, batch = metrics["total_steps"], metrics["batch_size"]
  else:  # metrics.json from before it said so: config.json was that run's
    planned, batch = (saved or {}).get("total_steps"), (saved or {}).get("batch_size")
  if planned is None or plan.total_steps * plan.batch_size > planned * batch:
    return None
  how = ("stopped early at step %d of %d" % (metrics["step"], planned)
         if metrics.get("stopped_early") else f"trained its {planned} steps")
  logging.warning(
      "workdir=%s holds a finished run (%s at batch %d; accuracy %.4f in metrics.json): "
      "nothing to train, nothing written. To train it further, raise config.epochs or "
      "config.steps past %d steps at batch %d; for a new run, pass another --workdir.",
      workdir, how, batch, metrics["accuracy"], planned, batch)
  return metrics


def check_precision(workdir: str, saved, plan: controller.Plan) -> None:
  """Refuses to resume across mixed_float16's edge, naming the setting:
  mixed_float16 trains through a loss-scale optimizer, whose variables the
  checkpoint of a run in another precision lacks (and the other way round).
  float32 and mixed_bfloat16 resume each other."""
  if saved is None or "precision" not in saved:
    return
  if (saved.precision == "mixed_float16") != (plan.precision == "mixed_float16"):
    raise UserError(
        f"workdir={workdir} holds a run in precision {saved.precision}, and this one is in "
        f"{plan.precision}: mixed_float16 trains with a loss scale in the optimizer, so the "
        f"checkpoints of one cannot resume the other. Pass --config.precision="
        f"{saved.precision} to resume it, or another --workdir.")


def check_progress(saved, step: int, plan: controller.Plan, restored: str) -> None:
  """Refuses a resume whose checkpoint is past this config's last step (fewer
  epochs, or a bigger batch: steps of the checkpoint's batch), which would train
  nothing and export the old weights as this config's."""
  if step <= plan.total_steps:
    return
  then = (saved or {}).get("batch_size")
  raise UserError(
      f"{restored} is at step {step}{f' (batch {then})' if then else ''}, past this "
      f"config's last step {plan.total_steps} (batch {plan.batch_size}): resuming would train "
      "nothing. Raise config.epochs or config.steps past step "
      f"{step}{f', keep config.batch_size={then}' if then and then != plan.batch_size else ''}"
      ", or pass another --workdir.")


def check_step_fits(need: memory.StepMemory, runner) -> None:
  """Refuses, before the first step, a training step whose estimated memory
  (`need`, memory.py) is more than this host has available: an allocation
  failing inside TensorFlow or XLA names no setting ("ResourceExhaustedError:
  OOM"). On CPUs, where the replicas share the host's memory; an accelerator's
  is the doctor's to say (tpu-trainer-doctor, against the generation's HBM)."""
  if runner.platform != "cpu":
    return
  replicas_here = max(1, runner.replicas // runner.processes)
  have = memory.host_available_bytes()
  if need.total * replicas_here > have:
    raise UserError(
        f"The training step will not fit in this machine's memory: {need.describe()}"
        f"{f', x {replicas_here} replicas on this host' if replicas_here > 1 else ''}; "
        f"{memory.gib(have)} available. Lower config.batch_size, convert smaller images "
        "(tpu-trainer-convert --image_size=H,W), or use a smaller model.")


def _out_of_memory(error, need: memory.StepMemory, runner) -> UserError:
  """What an allocation that failed inside TensorFlow (a device's memory: a TPU's
  HBM, or more than the estimate `need` said) tells the user."""
  first = (str(error).strip().splitlines() or [""])[0]
  return UserError(f"Out of memory on a {runner.platform} device ({first[:160]}); the "
                   f"training step was estimated at {need.describe()}. Lower "
                   "config.batch_size, convert smaller images (tpu-trainer-convert "
                   "--image_size=H,W), or use a smaller model or a bigger device "
                   "(tpu-trainer-doctor estimates it for a TPU slice).")


def check_workers_agree(runner, config, plan: controller.Plan, dataset, workdir: str,
                        finished: bool = False) -> None:
  """Every process of a multi-process job runs the same config on the same data
  (workers started with another learning rate would train apart, silently);
  refused before anything is written, naming the keys. data_dir may differ (a
  copy per host): the dataset's identity may not. On JAX the workdir may not
  either: every process writes its shards of each checkpoint there (Orbax).
  Nor whether the workdir holds a finished run (finished_run): one worker
  returning while another trains would leave that one waiting."""
  if runner.processes == 1:
    return
  values = {**{k: v for k, v in config_lib.flat(config.to_dict()).items()
               if k != "data_dir"},
            "dataset": dataset.identity, "batch_size (resolved)": plan.batch_size,
            "precision (resolved)": plan.precision, "total_steps": plan.total_steps,
            "whether the workdir holds a finished run": finished}
  if runner.name == "jax":
    values["workdir (every process writes its checkpoint shards there)"] = workdir
  keys = sorted(values)
  hashes = np.array([zlib.crc32(json.dumps(values[k], sort_keys=True).encode()) for k in keys],
                    np.int64)
  differ = [k for k, same in zip(keys, runner.agree(hashes)) if not same]
  if differ:
    raise UserError(f"The workers of this job disagree on {', '.join(differ)}: start every "
                    "worker with the same command and config.")


def check_workdir(workdir: str) -> None:
  if storage.is_gcs(workdir):
    storage.require_bucket(workdir)  # before the lock's first write into it
  elif os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir={workdir} is a file, not a directory: pass another --workdir.")
  else:
    # Where the run would write first (the workdir, or the folder it would be
    # made in): read-only there failed only at the lock, or later.
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
      existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
      raise UserError(f"workdir={workdir} cannot be written by this user ({existing} is "
                      "read-only here): pass another --workdir, or make it writable.")


def check_data(config) -> manifest.Dataset:
  """The config and its data: every key, the model, both splits and the shards'
  sizes. All before any device, file or bucket is written."""
  config_lib.validate(config)
  if not config.data_dir:
    raise UserError("config.data_dir is empty: pass --config.data_dir=DIR (a directory "
                    "written by tpu-trainer-convert).")
  dataset = manifest.read(config.data_dir)
  splits = {config.input.train_split, config.input.eval_split}
  for split in splits:
    dataset.split(split)
  manifest.check_shards(dataset, splits)
  pipeline.check_fits_host(dataset, config.input)
  if config.init_from and not tf.io.gfile.exists(config.init_from):
    raise MissingError(f"config.init_from={config.init_from!r} does not exist: pass a "
                       "model.keras file (an earlier run's) or leave it empty.")
  if config.input.service:
    service.check_reachable(config.input.service)
    logging.info("Training input from the tf.data service at %s (%s); evaluation reads "
                 "locally.%s", config.input.service,
                 f"job {config.input.service_job!r}" if config.input.service_job
                 else "one job per host",
                 " Batches arrive in the order workers finish them: the run is not "
                 "reproducible." if config.input.deterministic else "")
  return dataset


def _with_model_name(config, name: str) -> ml_collections.ConfigDict:
  """The config with config.model as the string config.json records (a copy
  when it was a callable or a relative path)."""
  if config.model == name:
    return config
  return ml_collections.ConfigDict({**config.to_dict(), "model": name})


def run(config: ml_collections.ConfigDict, workdir: str, strategy=None,
        started: float | None = None) -> dict:
  """Trains config.model on config.data_dir; writes everything to workdir.

  `strategy`: a tf.distribute strategy for the TensorFlow backend (tests);
  otherwise config.strategy picks one. Returns the final metrics (also written
  to workdir/metrics.json, last). Holds the workdir's lock (lock.py) from
  before config.json is written to the end. `started`: time.time() when the
  process started (the CLI's), from which start-up and imports are timed.
  """
  phases = controller.Phases(started)
  with contextlib.ExitStack() as cleanup:
    # Setup. Whatever a user can get wrong fails here, before anything is written.
    stack = versions.check()
    logging.info("%s.", versions.describe(stack))
    dataset = check_data(config)
    builder, model_name, users_code = models.resolve(config.model)
    config = _with_model_name(config, model_name)
    check_workdir(workdir)
    # The run already there: read once, for every check of this one against it.
    saved = config_lib.load_if_exists(storage.join(workdir, "config.json"))
    check_resumable(workdir, saved, {**config.to_dict(),
                                     "image_shape": list(dataset.image_shape),
                                     "class_names": list(dataset.class_names),
                                     "dataset_identity": dataset.identity},
                    dataset.identities)
    runner = backends.runner(config, strategy)
    sigterm = stopping.StopSignals()  # after the strategy, which may take SIGTERM over
    cleanup.callback(sigterm.close)
    strategy_lib.check_shared_paths(runner.hosts,
                                    {"config.data_dir": config.data_dir, "workdir": workdir})
    train_examples = dataset.split(config.input.train_split).num_examples
    plan = controller.plan_run(config, train_examples, runner.replicas,
                               runner.precision(config.precision, config.model))
    check_precision(workdir, saved, plan)
    finished = finished_run(workdir, saved, plan)
    check_workers_agree(runner, config, plan, dataset, workdir, finished is not None)
    if finished is not None:
      return finished
    # The model before the workdir: a builder that breaks the contract leaves nothing.
    model, optimizer, schedule, output = build(config, plan, dataset, runner, builder,
                                               users_code)
    need = memory.step_memory(model, config.optimizer, plan.precision,
                              plan.batch_size // runner.replicas)
    check_step_fits(need, runner)
    # Every write to the workdir from here on: bounded, said while it waits.
    watchdog = watchdog_lib.StorageWatchdog(workdir, config.storage_timeout_secs)
    cleanup.callback(watchdog.close)
    workdir_lock = None
    if runner.chief:  # one live run per workdir; the other workers share the chief's
      with watchdog.waiting("taking the workdir's lock"):
        workdir_lock = lock_lib.WorkdirLock(workdir).acquire()
        cleanup.callback(watchdog.guarded("releasing the workdir's lock", workdir_lock.release))
        config_path = storage.join(workdir, "config.json")
        if not tf.io.gfile.exists(config_path):
          # A run that fails before its first checkpoint leaves no config.json
          # behind: nothing then stops a retry with other settings. (Pushed
          # before the checkpoints' close: a save in flight ends first.)
          forget = watchdog.guarded("removing config.json", _forget_config, workdir,
                                    config_path)
          cleanup.push(lambda failed, *_: failed and forget())
    _log_plan(config, plan, train_examples, runner)

    runner.start(model, optimizer, schedule, plan, dataset, config.input, config.seed,
                 config.label_smoothing, from_logits=output == "logits")
    checkpoints = runner.checkpoints(workdir, config.keep_checkpoints)
    # A save still being written (asynchronously) ends before the lock is released.
    cleanup.callback(watchdog.guarded("finishing the last checkpoint", checkpoints.close))
    with watchdog.waiting("reading the latest checkpoint"):
      restored = checkpoints.restore()
      step = runner.step()
    if restored:
      check_progress(saved, step, plan, restored)
      watchdog.saved(restored)
    # config.json only once the resume is accepted: a refused run leaves the
    # workdir's run as it was.
    if runner.chief:
      with watchdog.waiting("writing config.json"):
        config_lib.save(_resolved(config, plan, dataset, runner, stack, output), config_path)
    with watchdog.waiting("reading history.json"):
      report = controller.Report(workdir, runner.chief, plan.total_steps, step,
                                 plan.batch_size)
    # Every step too: one blocked on input that does not come is said, bounded,
    # and ended by a stop signal.
    steps_watchdog = watchdog_lib.StepWatchdog(config.storage_timeout_secs, watchdog)
    cleanup.callback(steps_watchdog.close)
    evaluate_split = runner.evaluator(dataset, config.input.eval_split, plan.batch_size,
                                      config.input)

    def evaluate():
      with steps_watchdog.running("evaluation", f"records from {config.data_dir}"):
        return evaluate_split()
    cleanup.callback(watchdog.guarded("writing the last summaries", report.close))
    profiler = controller.Profiler(runner, config.profile_steps,
                                   storage.join(workdir, "train"), runner.chief)
    cleanup.callback(watchdog.guarded("writing the profile", profiler.close))

    phases.add("setup", phases.since_run_start())
    try:
      step, speed = controller.train(
          runner, plan, report, checkpoints, evaluate, profiler, sigterm,
          controller.EarlyStopping(config.early_stopping_patience), dataset.num_classes, step,
          watchdog, steps_watchdog, _input_source(config, runner.processes),
          renew_lock=workdir_lock.renew if workdir_lock else lambda: None,
          confirm_lock=workdir_lock.confirm if workdir_lock else lambda: None, phases=phases)
      with watchdog.waiting(f"finishing checkpoint {step}"), phases.timing("checkpoints"):
        checkpoints.wait()  # before metrics.json says the run is complete
      watchdog.saved(checkpoints.written)
      with phases.timing("evaluation"):
        final = evaluate()
    except tf.errors.DataLossError as e:  # from tf.data, on either backend
      raise manifest.explain_data_loss(config.data_dir, e) from None
    except tf.errors.NotFoundError as e:  # a shard gone (the service's own errors aside)
      if config.input.service and "iteration client" in str(e):
        raise service.explain_lost_job(config.input.service, watchdog.last_checkpoint) \
            from None
      raise manifest.explain_gone(dataset, e, watchdog.last_checkpoint) from None
    except tf.errors.ResourceExhaustedError as e:  # a device's memory, or a full disk
      if errors.disk_full_path(e) is not None:  # a checkpoint's write (cli.run says it)
        raise
      raise _out_of_memory(e, need, runner) from None
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.AbortedError, *runner.peer_errors) as e:
      cause = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      if runner.processes > 1 and not isinstance(e, tf.errors.AbortedError):
        raise errors.WorkerLost(
            f"A worker of this job was lost ({cause}). Start every worker again with the "
            "same command: they resume from the last checkpoint "
            f"({watchdog.last_checkpoint}).") from None
      if not watchdog_lib.is_storage_error(e):
        raise
      # TensorFlow's gs:// reads, after their own retries (minutes).
      raise errors.StorageUnavailable(
          f"the storage of config.data_dir={config.data_dir} did not answer while reading "
          f"the input ({cause}). Last checkpoint: {watchdog.last_checkpoint}. Run the same "
          "command again once it answers: it resumes from there.") from None
    with watchdog.waiting("writing the final summaries"):
      report.scalars("validation", final, step)
      report.close()

    result = _results(config, plan, runner, speed, final, step)
    if runner.chief:  # the export; a SIGTERM stops it at a safe point, exit 143
      sigterm.check_export()
      workdir_lock.confirm()
      with watchdog.waiting(f"exporting the model to {workdir}"):
        with phases.timing("export"):
          report.save_history()
          with runner.export_scope():
            export_lib.export(model, workdir, dataset.class_names, runner.save_serving_model,
                              safe_point=sigterm.check_export,
                              from_logits=output == "logits", image_shape=dataset.image_shape)
          sigterm.check_export()
        result["seconds"] = phases.summary()
        logging.info("%s", phases.describe())
        # Last: its presence means the run and its export are complete. A run
        # stopped before it (SIGTERM during export, say) finishes the export when rerun.
        storage.write_text(storage.join(workdir, "metrics.json"),
                           json.dumps(_strict_json(result), indent=2, allow_nan=False) + "\n")
    else:
      result["seconds"] = phases.summary()
    runner.finish()
    return result


def _input_source(config, processes: int) -> str:
  """What a training step waits for, as the step watchdog's lines name it."""
  if config.input.service:
    source = (f"batches from the tf.data service at {config.input.service} (are its "
              "workers up, and reachable from here by the names they advertise?)")
  else:
    source = f"records from {config.data_dir}"
  if processes > 1:
    source += (" or the other processes of this job (a worker lost? Start every worker "
               "again with the same command)")
  return source


def _forget_config(workdir: str, config_path: str) -> None:
  if (tf.io.gfile.exists(config_path)
      and not tf.io.gfile.glob(storage.join(workdir, "checkpoints", "*"))):
    tf.io.gfile.remove(config_path)


def build(config, plan: controller.Plan, dataset, runner, builder=None, users_code=False):
  """(model, optimizer, learning-rate schedule, output kind), the variables under
  the runner's scope (replicated over its devices). Same seed, same initial
  weights: reruns, and runs on another replica count, compare. config.init_from
  replaces them with a saved model's (the same on both backends, whose random
  numbers differ). A model not of ours (the user's builder, applications:NAME)
  is checked against the contract (models/custom.py) first; the output kind is
  'probabilities' or 'logits'."""
  if builder is None:
    builder, _, users_code = models.resolve(config.model)
  keras.mixed_precision.set_global_policy(plan.precision)
  keras.utils.set_random_seed(config.seed)
  schedule = optimizer_lib.learning_rate_schedule(config, plan.peak_lr, plan.steps_per_epoch,
                                                  plan.total_steps)
  shape, classes = tuple(dataset.image_shape), dataset.num_classes
  with runner.scope():
    if users_code:
      model = custom.call_builder(builder, config.model, shape, classes, config, runner.name)
      outside = custom.variables_outside(model, runner.made_in_scope)
      if outside:
        raise UserError(f"config.model={config.model!r} returned a model whose variables "
                        f"were made outside the strategy's scope ({', '.join(outside[:3])}"
                        f"{', ...' if len(outside) > 3 else ''}): build the model inside "
                        "the function (not before it, nor kept from an earlier call), so "
                        "that its variables live on every replica.")
    else:
      model = builder(shape, classes, config)
    output = "probabilities"
    if users_code or config.model.startswith(applications.PREFIX):
      output = custom.check(model, config.model, shape, classes, runner.name)
    if config.init_from:
      _init_from(model, config.init_from)
    optimizer = optimizer_lib.make_optimizer(config, schedule, plan.precision)
    # Without this, MirroredStrategy fails at the first step (placeholder error).
    optimizer.build(model.trainable_variables)
  if users_code:
    with runner.export_scope():
      custom.check_round_trip(model, config.model)
  logging.info("Model %s: %s parameters, %s out%s.", config.model,
               f"{model.count_params():,}", output,
               " (the loss and the exported signature apply the softmax)"
               if output == "logits" else "")
  return model, optimizer, schedule, output


def _init_from(model, path: str) -> None:
  source = keras.models.load_model(path, compile=False)
  shapes = [tuple(w.shape) for w in source.weights]
  if shapes != [tuple(w.shape) for w in model.weights]:
    raise UserError(f"config.init_from={path!r} is not a {model.name} for these images and "
                    "classes (its weights have other shapes): pass one trained with the "
                    "same config.model on the same dataset.")
  for target, value in zip(model.weights, source.get_weights()):
    target.assign(value)
  logging.info("Initial weights from %s.", path)


def _log_plan(config, plan: controller.Plan, train_examples: int, runner) -> None:
  logging.info("%s on %s: %d train examples, batch %d over %d replicas, %d steps (%d per "
               "epoch), %d steps per execution, %s (%s), peak learning rate %.4g.",
               config.model, runner.name, train_examples, plan.batch_size, runner.replicas,
               plan.total_steps, plan.steps_per_epoch, plan.steps_per_execution,
               plan.precision, plan.decisions["precision"], plan.peak_lr)


def _results(config, plan: controller.Plan, runner, speed: controller.Speed, final: dict,
             step: int) -> dict:
  """metrics.json: the final evaluation and the training speed."""
  rate, includes_compilation = speed.overall()
  if includes_compilation:
    logging.warning("The run was one execution (%d steps): too short to time without "
                    "compilation; examples_per_second %.0f includes it. Raise config.steps "
                    "or lower config.steps_per_execution for a steady rate.", step, rate)
  logging.info("Final evaluation on %s (%d examples): loss %.4f, accuracy %.4f.",
               config.input.eval_split, final["examples"], final["loss"], final["accuracy"])
  return {"accuracy": final["accuracy"], "loss": final["loss"],
          "eval_examples": final["examples"], "step": step, "total_steps": plan.total_steps,
          "batch_size": plan.batch_size, "stopped_early": step < plan.total_steps,
          "examples_per_second": rate,
          "examples_per_second_includes_compilation": includes_compilation,
          "replicas": runner.replicas, "precision": plan.precision,
          "model": config.model, "backend": runner.name,
          # Equal on every host of a healthy multi-host run.
          "weights_fingerprint": float(sum(
              (w.astype("float64") ** 2).sum() for w in runner.weights()))}


def _resolved(config, plan: controller.Plan, dataset, runner, stack,
              output: str) -> ml_collections.ConfigDict:
  """config.json: the config as run, with what was decided for it and why."""
  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.precision = plan.precision
  resolved.batch_size = plan.batch_size
  resolved.update({"image_shape": list(dataset.image_shape),
                   "class_names": list(dataset.class_names),
                   "dataset_identity": dataset.identity,
                   "model_output": output,
                   "replicas": runner.replicas,
                   "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
                   "peak_learning_rate": plan.peak_lr, "strategy_class": runner.description,
                   "versions": stack, "decisions": plan.decisions})
  return resolved
