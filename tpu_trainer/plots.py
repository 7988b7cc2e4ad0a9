"""Pictures of results for people who would rather look than open TensorBoard:
learning curves, a confusion matrix, and test images with predicted vs true
labels (the seed tutorials' plot, wrong ones in red)."""
import numpy as np
import tensorflow as tf


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> None:
  with tf.io.gfile.GFile(path, "wb") as f:
    fig.savefig(f, format="png", dpi=80)
  _pyplot().close(fig)


def learning_curves(history: list[dict], path: str) -> None:
  fig, axes = _pyplot().subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ("loss", "accuracy")):
    for kind in ("train", "validation"):
      points = [(h["step"], h[key]) for h in history if h["kind"] == kind]
      if points:
        ax.plot(*zip(*points), marker="o" if kind == "validation" else None, label=kind)
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  _save(fig, path)


def confusion_matrix(confusion: np.ndarray, class_names: list[str], path: str) -> None:
  """Rows: true class; columns: predicted; each row normalised, counts written in."""
  n = len(class_names)
  size = min(4 + 0.45 * n, 20)
  fig, ax = _pyplot().subplots(figsize=(size, size))
  rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  if n <= 30:
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=90)
    ax.set_yticks(ticks, class_names)
    for (i, j), count in np.ndenumerate(confusion):
      if count:
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title("confusion matrix")
  fig.tight_layout()
  _save(fig, path)


def predictions(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                class_names: list[str], path: str, columns: int = 5) -> None:
  """A grid of images titled 'predicted (confidence) / true', wrong ones in red."""
  plt = _pyplot()
  rows = int(np.ceil(len(images) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.3 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image, label, probs in zip(axes.flat, images, labels, probabilities):
    predicted = int(np.argmax(probs))
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
              cmap="gray" if image.shape[-1] == 1 else None)
    ax.set_title(f"{class_names[predicted]} ({probs[predicted]:.0%})\ntrue: {class_names[label]}",
                 color="tab:blue" if predicted == label else "tab:red", fontsize=9)
  fig.tight_layout()
  _save(fig, path)
