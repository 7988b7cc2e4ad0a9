"""tfds:NAME through TFDS's own download_and_prepare, on a builder the test
defines (nothing downloads here; a catalogue dataset takes the same path)."""
import pytest
import tensorflow_datasets as tfds

from tpu_trainer.data import convert
from tpu_trainer.data import sources
import tfds_tiny  # noqa: F401  (registers tfds:tiny_shapes)


def test_tfds_source_converts_every_example(tmp_path):
  source = sources.load("tfds:tiny_shapes", tfds_data_dir=str(tmp_path / "tfds"))
  assert source.class_names == ["circle", "square", "star"]
  assert source.image_shape == (12, 10, 3)
  dataset = convert.convert(source, str(tmp_path / "out"), encoding="png", num_shards=3)
  assert {s: v.num_examples for s, v in dataset.splits.items()} == {"train": 40, "test": 10}
  ours = [(e["image"].tobytes(), int(e["label"])) for e in tfds.as_numpy(
      tfds.builder_from_directory(str(tmp_path / "out")).as_dataset(split="test"))]
  builder = tfds.builder("tiny_shapes", data_dir=str(tmp_path / "tfds"))
  theirs = [(e["image"].tobytes(), int(e["label"]))
            for e in tfds.as_numpy(builder.as_dataset(split="test"))]
  assert sorted(ours) == sorted(theirs)


def test_tfds_version_and_resize(tmp_path):
  source = sources.load("tfds:tiny_shapes:1.0.0", tfds_data_dir=str(tmp_path / "tfds"),
                        image_size=(6, 5))
  assert source.image_shape == (6, 5, 3)
  image, _ = next(source.splits["train"].read(range(0, 2)))
  assert image.shape == (6, 5, 3)


def test_unknown_tfds_name_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset_xyz'"):
    sources.load("tfds:no_such_dataset_xyz", tfds_data_dir=str(tmp_path))


def test_offline_download_fails_in_seconds_in_one_line(tmp_path):
  """A TFDS dataset not prepared yet, no network (a proxy that refuses every
  connection stands for one): one error line saying where to put the prepared
  data, in seconds, not TFDS's minutes of retries."""
  import time  # pylint: disable=g-import-not-at-top
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  closed = "http://127.0.0.1:9"  # the discard port: nothing listens
  start = time.perf_counter()
  result = run_cli("convert", "--source=tfds:fashion_mnist", f"--output_dir={tmp_path / 'out'}",
                   f"--tfds_data_dir={tmp_path / 'tfds'}",
                   env={"http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed,
                        "HTTPS_PROXY": closed, "NO_GCE_CHECK": "True"})
  assert time.perf_counter() - start < 90
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Cannot download TFDS dataset 'fashion_mnist'"), last
  assert "--tfds_data_dir=DIR" in last and "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()
