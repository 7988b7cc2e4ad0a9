"""tpu-trainer-benchmark input: will this job wait on its input pipeline?
tpu-trainer-benchmark precision: is precision=auto's choice the faster one here?

Examples:
  tpu-trainer-benchmark input --config=configs/cnn.py --config.data_dir=/tmp/digits
  tpu-trainer-benchmark precision --config=configs/conv_bn.py --data_dir=/tmp/digits
  tpu-trainer-benchmark input --config=configs/resnet50.py --data_dir=gs://B/imagenet \\
      --model_rate=false --seconds=20
  tpu-trainer-benchmark --config=configs/cnn.py --show_config    # every config key

Prints the pipeline's examples/s alone, reading the files and after a first
pass (from memory when the split is cached); with --model_rate (default on)
also the training rate of the config's model on this machine, and a verdict;
on the TensorFlow backend also the compute limit (the same train step on a
batch held on the devices, no input) and the share of it training reaches.

`precision` times that compute limit in float32 and in the platform's mixed
precision, alternately (--runs times each), and says whether precision=auto's
choice for this model is the faster one on this machine (TensorFlow backend).
"""
import json

from absl import flags

from tpu_trainer import cli
from tpu_trainer.errors import UserError


FLAGS = flags.FLAGS
cli.define_config_flags()
flags.DEFINE_string("data_dir", "", "Shortcut for --config.data_dir.")
flags.DEFINE_float("seconds", 5.0, "How long to time the pipeline, and each compute limit.")
flags.DEFINE_bool("model_rate", True, "Also measure the training rate and give a verdict.")
flags.DEFINE_integer("runs", 2, "precision: measurements of each precision, alternating.")
USAGE = "usage: tpu-trainer-benchmark input|precision --config=configs/X.py --data_dir=DIR"


def main(argv):
  if FLAGS.show_config:
    cli.config_from_flags(FLAGS)
    return
  if len(argv) != 2 or argv[1] not in ("input", "precision"):
    raise UserError(USAGE)
  config = cli.config_from_flags(FLAGS)
  if FLAGS.data_dir:
    config.data_dir = cli.expand_path(FLAGS.data_dir)
  if not config.data_dir:
    raise UserError("Pass --data_dir=DIR or --config.data_dir=DIR.")
  if argv[1] == "precision":
    precision(config)
    return
  from tpu_trainer import benchmark  # pylint: disable=g-import-not-at-top
  strategy = None
  if FLAGS.model_rate and config.backend == "tensorflow":  # one for both measurements
    from tpu_trainer import backends  # pylint: disable=g-import-not-at-top
    strategy = backends.runner(config).strategy
  train = benchmark.training_rate(config, strategy=strategy) if FLAGS.model_rate else None
  rates = benchmark.input_rates(config, FLAGS.seconds)
  rate = rates["steady"]
  result = {"input_examples_per_second": round(rate),
            "input_first_pass_examples_per_second": round(rates["first_pass"]),
            "input_cached": rates["cached"]}
  print(f"input pipeline (one host): {rates['first_pass']:,.0f} examples/s reading the files, "
        f"{rate:,.0f} examples/s after a first pass "
        + ("(from the cache)" if rates["cached"] else "(not cached: from the files again)"))
  if train:
    result["training_examples_per_second"] = round(train["examples_per_second"])
    print(f"training {config.model}: {train['examples_per_second']:,.0f} examples/s "
          f"({train['replicas']} replicas, {train['precision']})")
    if strategy is not None:
      limit = benchmark.compute_limit(config, strategy, FLAGS.seconds)["examples_per_second"]
      share = train["examples_per_second"] / limit
      result["compute_limit_examples_per_second"] = round(limit)
      result["training_share_of_compute_limit"] = round(share, 2)
      print(f"compute limit: {limit:,.0f} examples/s (the train step alone, on a batch held "
            f"on the devices); training reaches {share:.0%} of it")
    print(benchmark.verdict(rate, train["examples_per_second"]))
    need = benchmark.INPUT_BOUND_RATIO * train["examples_per_second"]
    if rate < need:
      worker = benchmark.service_worker_rate(config, FLAGS.seconds)
      result["service_worker_examples_per_second"] = round(worker)
      print(benchmark.workers_needed(need, worker))
  print(json.dumps(result))


def precision(config):
  if config.backend != "tensorflow":
    raise UserError("tpu-trainer-benchmark precision times the TensorFlow step: drop "
                    "--config.backend=jax (under JAX, auto is float32 on a CPU and bf16 on a TPU).")
  if FLAGS.runs < 1:
    raise UserError(f"--runs={FLAGS.runs}: pass 1 or more.")
  from tpu_trainer import benchmark  # pylint: disable=g-import-not-at-top
  measured = benchmark.precision_rates(config, None, FLAGS.runs, FLAGS.seconds)
  rates = measured["rates"]
  for name, values in rates.items():
    print(f"compute limit of {config.model} in {name}: "
          + ", ".join(f"{v:,.0f}" for v in values) + " examples/s")
  print(f"precision=auto for {config.model}: {measured['auto']} ({measured['reason']})")
  print(benchmark.precision_verdict(rates, measured["auto"]))
  print(json.dumps({"model": config.model, "auto": measured["auto"],
                    "compute_limit_examples_per_second": {
                        name: [round(v) for v in values] for name, values in rates.items()}}))


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
