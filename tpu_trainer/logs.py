"""How our log lines look: short INFO lines of this package's own, other
libraries' (TensorFlow's, Keras's) only from WARNING up. The tools and the
Python API share it."""
import logging as std_logging
import os

from absl import logging


class _OursOrWarnings(std_logging.Filter):
  """INFO lines from this package; other libraries' only from WARNING up."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or f"{os.sep}tpu_trainer{os.sep}" in (
        record.pathname or "")


def use_short_lines() -> None:
  """INFO on, as 'HH:MM:SS message'; other libraries' chatter hidden (once)."""
  logging.use_absl_handler()  # what absl's app.run does; the Python API has no app.run
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OursOrWarnings) for f in handler.filters):
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_OursOrWarnings())
  std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
