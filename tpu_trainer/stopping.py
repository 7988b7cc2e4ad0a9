"""SIGTERM (a preemption, a spot VM's end) and SIGINT (Ctrl-C) during a run: recorded
from the moment record_stop_signals() runs, acted on at the run's own safe
points (controller.py: after an execution; training.py: between the export's
steps). A handler that raised instead could be swallowed inside a TensorFlow or
Keras call; the flag cannot be lost. No TensorFlow here: the tools install the
recording before they import it.
"""
import os
import select
import signal
import time


class Preempted(Exception):
  """SIGTERM (or SIGINT) arrived; a checkpoint was saved. Rerun the same command to
  resume. The tools exit with 128 + signum (143, 130)."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = signum


# Stop signals received by this process (numbers), from record_stop_signals() on:
# process-wide, like the signals themselves.
_RECEIVED: list[int] = []
_RECEIVED_AT: list[float] = []  # time.monotonic() of each
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _record(signum, _):
  if signum == signal.SIGINT and _RECEIVED:  # a second Ctrl-C: quit now, unsaved
    raise KeyboardInterrupt
  _RECEIVED.append(signum)
  _RECEIVED_AT.append(time.monotonic())


# Python runs a signal's handler in the main thread only when it next runs
# Python: never while that thread is blocked inside TensorFlow (a step waiting
# for input that does not come). The signal's number is also written, at once,
# to this pipe (signal.set_wakeup_fd), where a thread of the run reads it.
_WAKEUP: list[int] = []  # the pipe's read end, once made


def record_stop_signals() -> bool:
  """From now on SIGTERM and SIGINT are recorded, for the run to act on at its
  safe points; False where signals cannot be handled (not the main thread).
  The tools call this first thing, so a signal during setup is not lost."""
  try:
    for signum in STOP_SIGNALS:
      signal.signal(signum, _record)
    if not _WAKEUP:
      read, write = os.pipe()
      os.set_blocking(write, False)
      previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
      if previous != -1:  # an event loop's (a notebook's): left to it
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)
      else:
        _WAKEUP.append(read)
  except ValueError:
    return False
  return True


def arrived(timeout_s: float) -> list[int]:
  """Stop signals that came since the last call (their numbers), waiting up to
  timeout_s for one: seen even while the main thread is blocked. For one reader."""
  if not _WAKEUP:
    time.sleep(timeout_s)
    return []
  ready, _, _ = select.select(_WAKEUP, [], [], timeout_s)
  if not ready:
    return []
  return [n for n in os.read(_WAKEUP[0], 512) if n in STOP_SIGNALS]


class StopSignals:
  """SIGTERM (a preemption) or SIGINT (Ctrl-C), recorded and acted on at the run's
  own safe points: after the current execution while training, when every
  worker saves the same checkpoint, and between the steps of the export
  (check_export). The handler itself never raises: an exception thrown from a
  signal handler can be swallowed inside a TensorFlow or Keras call."""

  def __init__(self):
    # Installed again even where the tool already did: TensorFlow's runtime can
    # take SIGTERM over in C (MultiWorkerMirroredStrategy does), unseen by
    # signal.getsignal, and would swallow it. Made right after the strategy.
    self._previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    if not record_stop_signals():
      self._previous = {}

  @property
  def received(self) -> bool:
    return bool(_RECEIVED)

  def seconds_since(self) -> float:
    """Since the first stop signal came."""
    return time.monotonic() - _RECEIVED_AT[0] if _RECEIVED_AT else 0.0

  @property
  def signum(self) -> int:
    return _RECEIVED[0] if _RECEIVED else signal.SIGTERM

  def stopped(self, message: str) -> "Preempted":
    name = signal.Signals(self.signum).name
    return Preempted(f"{name} {message}", self.signum)

  def check_export(self) -> None:
    """Raises Preempted when a stop signal came (also during the final evaluation):
    metrics.json, written last, is then absent and the rerun exports."""
    if self.received:
      raise self.stopped("during the export; nothing half-written is left. Run the same "
                         "command again to finish the export.")

  def close(self) -> None:
    """Gives a library caller its handlers back (a tool's recording stays)."""
    ours = {s: h for s, h in self._previous.items() if h is not _record}
    for signum, handler in ours.items():
      signal.signal(signum, handler)
    if ours:
      _RECEIVED.clear()
      _RECEIVED_AT.clear()
