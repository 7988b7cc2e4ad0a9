"""Is a job input-bound? The input pipeline's rate alone vs the training rate, and
the training rate vs the compute limit of its step. Is precision=auto's choice the
faster one for this model here?"""
import math
import os
import statistics
import tempfile
import time

import keras
import tensorflow as tf

from tpu_trainer import backends
from tpu_trainer import controller
from tpu_trainer import loop
from tpu_trainer import metrics
from tpu_trainer import scaling
from tpu_trainer import strategy as strategy_lib
from tpu_trainer import training
from tpu_trainer.data import manifest
from tpu_trainer.data import pipeline


def input_rates(config, seconds: float = 5.0) -> dict:
  """Examples/s one host's training input pipeline delivers, alone.

  `first_pass`: while it reads the files (for at most `seconds`): every epoch
  of an uncached split, the first one of a cached split. `steady`: after a
  whole first pass, for `seconds`: from memory when the split is cached (then
  `cached` is True), from the files again otherwise.
  """
  dataset = manifest.read(config.data_dir)
  examples = dataset.split(config.input.train_split).num_examples
  batch = scaling.resolve(config, examples, 1)[0]
  dataset_fn = pipeline.train_input_fn(dataset, batch, config.input, seed=config.seed)
  iterator = iter(dataset_fn(tf.distribute.InputContext()))
  next(iterator)  # start-up: threads, the first files opened
  per_epoch = max(1, examples // batch)

  def rate(max_batches, max_seconds):
    batches, start = 0, time.perf_counter()
    while batches < max_batches and time.perf_counter() - start < max_seconds:
      next(iterator)
      batches += 1
    return batches * batch / (time.perf_counter() - start), batches

  first_pass, read = rate(per_epoch - 1, seconds)
  for _ in range(per_epoch + 1 - read):  # the rest of the first pass: fills a cache
    next(iterator)
  steady, _ = rate(float("inf"), seconds)
  return {"first_pass": first_pass, "steady": steady,
          "cached": pipeline.fits_cache(dataset, config.input.train_split, 1, config.input)}


def service_worker_rate(config, seconds: float = 5.0) -> float:
  """Examples/s one tf.data service worker delivers on this job's training
  pipeline, with this machine's cores (a worker and a dispatcher in this process):
  what one worker VM of the same size adds."""
  from tpu_trainer.data import service  # pylint: disable=g-import-not-at-top
  with service.local_service(workers=1) as address:
    config = config.copy_and_resolve_references()
    config.input.service, config.input.service_job = address, ""
    return input_rates(config, seconds)["steady"]


def workers_needed(need_per_s: float, worker_per_s: float) -> str:
  """How many such workers feed `need_per_s`, said as advice."""
  # Rounded first: 10 x a rate over that rate is 10.000000000000002 for 1.6% of
  # rates, and ceil made it 11 workers.
  workers = max(1, math.ceil(round(need_per_s / max(worker_per_s, 1e-9), 6)))
  return (f"one tf.data service worker with this machine's {os.cpu_count()} cores gives "
          f"{worker_per_s:,.0f} examples/s on this pipeline: ~{workers} such worker(s) would "
          f"feed {need_per_s:,.0f} examples/s (scripts/launch_tpu.sh "
          f"--data_service_workers={workers}; bigger machines need fewer).")


def training_rate(config, steps: int = 0, strategy=None) -> dict:
  """Trains a few executions into a temp workdir; the steady-state rate."""
  config = config.copy_and_resolve_references()
  config.steps = steps or 6 * config.steps_per_execution
  config.eval_every_epochs = 10**6
  config.profile_steps = ""
  with tempfile.TemporaryDirectory(prefix="tpu_trainer_bench_") as workdir:
    return training.run(config, workdir, strategy)


def compute_limit(config, strategy=None, seconds: float = 10.0) -> dict:
  """The compute limit of a training config on this machine (TensorFlow backend):
  the same train step (model, optimizer, precision, batch, loss, metrics) on one
  batch of the real input held on the devices, repeated in one compiled loop.
  No input pipeline, no host work between steps: the rate a run can approach.
  Returns examples_per_second, precision and batch_size."""
  dataset = manifest.read(config.data_dir)
  runner = backends.runner(config, strategy)
  plan = controller.plan_run(config, dataset.split(config.input.train_split).num_examples,
                             runner.replicas, runner.precision(config.precision, config.model))
  model, optimizer, _, output = training.build(config, plan, dataset, runner)
  strategy = runner.strategy
  step_fn = loop.train_step(model, optimizer, plan.batch_size, config.label_smoothing,
                            dataset.num_classes, metrics.Totals(strategy, "train"),
                            loop.Signals(strategy), from_logits=output == "logits")
  batch = next(iter(strategy.distribute_datasets_from_function(pipeline.train_input_fn(
      dataset, plan.batch_size, config.input, seed=config.seed))))

  @tf.function(autograph=False)
  def repeat(steps):
    def step(i):
      strategy.run(step_fn, args=batch)
      return i + 1
    tf.while_loop(lambda i: i < steps, step, [tf.constant(0)])

  def timed(steps: int) -> float:
    start = time.perf_counter()
    repeat(tf.constant(steps))
    optimizer.iterations.numpy()  # waits for the devices
    return time.perf_counter() - start

  timed(plan.steps_per_execution)  # tracing and compilation
  per_step = timed(plan.steps_per_execution) / plan.steps_per_execution
  steps = max(plan.steps_per_execution, int(seconds / per_step))
  return {"examples_per_second": steps * plan.batch_size / timed(steps),
          "precision": plan.precision, "batch_size": plan.batch_size}


# Input below this multiple of the training rate leaves the accelerator waiting.
INPUT_BOUND_RATIO = 1.2


def verdict(input_per_s: float, train_per_s: float) -> str:
  ratio = input_per_s / train_per_s
  if ratio < INPUT_BOUND_RATIO:
    return (f"INPUT-BOUND: the pipeline gives {ratio:.1f}x what training consumes; the "
            "accelerator will wait. More shards/hosts, raw encoding, cache, or tf.data service.")
  if ratio < 3:
    return f"MARGINAL: the pipeline gives {ratio:.1f}x what training consumes; headroom is thin."
  return f"NOT input-bound: the pipeline gives {ratio:.1f}x what training consumes."


def precision_rates(config, strategy, runs: int = 2, seconds: float = 5.0) -> dict:
  """The compute limit of the config's model in float32 and in the platform's mixed
  precision (what precision=auto gives any model here), alternately `runs` times,
  so that both see the same machine. Returns {"rates": {precision: [examples/s per
  run]}, "auto": auto's choice for this model, "reason": why}."""
  runner = backends.runner(config, strategy)
  auto, reason = runner.precision("auto", config.model)
  candidates = dict.fromkeys(["float32", strategy_lib.resolve_precision("auto", runner.strategy)])
  rates = {precision: [] for precision in candidates}
  policy = keras.mixed_precision.global_policy()
  try:
    for _ in range(runs):
      for precision in rates:
        measured = config.copy_and_resolve_references()
        measured.precision = precision
        rates[precision].append(
            compute_limit(measured, runner.strategy, seconds)["examples_per_second"])
  finally:
    keras.mixed_precision.set_global_policy(policy)
  return {"rates": rates, "auto": auto, "reason": reason}


# Within this, two precisions' rates are the same on a shared machine.
SAME_SPEED = 0.9


def precision_verdict(rates: dict, auto: str) -> str:
  """Whether auto's choice is the faster precision here, from precision_rates'
  rates (the median of the runs' ratios, each within its run)."""
  if len(rates) == 1:
    return f"precision=auto picks {auto}: the only one this platform has (no bf16 or fp16 units)."
  other, = [p for p in rates if p != auto]
  ratio = statistics.median(a / o for a, o in zip(rates[auto], rates[other]))
  if ratio >= 1:
    return f"precision=auto picks {auto}: the faster one here ({ratio:.2f}x {other})."
  if ratio >= SAME_SPEED:
    return (f"precision=auto picks {auto}: as fast as {other} here, within this "
            f"measurement's noise ({ratio:.2f}x).")
  return (f"SLOWER: precision=auto picks {auto}, but {other} trains this model {1 / ratio:.2f}x "
          f"faster here: pass --config.precision={other}.")
