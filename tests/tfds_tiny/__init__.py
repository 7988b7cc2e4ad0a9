"""A TFDS builder the tests prepare locally (TFDS wants builders in packages)."""
import numpy as np
import tensorflow_datasets as tfds


class TinyShapes(tfds.core.GeneratorBasedBuilder):
  """12x10 RGB images of three classes, made on the spot."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(12, 10, 3)),
        "label": tfds.features.ClassLabel(names=["circle", "square", "star"]),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(40, 0), "test": self._generate_examples(10, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {"image": rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), "label": i % 3}
