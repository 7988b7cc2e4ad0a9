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


def test_train_throughput_reports_every_column_the_gains_and_the_limit():
  out = _run("train_throughput.py", "--models=mlp", "--epochs=2", "--repeat=2",
             "--batch_size=64", "--steps_per_execution=5", "--min_seconds=0", "--runs=2")
  rows = json.loads(next(line for line in out.splitlines() if line.startswith("[{")))
  assert [r["run"] for r in rows] == [1, 2]
  row = rows[0]
  for column in ("tutorial", "+precision", "best_keras", "ours", "ours_jax"):
    assert row[f"{column}_ex_s"] > 0 and 0 <= row[f"{column}_accuracy"] <= 1
  assert row["ours_vs_tutorial"] == round(row["ours_ex_s"] / row["tutorial_ex_s"], 2)
  assert row["ours_vs_best_keras"] == round(row["ours_ex_s"] / row["best_keras_ex_s"], 2)
  # The compute limit: the same step with no input, so above any real run's rate.
  assert row["limit_ex_s"] > row["ours_ex_s"] / 2
  assert row["ours_share_of_limit"] == round(row["ours_ex_s"] / row["limit_ex_s"], 2)
  assert "ours / best plain Keras" in out and "ours / compute limit" in out
  assert row["jax_precision"] == "float32"  # auto under JAX on a CPU
  assert row["jax_vs_tensorflow"] == round(row["ours_jax_ex_s"] / row["ours_ex_s"], 2)
  # The README's table: one line per model, each column's range over the two runs.
  line, = [l for l in out.splitlines() if l.startswith("| mlp (28×28, batch 64, 2 epochs)")]
  low, high = sorted(r["ours_ex_s"] for r in rows)
  assert f" {low:,}–{high:,} |" in line or (low == high and f" {low:,} |" in line)
  assert line.endswith("% |")  # ours / limit


def test_accuracy_compares_each_recipe_on_digits_and_a_given_npz(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import sources  # pylint: disable=g-import-not-at-top
  digits, arrays = sources.digits(), {}
  for split in ("train", "test"):
    images, labels = zip(*digits.splits[split].read(range(300)))
    arrays[f"x_{split}"], arrays[f"y_{split}"] = np.stack(images)[..., 0], np.array(labels)
  np.savez(tmp_path / "small.npz", **arrays)
  out = _run("accuracy.py", f"--datasets=digits,npz:{tmp_path / 'small.npz'}", "--recipes=mlp",
             "--epochs=1", "--seeds=1", "--override=precision=float32,input.augment=False")
  rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
          if line.startswith("| digits") or line.startswith("| small")]
  assert [(r[0], r[1]) for r in rows] == [("digits (1437 train)", "mlp"),
                                          ("small (300 train)", "mlp")]
  for row in rows:  # both sides' accuracy and time, from the same run
    plain, plain_s, ours, ours_s = float(row[2]), row[3], float(row[4]), row[5]
    assert 0 <= plain <= 1 and 0 <= ours <= 1 and plain_s.endswith(" s") and ours_s.endswith(" s")
    assert row[6].startswith("32, ")  # ours: the batch the rule chose for that dataset
    assert row[6].endswith(", float32")  # and --override reached our config


def test_convert_throughput_compares_with_a_bare_writer():
  out = _run("convert_throughput.py", "--examples=3000", "--encodings=raw", "--nobeam")
  assert "bare TFRecordWriter" in out and "tpu-trainer-convert" in out and "--verify" in out


def test_data_service_throughput_times_the_pipeline_with_and_without_workers():
  out = _run("data_service_throughput.py", "--examples=64", "--image_size=32",
             "--batch_size=16", "--seconds=1", "--workers=0,1")
  rows = json.loads(out.splitlines()[-1])
  assert [r["workers"] for r in rows] == [0, 1]
  assert all(r["examples_per_second"] > 0 for r in rows)
  assert rows[1]["per_worker"] == rows[1]["examples_per_second"]
  assert "1 worker process(es)" in out and "per worker" in out


def test_small_job_wall_time_times_both_whole_processes():
  out = _run("small_job_wall_time.py", "--models=mlp", "--runs=1")
  row, = json.loads(out.splitlines()[-1])
  assert row["model"] == "mlp" and len(row["ours_s"]) == len(row["plain_keras_s"]) == 1
  assert row["ours_s"][0] > 1 and row["plain_keras_s"][0] > 1  # processes, imports included
  # from the unrounded times: the rounded ones give it within 0.02
  assert abs(row["plain_over_ours"] - row["plain_keras_s"][0] / row["ours_s"][0]) < 0.02
  assert row["ours_accuracy"][0] > 0.8 and row["plain_accuracy"][0] > 0.8
  assert "plain / ours" in out
  table_row = f"| mlp | {row['ours_s'][0]:.1f} s | {row['plain_keras_s'][0]:.1f} s | "
  assert table_row in out  # the README's table


def test_adopted_input_compares_adopted_and_our_shards_in_one_run():
  out = _run("adopted_input.py", "--images=400", "--size=32", "--runs=1", "--seconds=0.5")
  line, = [l for l in out.splitlines() if l.startswith("input pipeline:")]
  adopted, ours = (float(part.split()[-2].replace(",", ""))
                   for part in line.split("|")[:2])
  assert adopted > 0 and ours > 0
  assert line.endswith(f"adopted / ours {adopted / ours:.2f}")
  assert "CPU with" in out


def test_sigterm_exit_times_each_recipe_from_the_signal_to_its_checkpoint_and_exit():
  out = _run("sigterm_exit.py", "--recipes=mlp", "--backends=tensorflow", "--size=16",
             "--seconds=1")
  assert "2 CPU cores" in out or "CPU cores" in out
  row, = [l for l in out.splitlines() if l.startswith("| mlp | tensorflow |")]
  saved, exited = (float(cell.strip().rstrip(" s")) for cell in row.split("|")[3:5])
  assert 0 <= saved <= exited
  assert row.split("|")[5].strip() in ("within both", "spot VMs only", "neither")
