"""Sums of loss, correct predictions and examples, accumulated on every replica.

Sync-on-read variables (what Keras 2 metrics used, TPU-safe): each replica adds
to its own copy inside strategy.run; reading in cross-replica context sums them.
"""
import tensorflow as tf


class Totals:

  def __init__(self, strategy, name: str):
    with strategy.scope():
      self._vars = {
          key: tf.Variable(0.0, trainable=False, name=f"{name}_{key}",
                           synchronization=tf.VariableSynchronization.ON_READ,
                           aggregation=tf.VariableAggregation.SUM)
          for key in ("loss", "correct", "examples")}

  def update(self, per_example_loss, probabilities, labels, weights=None):
    """Called inside strategy.run, once per replica batch."""
    if weights is None:
      weights = tf.ones_like(per_example_loss)
    correct = tf.cast(tf.equal(tf.argmax(probabilities, -1, output_type=tf.int32), labels),
                      tf.float32)
    self._vars["loss"].assign_add(tf.reduce_sum(tf.cast(per_example_loss, tf.float32) * weights))
    self._vars["correct"].assign_add(tf.reduce_sum(correct * weights))
    self._vars["examples"].assign_add(tf.reduce_sum(weights))

  def result(self) -> dict:
    """Mean loss and accuracy over everything since reset(), and the count."""
    values = {k: float(v.numpy()) for k, v in self._vars.items()}
    n = max(values["examples"], 1.0)
    return {"loss": values["loss"] / n, "accuracy": values["correct"] / n,
            "examples": int(round(values["examples"]))}

  def reset(self):
    for v in self._vars.values():
      v.assign(0.0)
