import json

from conftest import run_cli
from tpu_trainer import benchmark


def test_input_benchmark_cli_reports_a_rate(digits_dir):
  result = run_cli("benchmark", "input", "--config=configs/cnn.py",
                   f"--config.data_dir={digits_dir}", "--config.batch_size=64",
                   "--seconds=1", "--nomodel_rate")
  assert result.returncode == 0, result.stderr
  rates = json.loads(result.stdout.splitlines()[-1])
  # Rates measured, not judged: a loaded machine's are anything (benchmarks/ judges them).
  assert rates["input_examples_per_second"] > 0 and rates["input_cached"] is True
  assert rates["input_first_pass_examples_per_second"] > 0
  assert "reading the files" in result.stdout and "(from the cache)" in result.stdout


def test_benchmark_cli_reports_the_training_rate_against_the_compute_limit(digits_dir):
  """A user's own job: how fast it trains, and what share of its step's compute
  limit on this machine that is."""
  result = run_cli("benchmark", "input", "--config=configs/mlp.py",
                   f"--config.data_dir={digits_dir}", "--config.batch_size=64",
                   "--config.steps_per_execution=5", "--seconds=1")
  assert result.returncode == 0, result.stderr
  rates = json.loads(result.stdout.splitlines()[-1])
  assert rates["training_examples_per_second"] > 0
  assert rates["compute_limit_examples_per_second"] > 0
  share = rates["training_examples_per_second"] / rates["compute_limit_examples_per_second"]
  assert rates["training_share_of_compute_limit"] == round(share, 2)
  assert f"training reaches {share:.0%} of it" in result.stdout


def test_input_rates_cached_and_uncached(digits_dir):
  from configs import cnn as cnn_config  # pylint: disable=g-import-not-at-top
  config = cnn_config.get_config()
  config.data_dir, config.batch_size = digits_dir, 64
  assert benchmark.input_rates(config, 0.5)["cached"] is True
  config.input.cache = False
  rates = benchmark.input_rates(config, 0.5)
  assert rates["cached"] is False and rates["first_pass"] > 0 and rates["steady"] > 0


def test_verdict_says_which_side_waits():
  assert benchmark.verdict(1000, 1000).startswith("INPUT-BOUND")
  assert benchmark.verdict(2000, 1000).startswith("MARGINAL")
  assert benchmark.verdict(50_000, 1000).startswith("NOT input-bound")


def test_benchmark_needs_a_subcommand():
  result = run_cli("benchmark", "--config=configs/cnn.py")
  assert result.returncode == 2 and "usage: tpu-trainer-benchmark input" in result.stderr


def test_one_service_workers_rate_and_the_workers_it_takes(digits_dir):
  from configs import cnn as cnn_config  # pylint: disable=g-import-not-at-top
  config = cnn_config.get_config()
  config.data_dir, config.batch_size = digits_dir, 64
  rate = benchmark.service_worker_rate(config, 0.5)
  assert rate > 0
  advice = benchmark.workers_needed(10 * rate, rate)
  assert "~10 such worker(s)" in advice and "--data_service_workers=10" in advice


def test_the_workers_it_takes_is_exact_whatever_the_rate():
  for rate in (52561.13610627476, 56031.50786580748, 0.3, 7.0):  # 10x / x is 10.000...02
    assert "~10 such worker(s)" in benchmark.workers_needed(10 * rate, rate), rate
  assert "~11 such worker(s)" in benchmark.workers_needed(10.01 * 7.0, 7.0)
  assert "~1 such worker(s)" in benchmark.workers_needed(0.5, 7.0)


def test_compute_limit_times_the_runs_own_step_without_input(digits_dir):
  """The step a run takes (its batch and precision), on one batch held on the
  device, timed on one replica and on 2."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from configs import cnn as cnn_config  # pylint: disable=g-import-not-at-top
  config = cnn_config.get_config()
  config.update({"data_dir": digits_dir, "batch_size": 64, "steps_per_execution": 5,
                 "precision": "float32"})
  limit = benchmark.compute_limit(config, tf.distribute.get_strategy(), 1.0)
  assert limit["batch_size"] == 64 and limit["precision"] == "float32"
  assert limit["examples_per_second"] > 0
  two = benchmark.compute_limit(config, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                                1.0)
  assert two["batch_size"] == 64 and two["examples_per_second"] > 0


def test_precision_benchmark_times_both_precisions_and_says_whether_auto_is_faster(digits_dir):
  """A user on another CPU or GPU: is precision=auto's choice the faster one for
  this model on this machine?"""
  from tpu_trainer import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  result = run_cli("benchmark", "precision", "--config=configs/mobilenet_v2.py",
                   f"--data_dir={digits_dir}", "--config.weights=none", "--config.batch_size=16",
                   "--config.steps_per_execution=2", "--seconds=0.3", "--runs=2")
  assert result.returncode == 0, result.stderr[-3000:]
  measured = json.loads(result.stdout.splitlines()[-1])
  rates = measured["compute_limit_examples_per_second"]
  bf16 = strategy_lib.cpu_has_bf16()
  assert list(rates) == (["float32", "mixed_bfloat16"] if bf16 else ["float32"])
  assert all(len(runs) == 2 and min(runs) > 0 for runs in rates.values())
  # The per-model rule: float32 for mobilenet_v2 on a bf16 CPU, and the log says why.
  assert measured["auto"] == "float32"
  assert "precision=auto for mobilenet_v2: float32 (" in result.stdout
  verdict = result.stdout.splitlines()[-2]
  assert verdict.startswith(("precision=auto picks float32", "SLOWER: precision=auto"))


def test_precision_verdict_names_the_faster_precision_when_auto_is_slower():
  fp32, bf16 = "float32", "mixed_bfloat16"
  assert benchmark.precision_verdict({fp32: [100, 110], bf16: [150, 160]}, bf16).startswith(
      "precision=auto picks mixed_bfloat16: the faster one here (1.48x float32)")
  assert "within this measurement's noise (0.95x)" in benchmark.precision_verdict(
      {fp32: [100], bf16: [95]}, bf16)
  slower = benchmark.precision_verdict({fp32: [100, 100, 100], bf16: [50, 80, 60]}, bf16)
  assert slower == ("SLOWER: precision=auto picks mixed_bfloat16, but float32 trains this "
                    "model 1.67x faster here: pass --config.precision=float32.")
  assert "the only one" in benchmark.precision_verdict({fp32: [100]}, fp32)
