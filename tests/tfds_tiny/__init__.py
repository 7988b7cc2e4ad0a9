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


class TinyEncodings(tfds.core.GeneratorBasedBuilder):
  """Learnable 16x16 RGB images of 3 classes (a bright quadrant per class), stored
  the three ways TFDS stores uint8 images: PNG or JPEG Image, raw-bytes Tensor;
  and a config with no single image/label pair."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ("png", "jpeg", "raw", "pairless")]

  def _info(self):
    shape = (16, 16, 3)
    image = {"png": tfds.features.Image(shape=shape, encoding_format="png"),
             "jpeg": tfds.features.Image(shape=shape, encoding_format="jpeg"),
             "raw": tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                         encoding=tfds.features.Encoding.BYTES),
             "pairless": tfds.features.Image(shape=shape)}[self.builder_config.name]
    features = {"picture": image, "kind": tfds.features.ClassLabel(names=["a", "b", "c"])}
    if self.builder_config.name == "pairless":
      features["other_picture"] = tfds.features.Image(shape=shape)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("picture", "kind") if self.builder_config.name == "png" else None)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(300, 0), "test": self._generate_examples(60, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      label = i % 3
      image = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
      y, x = divmod(label, 2)
      image[y * 8:y * 8 + 8, x * 8:x * 8 + 8] += 180
      example = {"picture": image, "kind": label}
      if self.builder_config.name == "pairless":
        example["other_picture"] = image
      yield i, example
