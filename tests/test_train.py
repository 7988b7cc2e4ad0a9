import glob
import json
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

from configs import cnn as cnn_config
from configs import mlp as mlp_config
from tpu_trainer import evaluation
from tpu_trainer import export as export_lib
from tpu_trainer import loop
from tpu_trainer import optimizer as optimizer_lib
from tpu_trainer import strategy as strategy_lib
from tpu_trainer import training
from tpu_trainer.backends import tensorflow as tf_backend
from test_exact_resume import tf_checkpoint


def _scalar_tags(logdir):
  tags = set()
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags |= {v.tag for v in event.summary.value}
  return tags


def _digits_config(base, digits_dir, **overrides):
  config = base.get_config()
  config.data_dir = digits_dir
  config.batch_size = 64
  config.base_lr = 0.002  # 2.8e-3 at batch 64
  config.steps_per_execution = 5
  for key, value in overrides.items():  # input keys (cache=...) go to config.input
    (config.input if key in config.input else config)[key] = value
  return config


@pytest.mark.core
def test_two_replicas_train_evaluate_and_export(digits_dir, tmp_path):
  strategy = strategy_lib.get_strategy("cpu")
  assert strategy.num_replicas_in_sync == 2
  workdir = str(tmp_path / "w")
  config = _digits_config(cnn_config, digits_dir, epochs=4)
  metrics = training.run(config, workdir, strategy)

  assert metrics["accuracy"] > 0.85
  assert metrics["eval_examples"] == 360  # every test example, though 360 % 64 != 0
  assert metrics["examples_per_second"] > 0 and metrics["replicas"] == 2
  assert metrics["step"] == 4 * (1437 // 64)
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["accuracy"] == metrics["accuracy"]
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["replicas"] == 2 and saved["precision"] in ("float32", "mixed_bfloat16")
  assert saved["peak_learning_rate"] == pytest.approx(0.002 * (64 / 32) ** 0.5)

  assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "examples_per_second"} == _scalar_tags(
      os.path.join(workdir, "train"))
  assert {"epoch_loss", "epoch_accuracy"} == _scalar_tags(os.path.join(workdir, "validation"))
  assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "learning_curves.png"))  # eval draws it

  # The exported models give the same answer as the final evaluation.
  for model_path in ("", os.path.join(workdir, "saved_model")):
    again = evaluation.evaluate(workdir, model_path=model_path)
    assert again["examples"] == 360
    assert again["accuracy"] == pytest.approx(metrics["accuracy"], abs=1 / 360)


@pytest.mark.core
def test_the_exported_models_score_images_in_either_convention(digits_dir, tmp_path):
  """uint8 0-255 as the pipeline feeds, float 0-255, and float 0-1 (x / 255, the
  usual habit) all get the same answer from model.keras loaded the Keras way,
  from the SavedModel's signature, and through a TF1 session as saved_model_cli
  and TF Serving load it."""
  workdir = str(tmp_path / "w")
  metrics = training.run(_digits_config(mlp_config, digits_dir, steps=60, precision="float32"),
                      workdir, tf.distribute.get_strategy())
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images, labels = tfds.as_numpy(tfds.builder_from_directory(digits_dir).as_dataset(
      split="test", as_supervised=True, batch_size=-1))
  conventions = [images, images.astype(np.float32), images / 255.0]

  import keras  # pylint: disable=g-import-not-at-top
  model = keras.models.load_model(os.path.join(workdir, "model.keras"))
  for x in conventions:
    accuracy = (model.predict(x, verbose=0).argmax(-1) == labels).mean()
    assert accuracy == pytest.approx(metrics["accuracy"]), x.dtype

  served = tf.saved_model.load(os.path.join(workdir, "saved_model"))
  signature = served.signatures["serving_default"]
  assert list(signature.structured_input_signature[1]) == ["image"]
  out = signature(image=tf.constant(images[:3], tf.float32))
  assert set(out) == {"probabilities", "class_id", "class_name"}
  assert out["probabilities"].shape == (3, 10)
  assert tf.reduce_all(tf.abs(tf.reduce_sum(out["probabilities"], -1) - 1.0) < 1e-4)
  class_id = tf.argmax(out["probabilities"], -1, output_type=tf.int32)
  assert out["class_id"].numpy().tolist() == class_id.numpy().tolist()
  # digits' class names are "0".."9"
  assert [n.decode() for n in out["class_name"].numpy()] == [str(i) for i in class_id.numpy()]
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta = tf.compat.v1.saved_model.load(session, ["serve"], os.path.join(workdir, "saved_model"))
    served_def = meta.signature_def["serving_default"]
    for x in conventions:
      probabilities = session.run(served_def.outputs["probabilities"].name,
                                  {served_def.inputs["image"].name: x[:3]})
      np.testing.assert_allclose(probabilities, out["probabilities"].numpy(), atol=1e-5)
  # 0-1 images that overshoot 1 a little: resampled (lanczos ringing), or brightened
  # by a hair. Still read as 0-1: the same answers as the same images on 0-255.
  resampled = tf.image.resize(tf.image.resize(images / 255.0, (16, 16), "lanczos3"), (8, 8),
                              "lanczos3").numpy()
  assert resampled.max() > 1.0
  for path in (os.path.join(workdir, "saved_model"), os.path.join(workdir, "model.keras")):
    predict = export_lib.load_serving_fn(path)
    for x in conventions:
      np.testing.assert_allclose(predict(x[:3]).numpy(), out["probabilities"].numpy(), atol=1e-5)
    for x01 in (resampled, images / 255.0 * 1.0001):
      np.testing.assert_array_equal(predict(x01).numpy().argmax(-1),
                                    predict(x01 * 255.0).numpy().argmax(-1))


def _count_training_steps(monkeypatch):
  """A list that gets the step count of every training execution (and a hook
  run before each one)."""
  executed, before = [], []
  real = loop.compile_steps

  def counting(strategy, step_fn, signals=None, unrolled=False):
    run_steps = real(strategy, step_fn, signals, unrolled)
    if signals is None or unrolled:  # evaluation, or the profiled variant (not used here)
      return run_steps

    def run(iterator, steps, *args):
      for hook in before:
        hook(len(executed))
      result = run_steps(iterator, steps, *args)
      executed.append(int(steps))
      return result

    return run

  monkeypatch.setattr(loop, "compile_steps", counting)
  return executed, before


@pytest.mark.core
def test_resume_runs_exactly_the_remaining_steps_from_the_restored_state(
    digits_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "w")
  strategy = strategy_lib.get_strategy("cpu")
  executed, _ = _count_training_steps(monkeypatch)
  first = training.run(_digits_config(mlp_config, digits_dir, steps=10), workdir, strategy)
  assert first["step"] == 10 and sum(executed) == 10
  checkpoint = tf_checkpoint(os.path.join(workdir, "checkpoints"))
  # The optimizer's variables: its name (adam, or adam_7 in a process that built more).
  iteration = next(path for path in checkpoint if path.endswith("/iteration"))
  optimizer = iteration.split("/")[0] + "/"
  saved = [v for path, v in checkpoint.items() if not path.startswith(optimizer)]  # the model's
  assert len(saved) == 4 and checkpoint[iteration] == 10

  executed.clear()
  restored = []
  real_restore = tf_backend.Checkpoints.restore

  def restore_and_look(self):
    real_restore(self)
    # What the second run starts from: the first run's weights, its optimizer step.
    restored.append((int(self._objects["optimizer"].iterations.numpy()),  # pylint: disable=protected-access
                     [v.numpy() for v in self._objects["model"].weights]))  # pylint: disable=protected-access

  monkeypatch.setattr(tf_backend.Checkpoints, "restore", restore_and_look)
  second = training.run(_digits_config(mlp_config, digits_dir, steps=25), workdir, strategy)
  assert second["step"] == 25
  assert sum(executed) == 15  # exactly the steps that remained
  (iterations, weights), = restored
  assert iterations == 10
  assert sorted(float(w.sum()) for w in weights) == pytest.approx(
      sorted(float(v.sum()) for v in saved))
  with open(os.path.join(workdir, "history.json")) as f:
    train_steps = [h["step"] for h in json.load(f) if h["kind"] == "train"]
  assert train_steps == sorted(train_steps) and train_steps[-1] == 25


@pytest.mark.parametrize("overrides,saved_steps", [
    ({}, [66]),  # a run shorter than checkpoint_min_secs: only its end
    ({"checkpoint_min_secs": 0.0}, [25, 50, 66]),  # every epoch (22 steps, rounded to 5)
    ({"checkpoint_every_steps": 20}, [20, 40, 60, 66]),  # explicit: obeyed
])
def test_checkpoints_per_epoch_at_most_every_checkpoint_min_secs(
    digits_dir, tmp_path, overrides, saved_steps):
  workdir = tmp_path / "w"
  config = _digits_config(mlp_config, digits_dir, epochs=3, keep_checkpoints=10, **overrides)
  training.run(config, str(workdir), strategy_lib.get_strategy("cpu"))
  state = tf.train.get_checkpoint_state(str(workdir / "checkpoints"))
  assert [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] == saved_steps


def test_the_first_execution_is_not_part_of_the_speed(digits_dir, tmp_path, monkeypatch):
  # The first execution takes 1000 s more on the run's clock (as a slow compilation
  # would): counted, the rate would be under 1920 / 1000 = 2 examples/s.
  from tpu_trainer import controller  # pylint: disable=g-import-not-at-top
  executed, before = _count_training_steps(monkeypatch)
  offset, real = [0.0], time.perf_counter
  monkeypatch.setattr(controller.time, "perf_counter", lambda: real() + offset[0])
  before.append(lambda calls: offset.__setitem__(0, 1000.0) if calls == 0 else None)
  config = _digits_config(mlp_config, digits_dir, steps=30, steps_per_execution=10)
  metrics = training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())
  assert executed == [10, 10, 10]
  assert metrics["examples_per_second"] > 20  # 1280 examples in far less than a minute
  assert metrics["examples_per_second_includes_compilation"] is False


@pytest.mark.parametrize("overrides,message", [
    ({"batch_size": 63}, "does not divide over 2 replicas"),
    ({"model": "vgg"}, "Unknown config.model"),
    ({"data_dir": "/nonexistent/dir"}, "No dataset_info.json"),
    ({"data_dir": ""}, "config.data_dir is empty"),
    ({"precision": "fp8"}, "config.precision"),
])
def test_bad_config_is_a_clear_error(digits_dir, tmp_path, overrides, message):
  config = _digits_config(cnn_config, digits_dir, **overrides)
  with pytest.raises(ValueError if "dataset_info" not in message else FileNotFoundError,
                     match=message):
    training.run(config, str(tmp_path / "w"), strategy_lib.get_strategy("cpu"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_corrupt_shard_is_named(tmp_path):
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "d")
  victim = convert.convert(sources.digits(), data, min_shards=4).splits["train"].files[1]
  with open(victim, "r+b") as f:  # same size: only reading it shows the damage
    f.seek(200)
    f.write(b"\xff" * 50)
  config = _digits_config(mlp_config, data, steps=30, cache=False)
  with pytest.raises(ValueError, match=os.path.basename(victim)):
    training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())


def _profiled_steps(path):
  """The step numbers of the 'train' step markers in a profile (XSpace proto)."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  steps = set()
  for plane in space.planes:
    step_num = [k for k, m in plane.stat_metadata.items() if m.name == "step_num"]
    train = [k for k, m in plane.event_metadata.items() if m.name == "train"]
    for line in plane.lines:
      for event in line.events:
        if event.metadata_id in train:
          steps |= {s.int64_value or s.uint64_value for s in event.stats
                    if s.metadata_id in step_num}
  return steps


def test_profile_steps_write_a_profile_of_those_steps(digits_dir, tmp_path):
  workdir = str(tmp_path / "w")
  training.run(_digits_config(mlp_config, digits_dir, steps=30, profile_steps="10,20"), workdir,
            tf.distribute.get_strategy())
  profile, = glob.glob(os.path.join(workdir, "train", "plugins", "profile", "*", "*.xplane.pb"))
  # One marker per execution (5 steps each), numbered by its first step: 10 and 15.
  assert _profiled_steps(profile) == {10, 15}


def test_early_stopping_ends_a_run_that_stops_improving(digits_dir, tmp_path):
  # A vanishing learning rate cannot improve: the second evaluation ends the run.
  config = _digits_config(mlp_config, digits_dir, epochs=10, base_lr=1e-12,
                          steps_per_execution=1, early_stopping_patience=1)
  metrics = training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())
  assert metrics["step"] == 2 * (1437 // 64)


@pytest.mark.parametrize("kind", ["cosine", "constant"])
def test_learning_rate_scales_with_batch_warms_up_then_decays(kind):
  config = cnn_config.get_config()
  config.update({"warmup_epochs": 2, "lr_schedule": kind})
  peak = 0.2
  schedule = optimizer_lib.learning_rate_schedule(config, peak, steps_per_epoch=10, total_steps=100)
  assert float(schedule(0)) == pytest.approx(0.0)
  assert float(schedule(10)) == pytest.approx(peak / 2)   # halfway through warmup
  assert float(schedule(20)) == pytest.approx(peak)
  end = float(schedule(100))
  assert end == pytest.approx(0.0, abs=1e-6) if kind == "cosine" else end == pytest.approx(peak)


@pytest.mark.parametrize("name,cls", [("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD")])
def test_optimizers(name, cls):
  config = cnn_config.get_config()
  config.update({"optimizer": name, "weight_decay": 3e-3, "momentum": 0.8})
  optimizer = optimizer_lib.make_optimizer(config, 0.01, "float32")
  assert type(optimizer).__name__ == cls and optimizer.weight_decay == pytest.approx(3e-3)
  if name == "sgd":
    assert optimizer.momentum == pytest.approx(0.8) and optimizer.nesterov is True
  config.weight_decay = 0.0
  optimizer = optimizer_lib.make_optimizer(config, 0.01, "float32")
  # AdamW without a weight decay given keeps its own default, 1e-4; the others none.
  assert optimizer.weight_decay == (pytest.approx(1e-4) if name == "adamw" else None)
  assert type(optimizer_lib.make_optimizer(config, 0.01, "mixed_float16")).__name__ == (
      "LossScaleOptimizer")
  config.optimizer = "lamb"
  with pytest.raises(ValueError, match="config.optimizer"):
    optimizer_lib.make_optimizer(config, 0.01, "float32")


def test_label_smoothing_reaches_the_loss(digits_dir, tmp_path):
  # With smoothing, even a perfect model keeps a loss floor: training loss stays higher.
  losses = {}
  for smoothing in (0.0, 0.2):
    config = _digits_config(mlp_config, digits_dir, steps=60, label_smoothing=smoothing,
                            precision="float32", seed=1)
    training.run(config, str(tmp_path / str(smoothing)), tf.distribute.get_strategy())
    with open(tmp_path / str(smoothing) / "history.json") as f:
      losses[smoothing] = [h["loss"] for h in json.load(f) if h["kind"] == "train"][-1]
  assert losses[0.2] > losses[0.0] + 0.1


def test_augmented_uncached_training_runs_on_two_replicas(digits_dir, tmp_path):
  config = _digits_config(cnn_config, digits_dir, steps=20, augment=True, cache=False,
                          deterministic=True, threads=2)
  metrics = training.run(config, str(tmp_path / "w"), strategy_lib.get_strategy("cpu"))
  assert metrics["step"] == 20 and metrics["eval_examples"] == 360


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_exports_nothing(
    digits_dir, tmp_path):
  workdir = tmp_path / "w"
  config = _digits_config(mlp_config, digits_dir, steps=40, steps_per_execution=5,
                          checkpoint_every_steps=5, precision="float32", optimizer="sgd",
                          base_lr=0.05)
  training.run(config, str(workdir), tf.distribute.get_strategy())
  os.remove(workdir / "metrics.json")
  good = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  shutil.rmtree(workdir / "saved_model")
  os.remove(workdir / "model.keras")
  # Resumed with an absurd rate and more steps: SGD at 1e30 overflows into NaN.
  config = _digits_config(mlp_config, digits_dir, steps=80, steps_per_execution=5,
                          checkpoint_every_steps=5, precision="float32", optimizer="sgd",
                          base_lr=1e30)
  with pytest.raises(training.Diverged, match=r"diverged \(NaN, infinite, or a mean cross-entropy above 12.1: the true "
                     r"class given under 6e-06 on average\) between steps 41 and 45.*"
                     r"Last good checkpoint: .*ckpt-40"):
    training.run(config, str(workdir), tf.distribute.get_strategy())
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")) == good
  assert not (workdir / "model.keras").exists() and not (workdir / "saved_model").exists()
  assert not (workdir / "metrics.json").exists()


def test_metrics_json_is_strict_json():
  assert training._strict_json({"a": float("nan"), "b": [1.0, float("inf")], "c": 2}) == {  # pylint: disable=protected-access
      "a": None, "b": [1.0, None], "c": 2}


def test_resuming_another_model_is_refused_before_the_workdir_changes(digits_dir, tmp_path):
  workdir = tmp_path / "w"
  strategy = tf.distribute.get_strategy()
  training.run(_digits_config(mlp_config, digits_dir, steps=5), str(workdir), strategy)
  before = (workdir / "config.json").read_text()
  with pytest.raises(ValueError, match=r"another model or data \(model: 'mlp' -> 'cnn'"):
    training.run(_digits_config(cnn_config, digits_dir, steps=10), str(workdir), strategy)
  assert (workdir / "config.json").read_text() == before
  # What does not touch the model or the data resumes.
  metrics = training.run(_digits_config(mlp_config, digits_dir, steps=10, log_every_steps=5),
                      str(workdir), strategy)
  assert metrics["step"] == 10


def test_a_run_killed_during_export_leaves_no_half_files_and_the_rerun_finishes(
    digits_dir, tmp_path, monkeypatch):
  from tpu_trainer import export as export_lib  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  config = _digits_config(mlp_config, digits_dir, steps=10)
  strategy = tf.distribute.get_strategy()

  def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed while exporting")

  monkeypatch.setattr(export_lib, "save_serving_model", killed)
  with pytest.raises(KeyboardInterrupt):
    training.run(config, str(workdir), strategy)
  assert not (workdir / "model.keras").exists() and not (workdir / "saved_model").exists()
  assert not (workdir / "metrics.json").exists()  # written last: the run is not complete
  assert not [f for f in os.listdir(workdir) if ".tmp-" in f]
  monkeypatch.undo()
  (workdir / "checkpoints" / "ckpt-7_temp").mkdir()  # what a kill mid-save leaves
  (workdir / "checkpoints" / "my_temp_notes.txt").write_text("not ours")
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "keep.txt").write_text("not ours either")
  os.symlink(outside, workdir / "checkpoints" / "ckpt-8_temp")
  metrics = training.run(config, str(workdir), strategy)  # resumes at step 10: exports
  # Only TensorFlow's own leftovers go; a link is removed, never followed.
  assert (workdir / "checkpoints" / "my_temp_notes.txt").read_text() == "not ours"
  assert not os.path.lexists(workdir / "checkpoints" / "ckpt-8_temp")
  assert (outside / "keep.txt").read_text() == "not ours either"
  assert metrics["step"] == 10
  assert json.loads((workdir / "metrics.json").read_text())["step"] == 10
  import zipfile  # pylint: disable=g-import-not-at-top
  assert zipfile.is_zipfile(workdir / "model.keras")
  assert (workdir / "saved_model" / "saved_model.pb").exists()
  assert not (workdir / "checkpoints" / "ckpt-7_temp").exists()


def test_resume_restores_batch_norm_statistics(digits_dir, tmp_path):
  """Batch norm's moving statistics are no optimizer slot: only the model's own
  checkpoint entry brings them back. A rerun of a finished run exports the
  restored model: its statistics must be the checkpoint's, not fresh ones."""
  from configs import conv_bn as conv_bn_config  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  config = _digits_config(conv_bn_config, digits_dir, steps=20, precision="float32")
  strategy = tf.distribute.get_strategy()
  training.run(config, str(workdir), strategy)
  saved = sorted(float(np.sum(v)) for path, v in tf_checkpoint(workdir / "checkpoints").items()
                 if "moving_" in path and not path.startswith("sgd/"))
  assert len(saved) >= 2 and any(abs(s) > 1e-3 for s in saved)
  os.remove(workdir / "model.keras")
  os.remove(workdir / "metrics.json")

  assert training.run(config, str(workdir), strategy)["step"] == 20  # nothing left to train
  model = keras.models.load_model(str(workdir / "model.keras"))
  exported = sorted(float(np.sum(w.numpy())) for layer in model.layers
                    if isinstance(layer, keras.layers.BatchNormalization)
                    for w in (layer.moving_mean, layer.moving_variance))
  np.testing.assert_allclose(exported, saved, rtol=1e-6)


def test_a_dataset_is_known_by_its_content_not_its_path(tmp_path):
  """A copy elsewhere (or the same path with a trailing slash) resumes; the same
  directory converted again with another seed (the splits re-drawn) does not,
  and is not evaluated as if the model had never seen its test split."""
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  data, copy, workdir = tmp_path / "data", tmp_path / "copy", str(tmp_path / "w")
  convert.convert(sources.digits(), str(data))
  shutil.copytree(data, copy)
  strategy = tf.distribute.get_strategy()
  training.run(_digits_config(mlp_config, str(data), steps=10), workdir, strategy)
  assert training.run(_digits_config(mlp_config, str(copy) + "/", steps=20), workdir,
                   strategy)["step"] == 20

  convert.convert(sources.digits(seed=7), str(copy))  # another train/test draw, same path
  with pytest.raises(ValueError, match=r"the dataset: .*copy/? as it was then -> .*copy now, "
                                       r"another content \(converted again"):
    training.run(_digits_config(mlp_config, str(copy), steps=30), workdir, strategy)
  with pytest.raises(ValueError, match="converted again since this run trained on it"):
    evaluation.evaluate(workdir, data_dir=str(copy) + "/")
  # Another dataset with the run's classes is fine, its report named apart.
  evaluation.evaluate(workdir, data_dir=str(data))
  assert (tmp_path / "w" / "eval_test.json").exists()


def test_the_same_records_converted_again_are_the_same_dataset(tmp_path):
  """A source file rewritten with the same bytes (only its time changed) converts
  to new shard names but the same records: the run resumes and evaluates on it."""
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  digits = sources.digits()
  arrays = {}
  for split in ("train", "test"):
    images, labels = zip(*digits.splits[split].read(range(digits.splits[split].num_examples)))
    arrays[f"x_{split}"], arrays[f"y_{split}"] = np.stack(images), np.array(labels)
  npz, data, workdir = tmp_path / "d.npz", tmp_path / "data", str(tmp_path / "w")
  np.savez(npz, **arrays)
  convert.convert(sources.npz(str(npz)), str(data))
  names = sorted(os.listdir(data))
  strategy = tf.distribute.get_strategy()
  training.run(_digits_config(mlp_config, str(data), steps=10), workdir, strategy)
  os.utime(npz, ns=(time.time_ns() + 10**9,) * 2)  # copied again: same bytes, a new time
  convert.convert(sources.npz(str(npz)), str(data))
  assert sorted(os.listdir(data)) != names  # the source's fingerprint moved the key
  assert training.run(_digits_config(mlp_config, str(data), steps=20), workdir,
                      strategy)["step"] == 20
  assert evaluation.evaluate(workdir)["examples"] == digits.splits["test"].num_examples


def test_eval_matches_classes_by_name_and_refuses_other_classes(digits_dir, tmp_path):
  """The run's classes in another order (the same digits, labels and names both
  reversed) score what the run's own data scores; other classes are refused."""
  from tpu_trainer.data import convert, sources  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  training.run(_digits_config(mlp_config, digits_dir, steps=10), workdir,
            tf.distribute.get_strategy())
  own = evaluation.evaluate(workdir)
  digits = sources.digits()

  def relabelled(split, relabel):
    return sources.Split(split.num_examples,
                         lambda indices: ((im, relabel(l)) for im, l in split.read(indices)),
                         labels=None if split.labels is None else relabel(split.labels))

  reordered = sources.Source("digits_reordered", list(reversed(digits.class_names)),
                             digits.image_shape,
                             {k: relabelled(v, lambda l: 9 - l) for k, v in digits.splits.items()},
                             digits.fingerprint + "reordered")
  convert.convert(reordered, str(tmp_path / "r"))
  other = evaluation.evaluate(workdir, data_dir=str(tmp_path / "r"))
  assert other["accuracy"] == pytest.approx(own["accuracy"])
  assert other["loss"] == pytest.approx(own["loss"], rel=1e-5)
  report = json.loads((tmp_path / "w" / "eval_digits_reordered_test.json").read_text())
  assert report["class_names"] == list(reversed(digits.class_names))

  renamed = sources.Source("letters", list("abcdefghij"), digits.image_shape, digits.splits,
                           digits.fingerprint + "letters")
  convert.convert(renamed, str(tmp_path / "l"))
  with pytest.raises(ValueError, match="has other classes .* cannot be scored on them"):
    evaluation.evaluate(workdir, data_dir=str(tmp_path / "l"))
  assert not (tmp_path / "w" / "eval_letters_test.json").exists()


def _named_folder(root, names):
  """The same 24 images per class (digits), class folders named `names`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  for label, name in enumerate(names):
    os.makedirs(os.path.join(root, name))
    for i in np.flatnonzero(digits.target == label)[:24]:
      image = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
      Image.fromarray(image).save(os.path.join(root, name, f"{i}.png"))


def test_class_names_typed_composed_or_decomposed_are_the_same_classes(tmp_path):
  """Folders copied from macOS name classes decomposed (NFD): 'café' there and
  'café' typed elsewhere print the same. Converted, trained on one and
  evaluated on the other, they are the same classes, in the same splits."""
  import unicodedata  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import convert, manifest, sources  # pylint: disable=g-import-not-at-top
  names = ["café", "crème", "naïve"]
  decomposed = [unicodedata.normalize("NFD", n) for n in names]
  assert decomposed != names
  _named_folder(str(tmp_path / "mac"), decomposed)
  _named_folder(str(tmp_path / "linux"), names)
  for folder in ("mac", "linux"):
    convert.convert(sources.load(f"folder:{tmp_path / folder}", test_fraction=0.3),
                    str(tmp_path / f"{folder}_data"))
    assert manifest.read(str(tmp_path / f"{folder}_data")).class_names == names
  assert ((tmp_path / "mac_data" / "label.labels.txt").read_text()
          == (tmp_path / "linux_data" / "label.labels.txt").read_text())
  workdir = str(tmp_path / "w")
  training.run(_digits_config(mlp_config, str(tmp_path / "mac_data"), steps=10,
                              batch_size=16), workdir, tf.distribute.get_strategy())
  own = evaluation.evaluate(workdir)
  other = evaluation.evaluate(workdir, data_dir=str(tmp_path / "linux_data"))
  assert other["examples"] == own["examples"]
  assert other["accuracy"] == pytest.approx(own["accuracy"])

  # A config.json recorded before names were NFC still resumes (its names decomposed).
  saved = json.loads((tmp_path / "w" / "config.json").read_text())
  (tmp_path / "w" / "config.json").write_text(json.dumps({**saved, "class_names": decomposed}))
  (tmp_path / "w" / "metrics.json").unlink()
  training.run(_digits_config(mlp_config, str(tmp_path / "mac_data"), steps=20,
                              batch_size=16), workdir, tf.distribute.get_strategy())

  # Two folders whose names are one name in NFC are one class twice: refused.
  twice = sources.Source("twice", [names[0], decomposed[0]], (8, 8, 1),
                         sources.load(f"folder:{tmp_path / 'linux'}").splits, "twice")
  with pytest.raises(ValueError, match=r"names class\(es\) \['café'\] more than once"):
    convert.convert(twice, str(tmp_path / "twice_data"))
  assert not (tmp_path / "twice_data").exists()


def test_a_shard_removed_under_a_live_run_is_one_line_and_the_rerun_resumes(digits_dir,
                                                                          tmp_path):
  """Files removed (or converted again) while training: "internal error, a bug
  to report: NotFoundError". Now the shard named, exit 2, and once the data is
  back the same command resumes from the last checkpoint."""
  from conftest import run_cli, start_cli, wait_for  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import manifest  # pylint: disable=g-import-not-at-top
  data, workdir, log = tmp_path / "data", tmp_path / "w", tmp_path / "train.log"
  shutil.copytree(digits_dir, data)
  args = ["--config=configs/mlp.py", f"--config.data_dir={data}", f"--workdir={workdir}",
          "--config.input.cache=false", "--config.checkpoint_every_steps=20",
          "--config.batch_size=64", "--config.steps_per_execution=10"]
  proc = start_cli("train", *args, "--config.steps=100000", log=log)
  wait_for(lambda: (workdir / "checkpoints" / "checkpoint").exists(), proc, log)
  shard = manifest.read(str(data)).splits["train"].files[3]
  os.rename(shard, tmp_path / "kept")
  assert proc.wait(timeout=120) == 2, log.read_text()[-3000:]
  last = log.read_text().strip().splitlines()[-1]
  assert last.startswith(f"error: The dataset changed under this run: {shard} is gone "
                         "(removed, or"), last
  assert "Rerun the same command: it resumes from the last checkpoint (" in last
  os.rename(tmp_path / "kept", shard)
  again = run_cli("train", *args, "--config.steps=300")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed from" in again.stderr


def test_a_step_that_cannot_fit_in_memory_is_one_line_before_any_step(digits_dir, tmp_path,
                                                                     monkeypatch):
  """The MLP on very large images (a 7,077,888 x 128 weight) was "internal error,
  a bug to report: ResourceExhaustedError: OOM". Here a machine with 64 KiB to
  give: the estimate (weights, gradients, Adam's slots, activations) is refused
  in one line with its numbers, before the workdir is touched."""
  from tpu_trainer import memory  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(memory, "host_available_bytes", lambda: 64 * 2**10)
  workdir = tmp_path / "w"
  config = _digits_config(mlp_config, digits_dir, steps=10, precision="float32")
  with pytest.raises(ValueError) as refused:
    training.run(config, str(workdir), tf.distribute.get_strategy())
  params = 64 * 128 + 128 + 128 * 10 + 10
  assert str(refused.value).startswith(
      f"The training step will not fit in this machine's memory: {params:,} parameters; ~")
  assert f"weights, gradients, optimizer: {params * 16 / 2**20:.1f} MiB" in str(refused.value)
  assert "0.1 MiB available. Lower config.batch_size" in str(refused.value)
  assert not workdir.exists()
  monkeypatch.undo()
  assert training.run(config, str(workdir), tf.distribute.get_strategy())["step"] == 10


def test_an_allocation_that_fails_in_a_step_is_one_line(digits_dir, tmp_path):
  """A user's layer whose training call needs 4 TiB, which no estimate of layer
  outputs sees: TensorFlow's out-of-memory error was "internal error, a bug to
  report"; now one line with the estimate and what to lower."""
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  (tmp_path / "greedy.py").write_text(
      "import keras\n"
      "@keras.saving.register_keras_serializable('greedy')\n"
      "class Greedy(keras.layers.Layer):\n"
      "  def call(self, x, training=False):\n"
      "    if training:  # 2**40 float32 values, from the input: nothing folds them\n"
      "      x = x + keras.ops.sum(keras.ops.tile(x[:1, :1], (2**20, 2**20)))\n"
      "    return x\n"
      "def build(input_shape, num_classes, config):\n"
      "  inputs = keras.Input(input_shape)\n"
      "  x = Greedy()(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))\n"
      "  return keras.Model(inputs, keras.layers.Dense(num_classes, activation='softmax')(x))\n")
  result = run_cli("train", "--config=configs/mlp.py",
                   f"--config.model={tmp_path}/greedy.py:build",
                   f"--config.data_dir={digits_dir}",
                   f"--workdir={tmp_path / 'w'}", "--config.steps=4", "--config.precision=float32")
  assert result.returncode == 2, result.stderr[-3000:]
  error = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1 and error[0].startswith("error: Out of memory on a cpu device ("), \
      result.stderr[-3000:]
  assert "the training step was estimated at" in error[0] and "Lower config.batch_size" in error[0]


def test_a_mixed_float16_run_trains_through_its_loss_scale(digits_dir, tmp_path):
  """What a GPU user gets: float16 compute, the loss scaled up before the
  gradient and the gradient scaled back down (Keras's LossScaleOptimizer).
  Unscaled, float16 gradients of a small loss underflow and the run learns
  little; on a CPU the policy works the same, slowly. SGD: Adam's update does not
  see a gradient's scale."""
  config = _digits_config(mlp_config, digits_dir, steps=300, precision="mixed_float16",
                          optimizer="sgd", base_lr=0.05)
  metrics = training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())
  assert metrics["precision"] == "mixed_float16"
  assert metrics["accuracy"] > 0.9, metrics


def test_conv_bn_scores_early_evaluations_with_its_batch_norm_statistics(digits_dir, tmp_path):
  """Batch norm's moving statistics keep up with a short run: the recipe's own
  settings, evaluated after 60 steps, score far above chance (Keras's default
  momentum left them at 0.10 for the first evaluations)."""
  from configs import conv_bn as conv_bn_config  # pylint: disable=g-import-not-at-top
  config = conv_bn_config.get_config()
  config.data_dir, config.steps = digits_dir, 60
  metrics = training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())
  assert metrics["accuracy"] > 0.5
