"""The compiled steps, and the one execution loop that training and evaluation share.

One tf.function call runs `steps` steps on every replica: the TPU's main speed
lever (Keras 3's fit cannot do that under MirroredStrategy, nor run under
MultiWorkerMirroredStrategy). The Python loop around it (training.py, evaluation.py)
runs between calls.
"""
import keras
import numpy as np
import tensorflow as tf

from tpu_trainer.controller import Agreed
from tpu_trainer.controller import divergence_limit


def compile_steps(strategy, step_fn, signals=None, unrolled=False):
  """tf.function(iterator, steps[, host_flags]): `steps` calls of
  step_fn(*next(iterator)) on every replica, in one execution. With signals,
  this host's flags (see Signals.add_host_flags) are added after the steps.

  unrolled: `steps` is a Python int and the steps are laid out one after the
  other in the graph instead of in a tf.while_loop (one trace per count). For
  profiling: the profiler groups the events of a graph with a while loop by its
  iterations and then finds no step at all (xprof's overview and input-pipeline
  pages go empty); without one it groups them by our step markers."""

  # No autograph (as Keras's own train step): converting the loop, the step and
  # everything they call costs the first run of every process seconds of Python.
  @tf.function(autograph=False)
  def run(iterator, steps, host_flags=None):
    def step(i):
      strategy.run(step_fn, args=next(iterator))
      return i + 1

    if unrolled:
      for i in range(steps):
        step(i)
    else:
      tf.while_loop(lambda i: i < steps, step, [tf.constant(0)])
    if signals is not None:
      strategy.run(signals.add_host_flags, args=(host_flags,))

  return run


class Signals:
  """What every host must agree on after an execution: the loss was not finite,
  or exploded (controller.Agreed), a host got SIGTERM, a host wants a progress
  line or a checkpoint.

  Sync-on-read counters: every replica adds to its own copy, and one read sums
  them over all replicas and hosts (a single small collective per execution).
  Every worker of a multi-worker job reads the same values after the same
  execution, so all of them log, stop and save at the same step; a decision
  taken by one host alone (on its own clock, say) would leave the others
  waiting in a collective.
  """

  def __init__(self, strategy):
    with strategy.scope():
      self._counts = tf.Variable([0.0] * 5, trainable=False, name="signals",
                                 synchronization=tf.VariableSynchronization.ON_READ,
                                 aggregation=tf.VariableAggregation.SUM)
    self._replicas = strategy.num_replicas_in_sync
    self._seen = np.zeros(5)

  def add_diverged(self, loss, mean_example_loss, limit: float):
    """In a step (replica context): counts a loss that is NaN or infinite, and
    one whose mean over the examples is above `limit`."""
    nonfinite = ~tf.math.is_finite(loss)
    exploded = tf.logical_or(nonfinite, mean_example_loss > limit)
    self._counts.assign_add(tf.stack([tf.cast(nonfinite, tf.float32),
                                      tf.cast(exploded, tf.float32), 0., 0., 0.]))

  def add_host_flags(self, host_flags):
    """host_flags: float32 [got SIGTERM, wants a progress line, wants a
    checkpoint] of this host."""
    self._counts.assign_add(tf.concat([[0.0, 0.0], tf.cast(host_flags, tf.float32)], 0))

  def read(self, steps: int) -> Agreed:
    """Over the whole job, after an execution of `steps` steps; exploded_share
    (every replica's steps counted), line_due and checkpoint_due since the last read."""
    counts = self._counts.numpy()
    added, self._seen = counts - self._seen, counts
    return Agreed(nonfinite=bool(counts[0]), exploded_share=added[1] / (steps * self._replicas),
                  stop=bool(counts[2]), line_due=bool(added[3]), checkpoint_due=bool(added[4]))


def train_step(model, optimizer, global_batch: int, label_smoothing: float, num_classes: int,
               totals, signals, from_logits: bool = False):
  """One optimizer step on one replica's batch of (uint8 images, int labels).

  The model gets the images as float32 0-255 (models/custom.py's contract) and
  returns probabilities, or logits (from_logits). The loss is averaged over the
  global batch, so summing the replicas' gradients gives the gradient of the
  whole batch.
  """
  limit = divergence_limit(num_classes)
  loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing,
                                                 from_logits=from_logits, reduction=None)

  def step(images, labels):
    with tf.GradientTape() as tape:
      # float32 whatever the policy: the loss needs the range (low-precision logits).
      outputs = tf.cast(model(tf.cast(images, tf.float32), training=True), tf.float32)
      per_example = loss_fn(tf.one_hot(labels, num_classes), outputs)
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
      if model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
      scaled_loss = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    totals.update(per_example, outputs, labels)
    signals.add_diverged(loss, tf.reduce_mean(tf.cast(per_example, tf.float32)), limit)

  return step


def eval_step(predict, num_classes: int, totals):
  """One replica's batch of (images, labels, weights): weight-0 rows are padding.

  The loss in TensorFlow ops (Keras's cross-entropy, clipped the same way): a
  SavedModel is evaluated here whichever backend Keras is on."""

  def step(images, labels, weights):
    probabilities = tf.cast(predict(tf.cast(images, tf.float32)), tf.float32)
    clipped = tf.clip_by_value(probabilities, keras.config.epsilon(), 1 - keras.config.epsilon())
    per_example = -tf.reduce_sum(tf.one_hot(labels, num_classes) * tf.math.log(clipped), -1)
    totals.update(per_example, probabilities, labels, weights)

  return step
