"""A model from anywhere: the user's builder, found from config.model, and the
contract every model keeps, checked before the first step.

config.model takes, beside the built-in names:
  PATH.py:FUNCTION        a function in a file (relative to the working directory,
                          or to the --config file's directory)
  package.module:FUNCTION a function in an installed package
  applications:NAME       a keras.applications backbone with our head (applications.py)
  a Python callable       in a config file (`config.model = build`) or the Python API

The contract. A builder is called as FUNCTION(input_shape, num_classes, config)
inside the strategy's scope, under the run's dtype policy, and returns a
keras.Model that takes float32 images of input_shape on the 0-255 scale (the
pipeline's uint8 pixels, cast; what serving gets) and returns one output of
num_classes per image: softmax probabilities or logits, told apart from the
model itself (output_kind). Checked before anything is written (check): the
output's shape, its dtype under mixed precision, variables made inside the
scope, a save/load round trip (an unregistered custom layer fails now, not at
export after hours), and on the JAX backend no TensorFlow ops.
"""
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import tempfile
import traceback

import keras
import numpy as np

from tpu_trainer.errors import UserError

FORMS = ("a built-in name, PATH.py:FUNCTION, package.module:FUNCTION, applications:NAME, "
         "or a Python callable (config file or Python API)")


def is_reference(spec) -> bool:
  """Whether config.model names a user's function (FILE.py:F or module:F)."""
  return isinstance(spec, str) and ":" in spec and not spec.startswith(
      ("applications:", "python:"))


def name_of(builder) -> str:
  """The string config.json records for a callable: a reference another process
  (evaluation, a resumed run, another worker) can import again where possible:
  module:FUNCTION for a module of a package, else FILE.py:FUNCTION (a config
  file, a module on the path), else python:NAME: a notebook's or a script's
  (__main__: importing the script again would run it), not importable."""
  module = sys.modules.get(getattr(builder, "__module__", None) or "")
  qualname = getattr(builder, "__qualname__", getattr(builder, "__name__", repr(builder)))
  if module is None or "<" in qualname or module.__name__ == "__main__":
    return f"python:{qualname}"
  path = getattr(module, "__file__", None)
  if getattr(module, "__package__", None):
    return f"{module.__name__}:{qualname}"  # its relative imports need the package
  if path and os.path.isfile(path) and path.endswith(".py"):
    return f"{os.path.abspath(path)}:{qualname}"
  return f"python:{module.__name__}.{qualname}"


_FILE_MODULE_PREFIX = "tpu_trainer_user_"


def _import_file(path: str):
  """Imports a .py file as its own module (once per path); its directory goes on
  sys.path first, so it may import its neighbours."""
  path = os.path.abspath(path)
  name = _FILE_MODULE_PREFIX + hashlib.sha1(path.encode()).hexdigest()[:12]
  if name in sys.modules:
    return sys.modules[name]
  folder = os.path.dirname(path)
  if folder not in sys.path:
    sys.path.insert(0, folder)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def _raised(what: str, error: BaseException) -> UserError:
  """One line for an exception raised by the user's code: its type, message and
  the last line of theirs in the traceback."""
  where = ""
  for frame in reversed(traceback.extract_tb(error.__traceback__)):
    if f"{os.sep}site-packages{os.sep}" not in frame.filename and (
        f"{os.sep}tpu_trainer{os.sep}" not in frame.filename):
      where = f" at {frame.filename}:{frame.lineno}"
      break
  message = (str(error).strip().splitlines() or [""])[0][:300]
  return UserError(f"{what} raised {type(error).__name__}{where}: {message}")


def resolve_reference(spec: str):
  """(the function, its absolute reference) for PATH.py:FUNCTION or
  module:FUNCTION; one line naming what was looked for and where, if missing."""
  target, _, function = spec.rpartition(":")
  if not target or not function.isidentifier():
    raise UserError(f"config.model={spec!r}: expected PATH.py:FUNCTION or "
                    f"package.module:FUNCTION; config.model takes {FORMS}.")
  if target.endswith(".py"):
    path = os.path.abspath(os.path.expanduser(target))
    if not os.path.isfile(path):
      raise UserError(f"config.model={spec!r}: no file {target} (looked for {path}): pass "
                      "the path of the file that defines the builder.")
    try:
      module = _import_file(path)
    except Exception as e:  # pylint: disable=broad-except  (the user's module)
      raise _raised(f"config.model={spec!r}: importing {path}", e) from None
    where, reference = path, f"{path}:{function}"
  else:
    try:
      module = importlib.import_module(target)
    except ModuleNotFoundError as e:
      if e.name and target.startswith(e.name):
        raise UserError(f"config.model={spec!r}: no module {target!r} on the Python path "
                        f"(sys.path[0] = {sys.path[0]!r}): install the package that holds it, "
                        "or pass PATH.py:FUNCTION.") from None
      raise _raised(f"config.model={spec!r}: importing {target}", e) from None
    except Exception as e:  # pylint: disable=broad-except
      raise _raised(f"config.model={spec!r}: importing {target}", e) from None
    where, reference = getattr(module, "__file__", target), spec
  builder = module
  for part in function.split("."):
    builder = getattr(builder, part, None)
  if not callable(builder):
    defined = sorted(n for n, v in vars(module).items()
                     if inspect.isfunction(v) and not n.startswith("_"))
    raise UserError(f"config.model={spec!r}: {where} has no function {function!r} "
                    f"(its functions: {', '.join(defined) or 'none'}).")
  return builder, reference


def call_builder(builder, name: str, input_shape, num_classes: int, config, backend: str):
  """The builder's model; what it raises as one line (a TensorFlow op under JAX
  named with its layer)."""
  if isinstance(builder, keras.Model):
    raise UserError(f"config.model is a built keras.Model ({builder.name}): pass the "
                    "function that builds it instead; tpu_trainer calls it inside the "
                    "strategy's scope, so that its variables live on every replica.")
  try:
    model = builder(tuple(input_shape), num_classes, config)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (the user's code)
    _refuse_tensorflow_ops(name, e, backend)
    raise _raised(f"config.model={name!r}: the builder", e) from None
  if not isinstance(model, keras.Model):
    raise UserError(f"config.model={name!r} returned {type(model).__name__}, not a "
                    "keras.Model: return keras.Model(inputs, outputs) (or a subclass).")
  return model


def _refuse_tensorflow_ops(name: str, error: BaseException, backend: str) -> None:
  """On the JAX backend, a layer whose call reaches TensorFlow's ops fails while
  JAX traces it: said with the layer's name."""
  if backend != "jax":
    return
  layer, tensorflow_below = None, False
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    tb = error.__traceback__
    while tb is not None:
      owner = tb.tb_frame.f_locals.get("self")
      if isinstance(owner, keras.layers.Layer) and not isinstance(owner, keras.Model) or (
          isinstance(owner, keras.Model) and tb.tb_frame.f_code.co_name == "call"):
        layer, tensorflow_below = owner, False
      elif layer is not None and (
          f"{os.sep}tensorflow{os.sep}" in tb.tb_frame.f_code.co_filename):
        tensorflow_below = True
      tb = tb.tb_next
    if tensorflow_below:
      raise UserError(f"config.model={name!r}: layer {layer.name!r} "
                      f"({type(layer).__name__}) calls TensorFlow ops, which the JAX "
                      "backend cannot run: write it with keras.ops, or train with "
                      "--config.backend=tensorflow.")
    error = error.__cause__ or error.__context__


def _output_layer(model):
  """The layer that computes a model's (single) output, through nested models;
  None for a subclassed model."""
  try:
    operation = model.outputs[0]._keras_history[0]  # pylint: disable=protected-access
  except (AttributeError, IndexError, TypeError, ValueError):
    return None
  if isinstance(operation, keras.Model):
    return _output_layer(operation)
  return operation


def _is_softmax(function) -> bool:
  return getattr(function, "__name__", "") == "softmax"


def output_kind(model, input_shape) -> str:
  """'probabilities' (a softmax) or 'logits'. From the output layer where the model
  is a graph of layers (a Softmax layer, or an activation of softmax); else
  measured: an untrained model's logits never sum to 1 on every image."""
  layer = _output_layer(model)
  if layer is not None:
    if isinstance(layer, keras.layers.Softmax) or _is_softmax(getattr(layer, "activation",
                                                                      None)):
      return "probabilities"
    if hasattr(layer, "activation"):
      return "logits"
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (4,) + tuple(input_shape)).astype("float32")
  outputs = np.asarray(keras.ops.convert_to_numpy(model(images, training=False)), "float64")
  sums = outputs.sum(axis=-1)
  return "probabilities" if (outputs >= 0).all() and np.allclose(sums, 1, atol=2e-2) else (
      "logits")


def check(model, name: str, input_shape, num_classes: int, backend: str) -> str:
  """The contract's shape and dtype; returns output_kind. A float16/bfloat16
  softmax is refused (its log loses the small probabilities); low-precision
  logits are cast to float32 by the loss."""
  images = keras.KerasTensor((2,) + tuple(input_shape), "float32")
  try:
    spec = model.compute_output_spec(images)
  except Exception as e:  # pylint: disable=broad-except  (the user's model)
    _refuse_tensorflow_ops(name, e, backend)
    raise _raised(f"config.model={name!r}: calling the model on float32 images of shape "
                  f"{tuple(input_shape)}", e) from None
  if not isinstance(spec, keras.KerasTensor):
    raise UserError(f"config.model={name!r} returns {type(spec).__name__} of "
                    f"{len(spec) if hasattr(spec, '__len__') else '?'} outputs: return one "
                    f"tensor of {num_classes} values per image.")
  if tuple(spec.shape) != (2, num_classes):
    raise UserError(f"config.model={name!r} returns shape {tuple(spec.shape)[1:]} per image "
                    f"for images of {tuple(input_shape)}; the dataset has {num_classes} "
                    f"classes: end the model with keras.layers.Dense({num_classes}).")
  kind = output_kind(model, input_shape)
  if kind == "probabilities" and spec.dtype != "float32":
    raise UserError(f"config.model={name!r}: its softmax computes in {spec.dtype} under "
                    "mixed precision, which loses the small probabilities: give the last "
                    "layer dtype='float32' (e.g. keras.layers.Dense(..., "
                    "activation='softmax', dtype='float32')), or return logits.")
  return kind


def check_round_trip(model, name: str) -> None:
  """model.keras saves and loads now: an unregistered custom layer (or one
  without get_config) fails here, before training, instead of at export."""
  with tempfile.TemporaryDirectory(prefix="tpu_trainer_model_check_") as folder:
    path = os.path.join(folder, "model.keras")
    try:
      model.save(path)
      keras.models.load_model(path, compile=False)
    except Exception as e:  # pylint: disable=broad-except  (the user's layers)
      message = " ".join(str(e).split())
      missing = re.search(r"Could not locate (?:class|function) '([\w.]+)'", message)
      what = (f"layer class {missing.group(1)!r} is not registered" if missing
              else f"{type(e).__name__}: {message[:240]}")
      raise UserError(f"config.model={name!r} cannot be saved and loaded as model.keras "
                      f"({what}): decorate custom layers and models with "
                      "@keras.saving.register_keras_serializable() and give them "
                      "get_config() for their constructor's arguments. Checked before "
                      "training so that the export after it does not fail.") from None


def variables_outside(model, scope_owns) -> list[str]:
  """Names of the model's variables that scope_owns(variable) says were made
  outside the strategy's scope (a model built before the run started)."""
  return [v.path for v in model.weights if not scope_owns(v)]
