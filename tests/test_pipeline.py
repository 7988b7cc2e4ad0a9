import logging

import numpy as np
import pytest
import tensorflow as tf

from tpu_trainer import config as config_lib
from tpu_trainer import memory
from tpu_trainer.data import convert
from tpu_trainer.data import manifest
from tpu_trainer.data import pipeline
from tpu_trainer.data import position
from tpu_trainer.data import sources


def _ctx(pipelines=1, index=0, replicas=None):
  return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=index,
                                    num_replicas_in_sync=replicas or pipelines)


def _input(**overrides):
  """The config's input section, with overrides."""
  section = config_lib.default_config().input
  section.update(overrides)
  return section


def _keys(images, labels, weights=None):
  """One hashable key per real example of a batch."""
  images, labels = images.numpy(), labels.numpy()
  keep = np.ones(len(labels), bool) if weights is None else weights.numpy() > 0
  return [(im.tobytes(), int(l)) for im, l in zip(images[keep], labels[keep])]


def test_train_batches_have_static_shapes(digits_dir):
  ds = pipeline.train_input_fn(manifest.read(digits_dir), 64, _input())(
      _ctx(pipelines=1, replicas=2))
  images_spec, labels_spec = ds.element_spec
  assert images_spec.shape.as_list() == [32, 8, 8, 1] and images_spec.dtype == tf.uint8
  assert labels_spec.shape.as_list() == [32] and labels_spec.dtype == tf.int32
  images, labels = next(iter(ds))
  assert images.shape == (32, 8, 8, 1) and int(tf.reduce_max(images)) > 100
  assert set(labels.numpy().tolist()) <= set(range(10))


@pytest.mark.parametrize("pipelines", [2, 3])
def test_pipelines_get_disjoint_files_covering_all_every_epoch(digits_dir, pipelines):
  files = manifest.read(digits_dir).splits["train"].files
  epochs = []
  for epoch in range(2):
    orders = [[f.numpy().decode() for f in pipeline.file_dataset(files, pipelines, p, 5, epoch)]
              for p in range(pipelines)]
    assert sum(len(o) for o in orders) == len(files)      # disjoint
    assert set().union(*orders) == set(files)             # and covering
    epochs.append(orders)
  assert epochs[0] != epochs[1]  # read in another order every epoch


def test_private_thread_pool_option(digits_dir):
  ds = pipeline.train_input_fn(manifest.read(digits_dir), 64, _input(threads=3))(_ctx())
  assert ds.options().threading.private_threadpool_size == 3
  assert next(iter(ds))[0].shape == (64, 8, 8, 1)


def test_file_order_depends_on_seed(digits_dir):
  files = manifest.read(digits_dir).splits["train"].files
  order = lambda seed: [f.numpy() for f in pipeline.file_dataset(files, 1, 0, seed)]
  assert order(0) == order(0)
  assert order(0) != order(1)
  assert sorted(order(0)) == sorted(order(1))


def _two_epochs(dataset, seed):
  fn = pipeline.train_input_fn(
      dataset, 100, _input(shuffle_buffer=200, cache=False, deterministic=True), seed=seed)
  it = iter(fn(_ctx()))
  per_epoch = 1437 // 100
  return [[k for _ in range(per_epoch) for k in _keys(*next(it))] for _ in range(2)]


def test_epochs_differ_and_runs_reproduce_in_deterministic_mode(digits_dir):
  dataset = manifest.read(digits_dir)
  first = _two_epochs(dataset, seed=3)
  assert first[0] != first[1]
  assert first == _two_epochs(dataset, seed=3)
  assert first != _two_epochs(dataset, seed=4)


@pytest.mark.parametrize("pipelines", [1, 2])
def test_a_cached_split_is_served_whole_and_reshuffled_every_epoch(digits_dir, pipelines):
  """Cached: each pipeline's share decoded once, then every epoch a permutation
  of it (no example twice, all but the remainder), another one each epoch, the
  same for the same seed; the pipelines' shares stay disjoint."""
  import collections  # pylint: disable=g-import-not-at-top
  dataset = manifest.read(digits_dir)
  everything = collections.Counter(_keys(*map(tf.constant, pipeline.sample(
      dataset, "train", 1437))))
  counts = position.pipeline_counts(dataset, "train", pipelines)
  batch, shares = 100, []
  for index in range(pipelines):
    fn = pipeline.train_input_fn(dataset, batch * pipelines, _input(), seed=3)
    epochs = []
    for _ in range(2):
      it = iter(fn(_ctx(pipelines, index)))
      steps = counts[index] // batch
      epochs.append([[k for _ in range(steps) for k in _keys(*next(it))] for _ in range(2)])
    first, second = epochs[0]
    assert epochs[0] == epochs[1]  # the same seed, the same order
    assert first != second
    for epoch in (first, second):
      assert len(epoch) == counts[index] // batch * batch
      assert not collections.Counter(epoch) - everything  # no example more often than it is
    shares.append(collections.Counter(first + second))
  assert sum(counts) == 1437
  if pipelines == 2:
    assert not (shares[0] & shares[1])
  other = iter(pipeline.train_input_fn(dataset, batch, _input(), seed=4)(_ctx()))
  assert _keys(*next(other)) != epochs[0][0][:batch]


@pytest.mark.parametrize("num_shards,pipelines,batch", [(5, 1, 7), (5, 3, 12), (2, 3, 6),
                                                        (16, 2, 64)])
def test_eval_sees_every_example_once(tmp_path_factory, num_shards, pipelines, batch):
  out = str(tmp_path_factory.mktemp("d"))
  convert.convert(sources.digits(), out, num_shards=num_shards)
  dataset = manifest.read(out)
  keys, steps_seen = [], set()
  for p in range(pipelines):
    fn, steps = pipeline.eval_input_fn(dataset, batch, pipelines, "test", _input())
    batches = list(fn(_ctx(pipelines, p)).take(2 * steps))
    steps_seen.add(len(batches) // 2)
    first, second = batches[:steps], batches[steps:]
    assert [_keys(*b) for b in first] == [_keys(*b) for b in second]  # each pass the same
    for images, labels, weights in first:
      assert images.shape[0] == batch // pipelines
      keys += _keys(images, labels, weights)
  assert steps_seen == {steps}  # every pipeline runs the same number of steps
  source = sources.digits().splits["test"]
  expected = sorted((im.tobytes(), l) for im, l in source.read(range(source.num_examples)))
  assert sorted(keys) == expected


def test_augment_keeps_shape_and_changes_pixels():
  images = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8))
  out = pipeline.augment_batch(images, tf.constant([1, 2], tf.int64))
  assert out.shape == images.shape and out.dtype == tf.uint8
  assert not np.array_equal(out.numpy(), images.numpy())


def test_input_augment_reaches_the_training_batches(digits_dir):
  """The same seed with input.augment on and off: the same examples, other pixels."""
  dataset = manifest.read(digits_dir)

  def first_batch(augment):
    fn = pipeline.train_input_fn(dataset, 64, _input(augment=augment, deterministic=True),
                                 seed=5)
    images, labels = next(iter(fn(_ctx())))
    return images.numpy(), labels.numpy()

  plain, plain_labels = first_batch(False)
  again, _ = first_batch(False)
  augmented, augmented_labels = first_batch(True)
  np.testing.assert_array_equal(plain, again)  # the comparison is not noise
  np.testing.assert_array_equal(plain_labels, augmented_labels)
  changed = np.mean([not np.array_equal(a, b) for a, b in zip(plain, augmented)])
  assert changed > 0.5  # crops and flips: most images differ


@pytest.mark.parametrize("cache,pipelines,replicas,augment", [
    (True, 1, 1, False), (True, 2, 2, True), (True, 1, 2, True),
    (False, 1, 1, True), (False, 2, 2, False), (False, 1, 2, True)])
def test_an_input_started_at_a_step_reads_on_exactly_where_the_run_was(
    digits_dir, cache, pipelines, replicas, augment):
  """What preemption-proof resumes rest on: every pipeline started at step S
  (a later epoch, mid-epoch, or right at a boundary) yields the very batches,
  augmentation included, that the same pipeline started at 0 yields from its
  S-th step on (a pipeline feeding two replicas yields two batches a step)."""
  dataset = manifest.read(digits_dir)
  section = _input(cache=cache, shuffle_buffer=300, augment=augment, deterministic=True)
  batch, per_step = 60 * replicas, replicas // pipelines
  layout = pipeline.layout(dataset, batch, pipelines, replicas, section, seed=7)
  assert layout.from_memory == cache
  fresh = position.Position(layout)
  for index in range(pipelines):
    ctx = _ctx(pipelines, index, replicas)
    whole = list(pipeline.train_input_fn(dataset, batch, section, 7)(ctx).take(80))
    per_epoch = position.pipeline_counts(dataset, "train", pipelines)[index] // 60 // per_step
    for step in (1, per_epoch - 1, per_epoch, 2 * per_epoch + 5):
      resumed = pipeline.train_input_fn(dataset, batch, section, 7, fresh, step)(ctx)
      for expected, got in zip(whole[step * per_step:step * per_step + 3], resumed.take(3)):
        np.testing.assert_array_equal(expected[0].numpy(), got[0].numpy())
        np.testing.assert_array_equal(expected[1].numpy(), got[1].numpy())
    assert fresh.start(dataset, "train", 2 * per_epoch + 5, index)[1] == 2  # epoch 2


class _AbslLines(logging.Handler):
  """What absl logs meanwhile, at INFO and up, whatever an earlier test set its
  logger to (an in-process CLI run installs absl's own handler and level)."""

  def __enter__(self):
    super().__init__(logging.INFO)
    self.lines, self._logger = [], logging.getLogger("absl")
    self._level = self._logger.level
    self._logger.setLevel(logging.INFO)
    self._logger.addHandler(self)
    return self

  def emit(self, record):
    self.lines.append(record.getMessage())

  def __exit__(self, *_):
    self._logger.removeHandler(self)
    self._logger.setLevel(self._level)


def test_a_resume_with_another_layout_restarts_its_epoch_and_says_what_it_could_not_keep(
    digits_dir):
  dataset = manifest.read(digits_dir)
  section = _input(deterministic=True)
  was = position.Position(pipeline.layout(dataset, 64, 1, 2, section, seed=0))
  saved = was.array()
  assert position.Position.from_array(saved) == was
  # The same layout: exactly where it was, nothing to say but that.
  with _AbslLines() as log:
    assert position.resume(saved, was.layout, 30, dataset, "train", "ckpt-30") == was
  assert log.lines == ["The input resumes where ckpt-30 left it (epoch 1, step 30)."]

  for now, what in [
      (pipeline.layout(dataset, 128, 1, 2, section, seed=0),
       "batch 64 over 2 replicas and 1 input pipeline, in memory then, batch 128 over 2 "
       "replicas and 1 input pipeline, in memory now"),
      (pipeline.layout(dataset, 64, 2, 2, section, seed=0), "over 2 replicas and 2 input "
       "pipelines"),
      (pipeline.layout(dataset, 64, 1, 2, section, seed=1),
       "another seed, split, shuffle buffer or augmentation")]:
    with _AbslLines() as log:
      got = position.resume(saved, now, 30, dataset, "train", "ckpt-30")
    # Epoch 1 (22 steps of 64 each) starts again at its first batch, in the new layout.
    assert got == position.Position(now, base_step=30, base_epoch=1)
    assert got.start(dataset, "train", 30, 0)[1:] == (1, 0)
    line, = log.lines
    assert what in line and "restarts epoch 1 at its first batch" in line

  with _AbslLines() as log:
    legacy = position.resume(None, was.layout, 50, dataset, "train", "ckpt-50")
  assert legacy == position.Position(was.layout, base_step=50, base_epoch=2)
  line, = log.lines
  assert line.startswith("ckpt-50 holds no input position")


def test_input_settings_past_what_the_machine_holds_are_one_line_before_any_work(
    digits_dir, tmp_path):
  """--config.input.threads=100000 grew to 11 GB with SIGTERM ignored: refused
  now, in one line with this machine's numbers, before a workdir exists."""
  import os  # pylint: disable=g-import-not-at-top
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  result = run_cli("train", "--config=configs/mlp.py", f"--workdir={tmp_path / 'w'}",
                   f"--config.data_dir={digits_dir}", "--config.input.threads=100000",
                   timeout=120)  # refused in seconds; unbounded, it grew for minutes
  assert result.returncode == 2, result.stderr[-3000:]
  error = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1, result.stderr[-3000:]
  assert (f"config.input.threads=100000 is more than this machine can use: at most 4 per CPU "
          f"core ({4 * os.cpu_count()} here)") in error[0]
  assert not (tmp_path / "w").exists()
  dataset = manifest.read(digits_dir)
  pipeline.check_fits_host(dataset, _input(threads=4 * os.cpu_count()))  # the bound itself


def test_a_shuffle_buffer_or_cache_past_the_memory_is_refused_or_streamed(digits_dir,
                                                                         monkeypatch):
  """A machine with 64 KiB for the input (a small host beside a big dataset):
  a buffer of all the records is refused with the numbers; the cache that
  would not fit streams instead, and says so."""
  dataset = manifest.read(digits_dir)
  monkeypatch.setattr(memory, "host_bytes", lambda: 2 * 64 * 1024)
  with pytest.raises(ValueError, match=r"config.input.shuffle_buffer=10000 would hold "
                     r"0.0 GiB of .* more than half this machine's 0.0 GiB: at most \d+ here"):
    pipeline.check_fits_host(dataset, _input())
  record = dataset.split("train").num_bytes / dataset.split("train").num_examples
  pipeline.check_fits_host(dataset, _input(shuffle_buffer=int(64 * 1024 / record)))
  with _AbslLines() as log:
    assert not pipeline.fits_cache(dataset, "train", 1, _input())
  assert "more than half this machine's" in log.lines[0]
  monkeypatch.undo()
  assert pipeline.fits_cache(dataset, "train", 1, _input())


def test_streamed_training_files_reach_the_model_in_the_seeds_order(digits_dir):
  """Through train_input_fn, as training reads: with no record shuffle to hide
  it (buffer 1), the files' order alone differs by seed and repeats for a seed."""
  dataset = manifest.read(digits_dir)
  section = _input(cache=False, shuffle_buffer=1, deterministic=True)

  def first_batches(seed):
    ds = pipeline.train_input_fn(dataset, 64, section, seed=seed)(_ctx())
    return [key for images, labels in ds.take(3) for key in _keys(images, labels)]

  assert first_batches(0) == first_batches(0)
  assert first_batches(0) != first_batches(1)
