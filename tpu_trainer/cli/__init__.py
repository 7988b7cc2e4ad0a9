"""Thin absl entry points: parse flags, call a library function, report errors in one line."""
import os
import sys

# Before TensorFlow loads: keep its C++ INFO chatter out of users' terminals.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top

# What bad input raises in the library; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError)


def run(main) -> None:
  """app.run(main), with user errors as one 'error: ...' line and exit status 2."""

  def wrapped(argv):
    logging.set_verbosity(logging.INFO)
    try:
      return main(argv)
    except USER_ERRORS as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped)
