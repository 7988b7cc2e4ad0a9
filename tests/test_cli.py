"""The console entry points, run as a user runs them: real subprocesses."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from conftest import run_cli


@pytest.mark.core
def test_convert_train_eval_end_to_end(tmp_path):
  data, workdir = str(tmp_path / "data"), str(tmp_path / "work")
  result = run_cli("convert", "--source=digits", f"--output_dir={data}")
  assert result.returncode == 0, result.stderr
  assert '"train": {"examples": 1437, "shards": 16}' in result.stdout

  result = run_cli("train", "--config=configs/cnn.py", f"--workdir={workdir}",
                   f"--config.data_dir={data}", "--config.cpu_devices=2",
                   "--config.batch_size=64", "--config.epochs=6", "--config.base_lr=0.002")
  assert result.returncode == 0, result.stderr
  assert "MirroredStrategy over 2 logical CPU devices" in result.stderr
  metrics = json.loads(result.stdout.splitlines()[0])
  assert metrics["accuracy"] > 0.9 and metrics["eval_examples"] == 360
  # What the workdir holds, by content.
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert (saved["model"], saved["batch_size"], saved["replicas"]) == ("cnn", 64, 2)
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f) == metrics
  import zipfile  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert zipfile.is_zipfile(os.path.join(workdir, "model.keras"))
  assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith(
      f"ckpt-{metrics['step']}")
  for kind, tags in (("train", {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}),
                     ("validation", {"epoch_loss", "epoch_accuracy"})):
    events = os.path.join(workdir, kind, os.listdir(os.path.join(workdir, kind))[0])
    seen = {v.tag for e in tf.compat.v1.train.summary_iterator(events) for v in e.summary.value}
    assert tags <= seen, (kind, seen)

  result = run_cli("evaluate", f"--workdir={workdir}", f"--model={workdir}/saved_model")
  assert result.returncode == 0, result.stderr
  again = json.loads(result.stdout.splitlines()[-1])
  assert again["examples"] == 360
  assert again["accuracy"] == pytest.approx(metrics["accuracy"], abs=1 / 360)
  # A report a person can look at: per-class accuracy, a confusion matrix, predictions.
  with open(os.path.join(workdir, "eval_test.json")) as f:
    report = json.load(f)
  assert set(report["per_class_accuracy"]) == {str(i) for i in range(10)}
  confusion = report["confusion_matrix"]
  assert sum(map(sum, confusion)) == 360
  assert sum(confusion[i][i] for i in range(10)) / 360 == pytest.approx(again["accuracy"])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for name, min_size in (("eval_test_confusion.png", 300), ("eval_test_predictions.png", 300),
                         ("learning_curves.png", 300)):
    with Image.open(os.path.join(workdir, name)) as image:
      assert image.format == "PNG" and min(image.size) >= min_size
      assert len(image.convert("RGB").getcolors(1 << 20)) > 20  # a picture, not a blank

  result = run_cli("convert", "--verify", f"--output_dir={data}")
  assert result.returncode == 0 and "32 shards, 1797 examples" in result.stdout


def _assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, result.stderr
  for fragment in fragments:
    assert fragment in errors[0]
  assert "Traceback" not in result.stderr


def test_unknown_source(tmp_path):
  result = run_cli("convert", "--source=imagenet", f"--output_dir={tmp_path / 'out'}")
  _assert_one_line_error(result, "Unknown --source='imagenet'", "digits")
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flags,fragments", [
    (["--config.batchsize=64"], ["no such config key 'batchsize'", 'Did you mean "batch_size"']),
    (["--config.base_lr=-1"], ["config.base_lr=-1", "must be positive"]),
    (["--config.optimizer=lamb"], ["config.optimizer='lamb'", "adam, adamw, sgd"]),
    (["--config.input.train_split=tran"], ["Split 'tran' is not in", "it has: test, train"]),
    (["--config.model=vgg"], ["Unknown config.model='vgg'", "cnn"]),
    (["--config.data_dir=/no/such/dir"], ["No dataset_info.json", "tpu-trainer-convert"]),
    (["--config.batch_size=63", "--config.cpu_devices=2"], ["batch_size=63", "2 replicas"]),
])
def test_train_errors(digits_dir, tmp_path, flags, fragments):
  args = ["--config=configs/cnn.py:smoke", f"--workdir={tmp_path / 'w'}",
          f"--config.data_dir={digits_dir}"] + flags
  _assert_one_line_error(run_cli("train", *args), *fragments)
  assert not os.path.exists(tmp_path / "w")  # nothing written, not even config.json


def test_a_missing_config_file_is_one_error_line(tmp_path):
  result = run_cli("train", "--config=configs/nope.py", f"--workdir={tmp_path / 'w'}")
  _assert_one_line_error(result, "--config could not be loaded", "configs/nope.py",
                         "configs/cnn.py")


def test_a_workdir_that_is_a_file_is_refused(digits_dir, tmp_path):
  (tmp_path / "w").write_text("notes")
  result = run_cli("train", "--config=configs/cnn.py:smoke", f"--workdir={tmp_path / 'w'}",
                   f"--config.data_dir={digits_dir}")
  _assert_one_line_error(result, f"workdir={tmp_path / 'w'} is a file", "another --workdir")
  assert (tmp_path / "w").read_text() == "notes"


@pytest.mark.parametrize("tool,flag", [("convert", "--source"), ("train", "--workdir"),
                                       ("evaluate", "--workdir"), ("doctor", "--accelerator"),
                                       ("benchmark", "--model_rate"),
                                       ("dryrun", "--output_dir"),
                                       ("data_service", "--dispatcher")])
def test_help_shows_the_tools_own_flags_and_examples(tool, flag):
  result = run_cli(tool, "--help")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "Examples:" in out and out.count("  tpu-trainer-") >= 2
  assert f"  {flag}: " in out and "--helpfull" in out
  assert "--alsologtostderr" not in out  # absl's own flags only under --helpfull
  if tool not in ("convert", "data_service"):
    assert "--show_config" in out


@pytest.mark.parametrize("args", [["--help"], ["--config=configs/cnn.py", "--show_config"],
                                  ["--config=configs/cnn.py", "--config.nope=1"]])
def test_help_show_config_and_flag_errors_never_import_tensorflow(args):
  """They answer at once: TensorFlow's import is seconds of the answer's time."""
  for tool in ("train", "evaluate", "doctor", "benchmark", "dryrun", "data_service"):
    if tool in ("evaluate", "data_service") and args[0] != "--help":
      continue
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"tpu_trainer.cli.{tool}",
                             *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode in (0, 2), result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tensorflow" not in imported and "keras" not in imported, (tool, args)
    assert "jax" not in imported


def test_show_config_lists_every_key_with_its_meaning():
  result = run_cli("train", "--config=configs/conv_bn.py", "--show_config")
  assert result.returncode == 0, result.stderr
  from tpu_trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  lines = result.stdout.splitlines()
  default = config_lib.default_config()
  leaves = [k for k, v in default.items() if not hasattr(v, "items")] + [
      f"input.{k}" for k in default.input]
  assert sorted(l.split(" = ")[0] for l in lines) == sorted(leaves)
  assert all("  # " in l for l in lines)  # each with its meaning
  assert "optimizer = 'sgd'" in result.stdout
  assert any(l.startswith("input.cache = True") and "in memory" in l for l in lines)
  assert any(l.startswith("batch_size = 0") and "chosen for the dataset" in l for l in lines)


def test_paths_expand_the_home_directory(tmp_path):
  result = run_cli("convert", "--source=digits", "--output_dir=~/digits",
                   env={"HOME": str(tmp_path)})
  assert result.returncode == 0, result.stderr
  from tpu_trainer.data import manifest  # pylint: disable=g-import-not-at-top
  assert manifest.read(str(tmp_path / "digits")).splits["train"].num_examples == 1437


def test_a_diverging_run_exits_3_with_one_line_and_exports_nothing(digits_dir, tmp_path):
  # The issue's own example: SGD at a learning rate of 1e6 trains on NaN.
  workdir = tmp_path / "w"
  result = run_cli("train", "--config=configs/mlp.py", f"--workdir={workdir}",
                   f"--config.data_dir={digits_dir}", "--config.optimizer=sgd",
                   "--config.base_lr=1e6", "--config.steps=100")
  assert result.returncode == 3, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: The loss diverged (NaN, infinite, or a mean cross-entropy "
                         "above 12.1"), last
  assert "Last good checkpoint:" in last and "Traceback" not in result.stderr
  assert not (workdir / "metrics.json").exists() and not (workdir / "model.keras").exists()
  assert not (workdir / "saved_model").exists()


def test_an_early_explosion_that_recovers_is_not_divergence(tmp_path):
  """The seed MLP on 128x128x3 images (240 examples, batch 16, Adam): its first
  steps' loss explodes past 12.1 (a 49,152-wide input layer), then recovers, as
  plain Keras's does. It was stopped as diverged (exit 3) after its first
  execution; a finite loss above the limit is divergence only when it stays there."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (300, 128, 128, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 300)
  np.savez(tmp_path / "big.npz", x_train=images[:240], y_train=labels[:240],
           x_test=images[240:], y_test=labels[240:])
  converted = run_cli("convert", f"--source=npz:{tmp_path / 'big.npz'}",
                      f"--output_dir={tmp_path / 'data'}")
  assert converted.returncode == 0, converted.stderr[-3000:]
  # One step an execution: steps 2-6 are each above the limit (30.7, 32.0, 27.1, 27.9,
  # 15.0 here), five executions in a row, then it recovers.
  result = run_cli("train", "--config=configs/mlp.py", f"--config.data_dir={tmp_path / 'data'}",
                   f"--workdir={tmp_path / 'w'}", "--config.batch_size=16",
                   "--config.epochs=10", "--config.precision=float32",
                   "--config.steps_per_execution=1", "--config.log_every_steps=20")
  assert result.returncode == 0, result.stderr[-3000:]
  first = re.search(r"step 20/150 \(13%\): loss ([\d.]+)", result.stderr)
  assert first and float(first.group(1)) > 12.1, result.stderr[-3000:]  # it did explode
  assert json.loads((tmp_path / "w" / "metrics.json").read_text())["step"] == 150


def test_pretrained_weights_offline_are_one_line_and_the_retry_starts(digits_dir, tmp_path):
  """Offline (a laptop on a plane, a VM without egress): the weights download fails
  at once with what to do, and leaves nothing that blocks the retry."""
  offline = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
             "KERAS_HOME": str(tmp_path / "keras_home")}  # no cached weights either
  common = ["--config=configs/mobilenet_v2.py", f"--config.data_dir={digits_dir}",
            f"--workdir={tmp_path / 'w'}", "--config.steps=1", "--config.batch_size=32",
            "--config.precision=float32"]
  result = run_cli("train", *common, env=offline)
  _assert_one_line_error(result, "config.weights='imagenet'", "--config.weights=none")
  assert not (tmp_path / "w" / "config.json").exists()
  retry = run_cli("train", *common, "--config.weights=none", env=offline)
  assert retry.returncode == 0, retry.stderr[-3000:]


def test_plain_bad_input_is_one_error_line_not_a_traceback(digits_dir, tmp_path):
  from tpu_trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  config.data_dir = digits_dir
  config_lib.save(config, str(tmp_path / "run" / "config.json"))
  (tmp_path / "not_a_model").mkdir()
  (tmp_path / "cut.keras").write_bytes(b"PK\x03\x04 cut short in the copy")
  (tmp_path / "bad_config.py").write_text("def get_config(:\n")
  cases = [
      (("train", "--config=configs/mlp.py", "--config.data_dir=/etc/hostname",
        f"--workdir={tmp_path / 'w'}"), "is a file, not a dataset directory"),
      (("evaluate", f"--workdir={tmp_path / 'run'}", f"--model={tmp_path / 'not_a_model'}"),
       "neither a .keras file nor a SavedModel directory"),
      (("evaluate", f"--workdir={tmp_path / 'run'}", f"--model={tmp_path / 'cut.keras'}"),
       "cut.keras is not a .keras model (a Keras zip archive)"),
      (("evaluate", f"--workdir={tmp_path / 'run'}", "--batch_size=-5"),
       "--batch_size=-5 must be positive"),
      (("train", f"--config={tmp_path / 'bad_config.py'}", f"--workdir={tmp_path / 'w'}"),
       "has a syntax error at line 1"),
      (("train", "--config=configs/mlp.py:smok", "--show_config"),
       "configs/mlp.py:smok: this recipe knows :smoke"),
  ]
  for args, fragment in cases:
    _assert_one_line_error(run_cli(*args), fragment)
  result = run_cli("train", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
                   f"--workdir={tmp_path / 'w'}", "--config.strategy=multiworker",
                   env={"TF_CONFIG": "{bad"})
  _assert_one_line_error(result, "TF_CONFIG='{bad' is not a cluster description")


def _png_header(width, height):
  """A PNG that declares its size and holds no pixels: what Pillow reads first."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0)) + chunk(b"IEND", b""))


def test_damaged_files_are_one_error_line_naming_them(digits_dir, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for name in ("a", "b"):
    (tmp_path / "photos" / name).mkdir(parents=True)
    for i in range(2):
      Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(tmp_path / "photos" / name / f"{i}.png")
  # 196 megapixels: decoding it would take gigabytes (a decompression bomb).
  (tmp_path / "photos" / "b" / "huge.png").write_bytes(_png_header(14000, 14000))
  result = run_cli("convert", f"--source=folder:{tmp_path / 'photos'}",
                   f"--output_dir={tmp_path / 'out'}")
  _assert_one_line_error(result, "huge.png has more pixels than Pillow decodes safely",
                         "downscale it or remove it")
  assert not os.path.exists(tmp_path / "out")

  for name, text, fragment in [
      ("features.json", '{"image": ', "features.json is damaged"),
      ("features.json", '{"no": "features"}', "features.json does not describe TFDS features"),
      ("tpu_trainer.json", "[1, 2", "tpu_trainer.json is damaged")]:
    data = tmp_path / f"damaged_{name}"
    shutil.copytree(digits_dir, data)
    (data / name).write_text(text)
    _assert_one_line_error(run_cli("convert", "--verify", f"--output_dir={data}"), fragment)
    _assert_one_line_error(run_cli("train", "--config=configs/mlp.py:smoke",
                                   f"--config.data_dir={data}", f"--workdir={tmp_path / 'w'}"),
                           fragment)
    shutil.rmtree(data)
  # Converting over a dataset whose own record is damaged: which shards are ours is unknown.
  data = tmp_path / "again"
  shutil.copytree(digits_dir, data)
  (data / "tpu_trainer.json").write_text("[1, 2")
  _assert_one_line_error(run_cli("convert", "--source=digits", f"--output_dir={data}"),
                         "tpu_trainer.json is damaged", "convert into a new directory")
  assert sorted(os.listdir(data)) == sorted(os.listdir(digits_dir))


@pytest.mark.parametrize("body, raised", [
    ("import no_such_module\n", "ModuleNotFoundError at {file}:1: No module named "
                                "'no_such_module'"),
    ("import helper\ndef get_config():\n  return helper.build()\n",
     "ZeroDivisionError at {helper}:2: division by zero"),
])
def test_a_config_file_that_raises_is_one_line_naming_where(tmp_path, body, raised):
  """Its traceback is not the user's answer: the exception, and the line of their
  own code it came from (a helper module the config imports, too)."""
  (tmp_path / "helper.py").write_text("def build():\n  return 1 / 0\n")
  config = tmp_path / "my_config.py"
  config.write_text(body)
  result = run_cli("train", f"--config={config}", f"--workdir={tmp_path / 'w'}",
                   env={"PYTHONPATH": str(tmp_path)})
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  expected = raised.format(file=config, helper=tmp_path / "helper.py")
  assert lines == [f"error: the --config file raised {expected}; fix it (-v shows the "
                   "traceback), or pass another (e.g. configs/cnn.py)."], result.stderr
  assert not (tmp_path / "w").exists()


def test_a_run_says_where_its_time_went(digits_dir, tmp_path):
  """One line at the end and metrics.json's `seconds`: a small job's time is its
  fixed costs, and this is where a user sees which."""
  from tpu_trainer import controller  # pylint: disable=g-import-not-at-top
  result = run_cli("train", "--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
                   f"--workdir={tmp_path / 'w'}", "--config.steps=30",
                   "--config.steps_per_execution=10")
  assert result.returncode == 0, result.stderr[-3000:]
  seconds = json.loads((tmp_path / "w" / "metrics.json").read_text())["seconds"]
  assert list(seconds) == [*controller.Phases.NAMES, "other", "total"]
  assert all(s >= 0 for s in seconds.values()), seconds
  for phase in ("start-up and imports", "setup", "compile", "training", "evaluation",
                "export"):
    assert seconds[phase] > 0, (phase, seconds)
  assert sum(s for k, s in seconds.items() if k != "total") == pytest.approx(
      seconds["total"], abs=0.02)
  line = next(l for l in result.stderr.splitlines() if " Time: " in l)
  assert f"Time: {seconds['total']:.1f} s in all: start-up and imports" in line
  assert f"compile {seconds['compile']:.1f} s" in line or seconds["compile"] < 0.05
