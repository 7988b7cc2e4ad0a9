"""Sums of loss, correct predictions and examples, accumulated on every replica.

Sync-on-read variables (what Keras 2 metrics used, TPU-safe): each replica adds
to its own copy inside strategy.run; reading in cross-replica context sums them.
"""
import tensorflow as tf


class Totals:
  """With num_classes, also a confusion matrix (rows: true class, columns: predicted)."""

  def __init__(self, strategy, name: str, num_classes: int = 0):
    self.num_classes = num_classes
    with strategy.scope():
      self._vars = {
          key: tf.Variable(tf.zeros(shape), trainable=False, name=f"{name}_{key}",
                           synchronization=tf.VariableSynchronization.ON_READ,
                           aggregation=tf.VariableAggregation.SUM)
          for key, shape in (("loss", []), ("correct", []), ("examples", []),
                             ("confusion", [num_classes, num_classes] if num_classes else [0]))}

  def update(self, per_example_loss, probabilities, labels, weights=None):
    """Called inside strategy.run, once per replica batch."""
    if weights is None:
      weights = tf.ones_like(per_example_loss)
    predicted = tf.argmax(probabilities, -1, output_type=tf.int32)
    correct = tf.cast(tf.equal(predicted, labels), tf.float32)
    if self.num_classes:
      self._vars["confusion"].assign_add(tf.math.confusion_matrix(
          labels, predicted, self.num_classes, weights=weights, dtype=tf.float32))
    self._vars["loss"].assign_add(tf.reduce_sum(tf.cast(per_example_loss, tf.float32) * weights))
    self._vars["correct"].assign_add(tf.reduce_sum(correct * weights))
    self._vars["examples"].assign_add(tf.reduce_sum(weights))

  def result(self) -> dict:
    """Mean loss and accuracy over everything since reset(), and the count."""
    values = {k: float(self._vars[k].numpy()) for k in ("loss", "correct", "examples")}
    n = max(values["examples"], 1.0)
    return {"loss": values["loss"] / n, "accuracy": values["correct"] / n,
            "examples": int(round(values["examples"]))}

  def confusion(self):
    """[true class, predicted class] counts since reset(), as a numpy array."""
    return self._vars["confusion"].numpy().round().astype(int)

  def reset(self):
    for v in self._vars.values():
      v.assign(tf.zeros(v.shape))
