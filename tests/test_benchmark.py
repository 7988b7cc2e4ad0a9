import json

from conftest import run_cli
from tpu_trainer import benchmark


def test_input_benchmark_cli_reports_a_rate(digits_dir):
  result = run_cli("benchmark", "input", "--config=configs/cnn.py",
                   f"--config.data_dir={digits_dir}", "--config.batch_size=64",
                   "--seconds=1", "--nomodel_rate")
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout.splitlines()[-1])["input_examples_per_second"] > 1000


def test_verdict_says_which_side_waits():
  assert benchmark.verdict(1000, 1000).startswith("INPUT-BOUND")
  assert benchmark.verdict(2000, 1000).startswith("MARGINAL")
  assert benchmark.verdict(50_000, 1000).startswith("NOT input-bound")


def test_benchmark_needs_a_subcommand():
  result = run_cli("benchmark", "--config=configs/cnn.py")
  assert result.returncode == 2 and "usage: tpu-trainer-benchmark input" in result.stderr
