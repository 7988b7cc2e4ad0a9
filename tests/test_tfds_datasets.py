"""Training and evaluation read datasets TFDS itself prepared, with no conversion:
PNG and JPEG Image features, raw-bytes Tensor features, feature names other than
image/label, with and without supervised keys."""
import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import mlp as mlp_config
from tpu_trainer import evaluation
from tpu_trainer import training
from tpu_trainer.data import manifest
import tfds_tiny  # noqa: F401  (registers tiny_encodings)


def _prepared(tmp_path_factory, config):
  builder = tfds.builder(f"tiny_encodings/{config}",
                         data_dir=str(tmp_path_factory.mktemp("tfds")))
  builder.download_and_prepare()
  return str(builder.data_dir)


@pytest.mark.parametrize("config,encoding", [("png", "png"), ("jpeg", "jpeg"), ("raw", "raw")])
def test_train_and_evaluate_on_a_tfds_prepared_dataset(tmp_path_factory, tmp_path, config,
                                                       encoding, caplog):
  data_dir = _prepared(tmp_path_factory, config)
  assert not os.path.exists(os.path.join(data_dir, manifest.OURS_FILE))
  dataset = manifest.read(data_dir)
  assert (dataset.image_key, dataset.label_key, dataset.encoding) == ("picture", "kind", encoding)
  assert dataset.image_shape == (16, 16, 3) and dataset.class_names == ["a", "b", "c"]
  assert {s: v.num_examples for s, v in dataset.splits.items()} == {"train": 300, "test": 60}
  assert "checksums are not checked" in caplog.text

  config_ = mlp_config.get_config()
  config_.update(data_dir=data_dir, batch_size=30, epochs=3, base_lr=0.003,
                 steps_per_execution=5, precision="float32")
  workdir = str(tmp_path / "w")
  metrics = training.run(config_, workdir, tf.distribute.get_strategy())
  assert metrics["eval_examples"] == 60
  assert metrics["accuracy"] > 0.9  # the classes are easy: it learned from the images
  again = evaluation.evaluate(workdir, model_path=os.path.join(workdir, "saved_model"))
  assert again["accuracy"] == pytest.approx(metrics["accuracy"], abs=1 / 60)
  served = tf.saved_model.load(os.path.join(workdir, "saved_model"))
  out = served.signatures["serving_default"](image=tf.zeros([1, 16, 16, 3], tf.float32))
  assert out["class_name"].numpy()[0].decode() in ("a", "b", "c")


def test_a_truncated_tfds_shard_is_named_before_training(tmp_path_factory, tmp_path):
  data_dir = _prepared(tmp_path_factory, "raw")
  shard = manifest.read(data_dir).splits["train"].files[0]
  records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
  with tf.io.TFRecordWriter(shard) as writer:  # cut on a record boundary
    for r in records[:-5]:
      writer.write(r)
  config = mlp_config.get_config()
  config.update(data_dir=data_dir, steps=2, batch_size=30)
  with pytest.raises(ValueError, match="the train shards hold .* bytes, TFDS's metadata says"):
    training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())
  assert not os.path.exists(tmp_path / "w")


def test_a_dataset_without_one_image_label_pair_says_what_it_has(tmp_path_factory):
  data_dir = _prepared(tmp_path_factory, "pairless")
  with pytest.raises(ValueError, match=r"no single uint8 image \+ ClassLabel pair") as error:
    manifest.read(data_dir)
  for feature in ("picture: Image(16, 16, 3)", "other_picture: Image(16, 16, 3)",
                  "kind: ClassLabel"):
    assert feature in str(error.value)


def test_a_missing_split_names_the_ones_there(tmp_path_factory, tmp_path):
  data_dir = _prepared(tmp_path_factory, "raw")
  config = mlp_config.get_config()
  config.update(data_dir=data_dir, steps=2)
  config.input.eval_split = "validation"
  with pytest.raises(ValueError, match="Split 'validation' is not in .*it has: test, train"):
    training.run(config, str(tmp_path / "w"), tf.distribute.get_strategy())
