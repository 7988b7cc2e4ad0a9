"""Where the training input is, saved in every checkpoint: a resumed run reads
on from there instead of from the first batch of epoch 0.

What is saved is not the iterator's state (a shuffle buffer of 10,000 ImageNet
records is a gigabyte per host per checkpoint) but seven integers: the layout
the input was read with (global batch, replicas, input pipelines, whether they
read from memory, a hash of what else decides the order) and the step at which it began
its epochs (0, or the step where an earlier resume changed the layout). Every
epoch's order is a function of the seed and the epoch's number alone
(pipeline.py), so from these each pipeline computes at any step which epoch it
is in and how far into it, and starts there: an in-memory pipeline skips the
batches before the position for free; a streaming one reads again (without
decoding) the records of its epoch up to the position.

In reproducible mode (input.deterministic) the resumed run reads exactly the
batches the uninterrupted run would have. Otherwise the same number of
examples of the same epoch are skipped, but parallel reads interleave files in
the order they arrive, so not exactly the same ones. A layout that changed
(another batch size or host count) cannot continue mid-epoch: the run restarts
the epoch it was in, and says so.
"""
import dataclasses

from absl import logging
import numpy as np

from tpu_trainer.data.manifest import Dataset


@dataclasses.dataclass(frozen=True)
class Layout:
  """What decides which batches a run reads at each step."""
  global_batch: int
  pipelines: int
  replicas: int      # the input context's: a pipeline yields replicas / pipelines batches a step
  from_memory: bool  # input.cache on and a pipeline's share within cache_max_bytes
  order: int         # a hash of the seed, split, shuffle buffer and augmentation

  def describe(self) -> str:
    return (f"batch {self.global_batch} over {self.replicas} replica"
            f"{'s' if self.replicas > 1 else ''} and {self.pipelines} input pipeline"
            f"{'s' if self.pipelines > 1 else ''}, "
            f"{'in memory' if self.from_memory else 'streamed'}")

  @property
  def batch(self) -> int:
    """The batch a pipeline's dataset yields."""
    return self.global_batch // self.replicas


@dataclasses.dataclass(frozen=True)
class Position:
  """From base_step on, the input read epochs base_epoch, base_epoch + 1, ...
  with `layout`."""
  layout: Layout
  base_step: int = 0
  base_epoch: int = 0

  SIZE = 7

  def array(self) -> np.ndarray:
    """What a checkpoint holds: int64[SIZE]."""
    l = self.layout
    return np.array([self.base_step, self.base_epoch, l.global_batch, l.pipelines, l.replicas,
                     int(l.from_memory), l.order], np.int64)

  @classmethod
  def from_array(cls, values) -> "Position":
    base_step, base_epoch, batch, pipelines, replicas, from_memory, order = map(int, values)
    return cls(Layout(batch, pipelines, replicas, bool(from_memory), order), base_step,
               base_epoch)

  def start(self, dataset: Dataset, split: str, step: int, index: int) -> tuple[bool, int, int]:
    """(from memory, epoch, skip) of pipeline `index` at `step`: skip counts the
    batches (from memory) or records (streamed) of that epoch already read."""
    batch = self.layout.batch
    count = pipeline_counts(dataset, split, self.layout.pipelines)[index]
    batches = (step - self.base_step) * (self.layout.replicas // self.layout.pipelines)
    if self.layout.from_memory and count >= batch:
      per_epoch = count // batch
      return True, self.base_epoch + batches // per_epoch, batches % per_epoch
    read = batches * batch
    return False, self.base_epoch + read // count, read % count

  def epoch(self, dataset: Dataset, split: str, step: int) -> int:
    """The epoch every pipeline has reached at `step` (the earliest one's)."""
    return min(self.start(dataset, split, step, i)[1] for i in range(self.layout.pipelines))


def pipeline_counts(dataset: Dataset, split: str, pipelines: int) -> list[int]:
  """Examples each pipeline reads, from the metadata's shard lengths."""
  lengths = dataset.split(split).shard_lengths
  if len(lengths) >= pipelines:
    return [sum(lengths[p::pipelines]) for p in range(pipelines)]
  total = sum(lengths)
  return [total // pipelines + (p < total % pipelines) for p in range(pipelines)]


def resume(saved, now: Layout, step: int, dataset: Dataset, split: str,
           checkpoint: str) -> Position:
  """Where this run's input starts at `step`, restored from `checkpoint` (saved:
  its int64[Position.SIZE], or None when it predates input positions); said in one line
  when it cannot be where the checkpoint's run would have read on."""
  if saved is None:
    epoch = Position(now).epoch(dataset, split, step)
    logging.warning("%s holds no input position (written before tpu_trainer saved one): "
                    "the input restarts epoch %d at its first batch.", checkpoint, epoch)
    return Position(now, step, epoch)
  position = Position.from_array(saved)
  epoch = position.epoch(dataset, split, step)
  if position.layout == now:
    logging.info("The input resumes where %s left it (epoch %d, step %d).", checkpoint,
                 epoch, step)
    return position
  was = position.layout
  if dataclasses.replace(was, order=now.order) == now:
    what = "another seed, split, shuffle buffer or augmentation"
  else:
    what = f"{was.describe()} then, {now.describe()} now"
  logging.warning("The input restarts epoch %d at its first batch: %s was read in another "
                  "order (%s), so the examples of epoch %d read before it are read again.",
                  epoch, checkpoint, what, epoch)
  return Position(now, step, epoch)


class Tracker:
  """A run's input position: what its checkpoints save (array) and where a
  resume puts it (resume_after). `position` is where the input starts."""

  def __init__(self, layout: Layout, dataset: Dataset, split: str):
    self.position, self._dataset, self._split = Position(layout), dataset, split

  def array(self) -> np.ndarray:
    return self.position.array()

  def resume_after(self, checkpoints, step: int) -> None:
    """Once `checkpoints` (a runner's) restored one, if any: the position at `step`."""
    if checkpoints is not None and checkpoints.restored:
      self.position = resume(checkpoints.saved_input_position, self.position.layout, step,
                             self._dataset, self._split, checkpoints.restored)
