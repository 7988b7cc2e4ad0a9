"""Model families, one file each; build_model() picks one by config.model."""
import keras

from tpu_trainer.errors import UserError
from tpu_trainer.models import cnn
from tpu_trainer.models import conv_bn
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


def check_model_name(name: str) -> None:
  """Raises ValueError naming the choices when `name` is no model family here."""
  if name not in BUILDERS:
    raise UserError(f"Unknown config.model={name!r}; choose one of "
                    f"{', '.join(sorted(BUILDERS))}.")


def build_model(config, input_shape, num_classes: int) -> keras.Model:
  """Builds config.model for uint8 images of input_shape, under the current
  dtype policy (set it first)."""
  check_model_name(config.model)
  return BUILDERS[config.model](tuple(input_shape), num_classes, config)
