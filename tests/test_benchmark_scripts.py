"""Each benchmark script, run small, still works and prints its comparison."""
import json
import subprocess
import sys

from conftest import REPO


def _run(script, *args):
  result = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_train_throughput_reports_four_columns_and_the_gains():
  out = _run("train_throughput.py", "--models=mlp", "--epochs=2", "--repeat=2",
             "--batch_size=64", "--steps_per_execution=5")
  row, = json.loads(out.splitlines()[-1])
  for column in ("tutorial", "+precision", "best_keras", "ours"):
    assert row[f"{column}_ex_s"] > 0 and 0 <= row[f"{column}_accuracy"] <= 1
  assert row["ours_vs_tutorial"] == round(row["ours_ex_s"] / row["tutorial_ex_s"], 2)
  assert "ours / best plain Keras" in out


def test_accuracy_prints_a_row_per_recipe():
  out = _run("accuracy.py", "--recipes=mlp", "--epochs=1", "--seeds=1")
  rows = [l for l in out.splitlines() if l.startswith("| digits")]
  assert len(rows) == 1 and "| mlp |" in rows[0]


def test_convert_throughput_compares_with_a_bare_writer():
  out = _run("convert_throughput.py", "--examples=3000", "--encodings=raw", "--nobeam")
  assert "bare TFRecordWriter" in out and "tpu-trainer-convert" in out and "--verify" in out
