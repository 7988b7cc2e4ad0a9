"""Model families, one file each, and the user's own models (custom.py,
applications.py): resolve() finds the builder config.model names."""
import keras

from tpu_trainer.errors import UserError
from tpu_trainer.models import applications
from tpu_trainer.models import cnn
from tpu_trainer.models import conv_bn
from tpu_trainer.models import custom
from tpu_trainer.models import mlp
from tpu_trainer.models import mobilenet_v2
from tpu_trainer.models import resnet

BUILDERS = {
    "mlp": mlp.build,
    "cnn": cnn.build,
    "cnn_deep": cnn.build_deep,
    "conv_bn": conv_bn.build,
    "mobilenet_v2": mobilenet_v2.build,
    "resnet50": resnet.build,
}


def resolve(spec):
  """(builder, name, is_users_code) for config.model: `name` is what config.json
  records (a callable's importable reference; a file's absolute path)."""
  if callable(spec):
    return spec, custom.name_of(spec), True
  if not isinstance(spec, str):
    raise UserError(f"config.model={spec!r} is a {type(spec).__name__}: it takes "
                    f"{custom.FORMS}.")
  if spec in BUILDERS:
    return BUILDERS[spec], spec, False
  if spec.startswith(applications.PREFIX):
    return applications.builder(spec[len(applications.PREFIX):]), spec, False
  if spec.startswith("python:"):
    raise UserError(f"config.model={spec!r} names a Python function of another process (a "
                    "notebook's, say), which cannot be imported here: pass the function "
                    "itself (Python API), or define it in a file: PATH.py:FUNCTION.")
  if custom.is_reference(spec):
    builder, reference = custom.resolve_reference(spec)
    return builder, reference, True
  raise UserError(f"Unknown config.model={spec!r}; choose one of "
                  f"{', '.join(sorted(BUILDERS))}, or give {custom.FORMS}.")


def check_model_name(spec) -> None:
  """Raises UserError naming the forms when config.model finds no builder."""
  resolve(spec)


def build_model(config, input_shape, num_classes: int) -> keras.Model:
  """Builds config.model for images of input_shape, under the current dtype
  policy (set it first)."""
  builder, name, users = resolve(config.model)
  if users:
    return custom.call_builder(builder, name, input_shape, num_classes, config,
                               keras.backend.backend())
  return builder(tuple(input_shape), num_classes, config)
