"""Your own model (models/custom.py, models/applications.py, api.py): a user's
builder from a file beside their config, a package, a config file or a Python
callable; keras.applications backbones; the contract's refusals; the Python API."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import cnn as cnn_config
from conftest import REPO
from conftest import run_cli
from tpu_trainer import evaluation
from tpu_trainer import training
from tpu_trainer.models import applications

# A user's repository: a registered custom layer, a logits builder, and the
# contract broken in each way the run refuses before it writes anything.
MY_MODELS = '''
import keras
from keras import layers


@keras.saving.register_keras_serializable(package="my_models")
class Scale(layers.Layer):
  def __init__(self, factor=1.0, **kwargs):
    super().__init__(**kwargs)
    self.factor = factor

  def call(self, x):
    return x * self.factor

  def get_config(self):
    return {**super().get_config(), "factor": self.factor}


class Unregistered(layers.Layer):
  def call(self, x):
    return x


def _trunk(input_shape, first=None):
  inputs = keras.Input(input_shape)
  x = (first or Scale(1 / 255))(inputs)
  x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
  return inputs, layers.Dense(64, activation="relu")(layers.Flatten()(x))


def build(input_shape, num_classes, config):
  inputs, x = _trunk(input_shape)
  return keras.Model(inputs, layers.Dense(num_classes)(x))  # logits


def unregistered_layer(input_shape, num_classes, config):
  inputs, x = _trunk(input_shape, Unregistered())
  return keras.Model(inputs, layers.Dense(num_classes)(x))


def wrong_classes(input_shape, num_classes, config):
  inputs, x = _trunk(input_shape)
  return keras.Model(inputs, layers.Dense(num_classes + 1)(x))


def bf16_softmax(input_shape, num_classes, config):
  inputs, x = _trunk(input_shape)
  return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def tensorflow_ops(input_shape, num_classes, config):
  import tensorflow as tf

  class TfRelu(layers.Layer):
    def call(self, x):
      return tf.nn.relu(x)

  inputs, x = _trunk(input_shape)
  return keras.Model(inputs, layers.Dense(num_classes)(TfRelu(name="tf_relu")(x)))
'''

MY_CONFIG = '''
from tpu_trainer.config import default_config


def get_config():
  config = default_config()
  config.model = "my_models.py:build"  # beside this file
  config.epochs = 4
  config.batch_size = 64
  config.precision = "float32"
  return config
'''


def _user_project(root):
  root.mkdir(exist_ok=True)
  (root / "my_models.py").write_text(MY_MODELS)
  (root / "my_config.py").write_text(MY_CONFIG)
  return root


def test_a_users_project_trains_through_the_installed_wheel(digits_dir, tmp_path,
                                                            installed_wheel):
  """Their config names their builder beside it; the run starts from elsewhere, on
  the wheel (not this checkout); evaluation in another process finds their
  registered layer; the SavedModel serves probabilities though the model
  returns logits."""
  project, elsewhere, workdir = _user_project(tmp_path / "project"), tmp_path / "elsewhere", \
      tmp_path / "run"
  elsewhere.mkdir()
  env = {**os.environ, "PYTHONPATH": installed_wheel, "TF_CPP_MIN_LOG_LEVEL": "2"}

  def run(*args):
    result = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  trained = run("-m", "tpu_trainer.cli.train", f"--config={project / 'my_config.py'}",
                f"--config.data_dir={digits_dir}", f"--workdir={workdir}")
  metrics = json.loads(trained.stdout.splitlines()[0])
  assert metrics["accuracy"] > 0.85 and metrics["step"] == 4 * (1437 // 64)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"] == f"{project / 'my_models.py'}:build"
  assert saved["model_output"] == "logits"
  assert "logits out" in trained.stderr
  probe = run("-c", "import tpu_trainer.models.custom as m; print(m.__file__)").stdout
  assert probe.startswith(installed_wheel)  # the wheel's code ran, not the checkout's

  evaluated = json.loads(run("-m", "tpu_trainer.cli.evaluate", f"--workdir={workdir}")
                         .stdout.splitlines()[-1])
  assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"], abs=1 / 360)
  served = tf.saved_model.load(str(workdir / "saved_model")).signatures["serving_default"]
  out = served(image=tf.random.uniform([5, 8, 8, 1], 0, 255))
  np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1, atol=1e-5)
  assert out["class_name"].dtype == tf.string


def _logits_model(input_shape, num_classes, config):
  del config
  inputs = keras.Input(input_shape)
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
  x = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(x))
  return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def _softmax_model(input_shape, num_classes, config):
  logits = _logits_model(input_shape, num_classes, config)
  return keras.Model(logits.inputs, keras.layers.Softmax()(logits.outputs[0]))


@keras.saving.register_keras_serializable(package="tests")
class SubclassedNet(keras.Model):
  """No graph of layers: its output kind is measured, not read."""

  def __init__(self, num_classes, softmax, **kwargs):
    super().__init__(**kwargs)
    self.num_classes, self.softmax = num_classes, softmax
    self.conv = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
    self.hidden = keras.layers.Dense(64, activation="relu")
    self.out = keras.layers.Dense(num_classes, activation="softmax" if softmax else None)

  def call(self, images):
    x = self.conv(images / 255.0)
    return self.out(self.hidden(keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))))

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes, "softmax": self.softmax}


@pytest.mark.parametrize("kind", ["graph", "subclassed"])
def test_logits_and_probabilities_models_train_to_the_same_accuracy(digits_dir, tmp_path,
                                                                    kind):
  """The same network returning logits or softmax probabilities: the loss, the
  evaluation and the served probabilities treat each right."""
  builders = {"graph": (_logits_model, _softmax_model),
              "subclassed": (lambda s, n, c: SubclassedNet(n, False),
                             lambda s, n, c: SubclassedNet(n, True))}[kind]
  results = {}
  for name, builder in zip(("logits", "probabilities"), builders):
    config = cnn_config.get_config()
    config.update(data_dir=digits_dir, batch_size=64, epochs=4, precision="float32",
                  steps_per_execution=5, model=builder)
    workdir = str(tmp_path / name)
    results[name] = training.run(config, workdir, tf.distribute.get_strategy())
    with open(os.path.join(workdir, "config.json")) as f:
      assert json.load(f)["model_output"] == name
    again = evaluation.evaluate(workdir, report=False)  # model.keras, as built
    assert again["accuracy"] == pytest.approx(results[name]["accuracy"], abs=1 / 360)
    served = evaluation.evaluate(workdir, model_path=os.path.join(workdir, "saved_model"),
                                 report=False)
    assert served["accuracy"] == pytest.approx(results[name]["accuracy"], abs=1 / 360)
    assert served["loss"] == pytest.approx(results[name]["loss"], rel=1e-3)
  assert results["logits"]["accuracy"] > 0.9 and results["probabilities"]["accuracy"] > 0.9
  assert results["logits"]["accuracy"] == pytest.approx(results["probabilities"]["accuracy"],
                                                        abs=0.02)
  assert results["logits"]["loss"] == pytest.approx(results["probabilities"]["loss"], rel=0.1)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
@pytest.mark.parametrize("backbone", ["EfficientNetV2B0", "MobileNet"])
def test_keras_applications_backbones_train_from_scratch(digits_dir, tmp_path, backend,
                                                         backbone):
  workdir = tmp_path / "w"
  result = run_cli("train", "--config=configs/cnn.py:smoke", f"--config.backend={backend}",
                   f"--config.model=applications:{backbone}", "--config.weights=none",
                   f"--config.data_dir={digits_dir}", f"--workdir={workdir}", timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads(result.stdout.splitlines()[0])
  assert metrics["step"] == 4 and metrics["eval_examples"] == 360
  assert metrics["model"] == f"applications:{backbone}" and metrics["backend"] == backend
  assert (workdir / "model.keras").exists() and (workdir / "saved_model").is_dir()


@pytest.mark.parametrize("backbone, preprocess", [
    ("ResNet50", keras.applications.resnet.preprocess_input),           # caffe: BGR - mean
    ("DenseNet121", keras.applications.densenet.preprocess_input),      # torch: mean / std
    ("MobileNetV2", keras.applications.mobilenet_v2.preprocess_input),  # [-1, 1]
    ("EfficientNetV2B0", lambda x: x),  # 0-255: its normalisation is inside the backbone
])
def test_each_backbone_gets_the_input_range_its_family_expects(backbone, preprocess):
  config = cnn_config.get_config()
  config.weights = "none"
  model = applications.builder(backbone)((32, 32, 3), 4, config)
  net, = [layer for layer in model.layers if isinstance(layer, keras.Model)]
  fed = keras.Model(model.inputs[0], net._inbound_nodes[-1].input_tensors[0])  # pylint: disable=protected-access
  images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
  np.testing.assert_allclose(np.asarray(fed(images)), np.asarray(preprocess(images.copy())),
                             rtol=1e-5, atol=1e-4)
  if backbone == "EfficientNetV2B0":
    assert any("rescaling" in layer.name or "normalization" in layer.name
               for layer in net.layers[:4])


def test_an_unknown_backbone_names_the_ones_there_are():
  with pytest.raises(ValueError, match="no backbone 'EfficientNetV9'.*EfficientNet"):
    applications.builder("EfficientNetV9")


@pytest.mark.parametrize("builder, flags, expected", [
    ("unregistered_layer", [], ["layer class 'Unregistered' is not registered",
                                "register_keras_serializable"]),
    ("wrong_classes", [], ["returns shape (11,) per image", "10 classes", "Dense(10)"]),
    ("bf16_softmax", ["--config.precision=mixed_bfloat16"],
     ["softmax computes in bfloat16", "dtype='float32'"]),
    ("tensorflow_ops", ["--config.backend=jax"],
     ["layer 'tf_relu' (TfRelu) calls TensorFlow ops", "keras.ops"]),
    ("no_such_function", [], ["has no function 'no_such_function'", "build"]),
])
def test_a_model_that_breaks_the_contract_is_refused_before_anything_is_written(
    digits_dir, tmp_path, builder, flags, expected):
  project, workdir = _user_project(tmp_path / "project"), tmp_path / "run"
  result = run_cli("train", "--config=configs/cnn.py",
                   f"--config.model={project / 'my_models.py'}:{builder}",
                   f"--config.data_dir={digits_dir}", f"--workdir={workdir}", *flags)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  for words in expected:
    assert words in errors[0]
  assert not workdir.exists()


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_builder_changed_since_the_checkpoint_is_one_line_not_a_wrong_resume(
    digits_dir, tmp_path, backend):
  """The same config.model, its code edited between runs (a layer more): the
  checkpoint cannot be restored into it; said in one line, exit 2."""
  project, workdir = _user_project(tmp_path / "project"), tmp_path / "run"
  args = ["train", "--config=configs/cnn.py", f"--config.model={project / 'my_models.py'}:build",
          f"--config.data_dir={digits_dir}", f"--workdir={workdir}",
          f"--config.backend={backend}", "--config.checkpoint_every_steps=2",
          "--config.precision=float32"]
  first = run_cli(*args, "--config.steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  (project / "my_models.py").write_text(MY_MODELS.replace(
      'return inputs, layers.Dense(64, activation="relu")(layers.Flatten()(x))',
      'x = layers.Dense(64, activation="relu")(layers.Flatten()(x))\n'
      '  return inputs, layers.Dense(32, activation="relu")(x)'))
  second = run_cli(*args, "--config.steps=4")
  assert second.returncode == 2, second.stderr[-3000:]
  errors = [l for l in second.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
  assert "holds other variables than this model and optimizer" in errors[0]


@pytest.mark.parametrize("model, expected", [
    ("missing.py:build", "no file missing.py"),
    ("no_such_package.models:build", "no module 'no_such_package.models'"),
    ("resnet", "Unknown config.model='resnet'"),
])
def test_a_model_that_is_not_found_is_one_line_naming_where_it_looked(digits_dir, tmp_path,
                                                                       model, expected):
  result = run_cli("train", "--config=configs/cnn.py", f"--config.model={model}",
                   f"--config.data_dir={digits_dir}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert expected in errors[0]
  assert not (tmp_path / "w").exists()


def test_the_python_api_from_a_fresh_interpreter(digits_dir, tmp_path):
  """A notebook's way: a builder defined in the session (not importable by
  another process), trained on 2 replicas, the same call again (finished:
  its metrics as they are), evaluated;
  a built model, and a builder returning one made outside the scope, refused."""
  script = tmp_path / "notebook.py"
  script.write_text(textwrap.dedent(f'''
      import json
      import tpu_trainer

      def build(input_shape, num_classes, config):
        import keras
        inputs = keras.Input(input_shape)
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        x = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(x))
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

      common = dict(data_dir={digits_dir!r}, model=build, cpu_devices=2, epochs=4,
                    batch_size=64, precision="float32")
      first = tpu_trainer.train("cnn", workdir={str(tmp_path / "w")!r}, **common)
      again = tpu_trainer.train("cnn", workdir={str(tmp_path / "w")!r}, **common)
      evaluated = tpu_trainer.evaluate({str(tmp_path / "w")!r}, report=False)
      built = build((8, 8, 1), 10, None)
      refusals = []
      for model in (built, lambda input_shape, num_classes, config: built):
        try:
          tpu_trainer.train("cnn", workdir={str(tmp_path / "refused")!r},
                            **{{**common, "model": model}})
        except tpu_trainer.UserError as e:
          refusals.append(str(e))
      print(json.dumps({{"first": first, "again": again, "evaluated": evaluated,
                        "refusals": refusals}}))
  '''))
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO,
                                                       "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  first, again = out["first"], out["again"]
  assert first["replicas"] == 2 and first["accuracy"] > 0.85 and first["model"] == "python:build"
  assert again["step"] == first["step"] and again["accuracy"] == first["accuracy"]
  assert out["evaluated"]["accuracy"] == pytest.approx(first["accuracy"], abs=1 / 360)
  built, stale = out["refusals"]
  assert "is a built keras.Model" in built and "pass the function that builds it" in built
  assert "made outside the strategy's scope" in stale
  assert "holds a finished run" in result.stderr and "logits out" in result.stderr  # logs
  assert not (tmp_path / "refused").exists()
