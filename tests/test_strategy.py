import json
import time

import pytest
import tensorflow as tf

from tpu_trainer import strategy as strategy_lib
from tpu_trainer.config import default_config
from conftest import run_cli


def test_auto_without_tpu_falls_back_to_cpu_replicas_quickly():
  start = time.perf_counter()
  strategy = strategy_lib.get_strategy("auto", cpu_devices=2)
  probe_and_pick = time.perf_counter() - start
  assert isinstance(strategy, tf.distribute.MirroredStrategy)
  assert strategy.num_replicas_in_sync == 2
  assert strategy_lib.platform(strategy) == "cpu"
  assert probe_and_pick < 60  # no minutes of TPU retries (about 0.2 s here)


def test_explicit_tpu_without_one_is_a_clear_error():
  with pytest.raises(ValueError, match="no TPU answered"):
    strategy_lib.get_strategy("tpu")


def test_gpu_without_one_is_a_clear_error():
  with pytest.raises(ValueError, match="sees no GPU"):
    strategy_lib.get_strategy("gpu")


def test_multiworker_needs_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ValueError, match="TF_CONFIG"):
    strategy_lib.get_strategy("multiworker")


@pytest.mark.parametrize("bf16,expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_precision_follows_platform(monkeypatch, bf16, expected):
  monkeypatch.setattr(strategy_lib, "cpu_has_bf16", lambda: bf16)
  # Replicas on logical CPUs, and the default strategy a lone CPU gets (no devices
  # of its own to ask).
  for strategy in strategy_lib.get_strategy("cpu"), tf.distribute.get_strategy():
    assert strategy_lib.platform(strategy) == "cpu"
    assert strategy_lib.resolve_precision("auto", strategy) == expected
    assert strategy_lib.resolve_precision("float32", strategy) == "float32"


@pytest.mark.parametrize("cpuinfo,expected", [("flags : fpu avx2 avx512_bf16 amx_tile", True),
                                              ("flags : fpu avx2 amx_bf16", True),
                                              ("flags : fpu avx2 avx512f", False)])
def test_bf16_detection_reads_cpu_flags(monkeypatch, tmp_path, cpuinfo, expected):
  fake = tmp_path / "cpuinfo"
  fake.write_text(cpuinfo + "\n")
  real_open = open
  monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
      fake if path == "/proc/cpuinfo" else path, *a, **k))
  assert strategy_lib.cpu_has_bf16() is expected


def test_cpu_split_after_init_is_explained():
  with pytest.raises(RuntimeError, match="cpu_devices=3"):
    strategy_lib.split_cpu(3)


def test_multi_host_slices_need_gcs_paths():
  strategy_lib.check_shared_paths(1, {"config.data_dir": "/data", "workdir": "/tmp/w"})
  strategy_lib.check_shared_paths(4, {"config.data_dir": "gs://b/d", "workdir": "gs://b/w"})
  with pytest.raises(ValueError, match=r"config.data_dir='/data' is a local path, but this "
                     r"TPU slice has 4 hosts"):
    strategy_lib.check_shared_paths(4, {"config.data_dir": "/data", "workdir": "gs://b/w"})
  with pytest.raises(ValueError, match="workdir='/tmp/w'"):
    strategy_lib.check_shared_paths(2, {"config.data_dir": "gs://b/d", "workdir": "/tmp/w"})
  assert strategy_lib.num_hosts(strategy_lib.get_strategy("cpu")) == 1


def _pci_bus(root, vendors):
  for i, vendor in enumerate(vendors):
    device = root / f"0000:00:0{i}.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
  return str(root)


def test_local_tpu_is_possible_only_with_a_google_pci_device(tmp_path):
  assert not strategy_lib.may_have_local_tpu(_pci_bus(tmp_path / "laptop", ["0x8086", "0x1af4"]))
  assert strategy_lib.may_have_local_tpu(_pci_bus(tmp_path / "tpu_vm", ["0x8086", "0x1ae0"]))
  assert strategy_lib.may_have_local_tpu(str(tmp_path / "no_sysfs"))  # cannot tell: probe


@pytest.mark.parametrize("kind,tpu,google_device,probed", [
    ("auto", "", False, False),       # a laptop: no probe
    ("auto", "", True, True),         # a TPU VM
    ("auto", "my-tpu", False, True),  # a named (remote) TPU is always asked
    ("tpu", "", False, True),         # strategy=tpu always asks, to say why not
])
def test_which_runs_probe_for_a_tpu(monkeypatch, kind, tpu, google_device, probed):
  calls = []
  monkeypatch.setattr(strategy_lib, "may_have_local_tpu", lambda: google_device)
  monkeypatch.setattr(strategy_lib, "_probe_tpu",
                      lambda *args: calls.append(args) or (None, "NotFoundError: none"))
  try:
    strategy_lib.get_strategy(kind, tpu)
  except ValueError:
    assert kind == "tpu"
  assert bool(calls) == probed


@pytest.mark.parametrize("model,bf16,expected", [
    ("mobilenet_v2", True, "float32"),    # bf16 makes its depthwise convolutions slower
    ("resnet50", True, "mixed_bfloat16"),
    ("cnn", False, "float32"),
])
def test_auto_precision_on_a_cpu_is_the_faster_one_for_the_model_and_says_why(
    monkeypatch, model, bf16, expected):
  from tpu_trainer.backends import tensorflow as tf_backend  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(strategy_lib, "cpu_has_bf16", lambda: bf16)
  config = default_config()
  config.strategy = "cpu"
  runner = tf_backend.Runner(config, tf.distribute.get_strategy())
  precision, reason = runner.precision("auto", model)
  assert precision == expected
  if model in tf_backend.CPU_BF16_SLOWER:
    assert f"float32 for {model}" in reason and "slower in bfloat16" in reason
  elif expected == "mixed_bfloat16":  # the log says how to check it on this machine
    assert "`tpu-trainer-benchmark precision` times both" in reason
  assert runner.precision("mixed_bfloat16", model)[0] == "mixed_bfloat16"  # as given


def test_a_lone_cpu_trains_on_the_default_strategy(digits_dir, tmp_path):
  """As plain Keras does: under OneDeviceStrategy a big model takes fresh pages
  from the kernel every step (README, Speed). A resumed run restores on it too."""
  args = ["--config=configs/mlp.py", f"--config.data_dir={digits_dir}",
          f"--workdir={tmp_path / 'w'}", "--config.batch_size=64", "--config.steps_per_execution=5"]
  first = run_cli("train", *args, "--config.steps=10")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "No TPU found; using the default strategy on the CPU" in first.stderr
  again = run_cli("train", *args, "--config.steps=20")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed from" in again.stderr and "ckpt-10" in again.stderr
  assert json.loads(again.stdout.splitlines()[0])["step"] == 20
