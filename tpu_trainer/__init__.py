"""tpu_trainer: TPU-first training of Keras image classifiers on sharded TFRecords.

The Python API (api.py): tpu_trainer.train / evaluate / convert / load_config.
Importing the package loads neither TensorFlow nor Keras.
"""
from tpu_trainer.api import convert
from tpu_trainer.api import evaluate
from tpu_trainer.api import load_config
from tpu_trainer.api import train
from tpu_trainer.errors import UserError
