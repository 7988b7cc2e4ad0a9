"""A profiled run: its trace read back with xprof's own converter (what
TensorBoard's profile pages show) has steps, and profile_summary.json and the log
line say the same; the input share follows an input made slow on purpose."""
import glob
import json
import os
import re
import time

import pytest
import tensorflow as tf

from configs import cnn as cnn_config
from conftest import run_cli
from tpu_trainer import training
from tpu_trainer.data import records

raw_to_tool_data = pytest.importorskip("xprof.convert.raw_to_tool_data")


def _tool(trace, name):
  return json.loads(raw_to_tool_data.xspace_to_tool_data([trace], name, {})[0])


def _config(digits_dir, **overrides):
  config = cnn_config.get_config()
  config.update({"data_dir": digits_dir, "batch_size": 64, "steps": 60,
                 "steps_per_execution": 5, "profile_steps": "20,45", **overrides})
  return config


def _summary(workdir):
  summary, = glob.glob(os.path.join(workdir, "train", "plugins", "profile", "*",
                                    "profile_summary.json"))
  return json.loads(open(summary).read())


def test_the_overview_page_has_steps_and_the_summary_reads_them(digits_dir, tmp_path):
  workdir = tmp_path / "w"
  result = run_cli("train", "--config=configs/cnn.py", f"--config.data_dir={digits_dir}",
                   f"--workdir={workdir}", "--config.batch_size=64", "--config.steps=60",
                   "--config.steps_per_execution=5", "--config.profile_steps=20,45")
  assert result.returncode == 0, result.stderr[-3000:]
  trace, = glob.glob(str(workdir / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  # The overview page's step-time table, as TensorBoard gets it.
  overview = _tool(trace, "overview_page")
  table = next(t for t in overview if isinstance(t, dict) and
               any(c.get("id") == "stepTimeMs" for c in t.get("cols", [])))
  assert len(table["rows"]) >= 3  # executions at 20, 25, ... 40; xprof drops edge steps
  assert float(table["p"]["steptime_ms_average"]) > 0
  analysis = _tool(trace, "input_pipeline_analyzer")
  assert "No step time measured" not in json.dumps(analysis)

  summary = _summary(str(workdir))
  assert summary["steps"] == len(table["rows"])
  assert summary["step_ms_average"] == pytest.approx(
      float(table["p"]["steptime_ms_average"]), abs=0.06)  # the page rounds to 0.1 ms
  assert 0 <= summary["input_share"] < 1
  assert summary["top_ops"] and all(0 < op["share"] <= 1 for op in summary["top_ops"])
  # Each op's time summed over the profiled steps (each step is its own copy of
  # the model's scope, cnn_1/..., cnn_19/...): a CNN's hot ops are its convolutions.
  hottest = summary["top_op_types"][0]
  assert "Conv" in hottest["type"] and hottest["share"] >= 0.2, summary["top_op_types"]
  assert not any(re.match(r"(gradient_tape/)?cnn_\d+/", op["op"]) for op in summary["top_ops"])
  assert len({(op["op"], op["type"]) for op in summary["top_ops"]}) == len(summary["top_ops"])
  line = next(l for l in result.stderr.splitlines() if "Profile: " in l)
  assert f"{summary['steps']} step(s) (executions)" in line
  assert f"{summary['step_ms_average']:.1f} ms each" in line
  assert f"most of the step's op time in {hottest['type']} {hottest['share']:.0%}" in line
  # Every profiled execution costs what the unprofiled ones do: the first of them
  # ran its steps before the trace began.
  times = [s["step_ms"] for s in summary["per_step"]]
  assert max(times) < 10 * min(times), times


def test_the_input_share_rises_when_the_input_is_slow(digits_dir, tmp_path, monkeypatch):
  one_device = tf.distribute.get_strategy()
  training.run(_config(digits_dir), str(tmp_path / "fast"), one_device)
  fast = _summary(str(tmp_path / "fast"))["input_share"]

  decode = records.decode_batch

  def slow_decode(serialized, dataset):  # a test-only dataset: 30 ms more per batch
    images, labels = decode(serialized, dataset)
    pause = tf.numpy_function(lambda: (time.sleep(0.03), 0)[1], [], tf.int64)
    with tf.control_dependencies([pause]):
      return tf.identity(images), labels

  monkeypatch.setattr(records, "decode_batch", slow_decode)
  config = _config(digits_dir)
  config.input.cache = False
  training.run(config, str(tmp_path / "slow"), one_device)
  slow = _summary(str(tmp_path / "slow"))["input_share"]
  assert slow > 0.3 and slow > fast + 0.2, (fast, slow)
