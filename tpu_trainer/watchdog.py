"""Bounded waits on the workdir's storage.

When a workdir's storage stops answering, TensorFlow's gs:// filesystem retries
each request inside C++ (ten attempts, each waiting up to 61 s for a silent
connection), unseen and uninterruptible from Python, and google-cloud-storage
(the lock) retries for two minutes: a run sat silent for over ten minutes per
write. Here each of the run's writes (checkpoints, summaries, history, the
lock, the export) happens inside StorageWatchdog.waiting(what): after NOTICE_S
a line says what is being retried, again every NOTICE_S; a write that fails
with a storage error raises StorageUnavailable; one still not done after the
limit (config.storage_timeout_secs) ends the process with that same one line
and exit status 75, since the main thread can't be interrupted inside
TensorFlow. Either way the line names the last checkpoint saved, from which
the same command resumes.
"""
import contextlib
import os
import signal
import sys
import threading
import time

from absl import logging

from tpu_trainer import stopping
from tpu_trainer import storage
from tpu_trainer.errors import StorageUnavailable
from tpu_trainer.errors import TryAgain

NOTICE_S = 30.0


def is_storage_error(error: BaseException) -> bool:
  """Whether `error` is storage not answering (after the client's own retries):
  TensorFlow's file system, google-cloud-storage, or the HTTP under it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)):
    return True
  if isinstance(error, tf.errors.AbortedError):  # TensorFlow's GCS: "All N retry attempts failed"
    return "retry attempts failed" in str(error)
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  from google.auth import exceptions as auth_exceptions  # pylint: disable=g-import-not-at-top
  return isinstance(error, (exceptions.RetryError, auth_exceptions.TransportError,
                            *storage.transient_errors()))


class StorageWatchdog:
  """Watches the run's writes to `workdir` from a thread of its own (started on
  the first wait, stopped by close())."""

  def __init__(self, workdir: str, limit_s: float, notice_s: float = NOTICE_S):
    # A short limit (tests, impatient users) still gets notices before it.
    self.workdir, self.limit_s, self.notice_s = workdir, limit_s, min(notice_s, limit_s / 3)
    self.last_checkpoint = "none (none saved yet)"
    self.down = False  # a write failed: cleanup that writes is skipped
    self._what, self._since = None, 0.0
    self._lock = threading.Lock()
    self._closed = threading.Event()
    self._thread = None

  def message(self, what: str, cause: str) -> str:
    return (f"the storage of workdir={self.workdir} did not answer while {what} ({cause}); "
            f"nothing more was written. Last checkpoint: {self.last_checkpoint}. Run the "
            "same command again once it answers: it resumes from there (or a newer one, "
            "if the save in progress ended whole).")

  def saved(self, path: str | None) -> None:
    """A checkpoint is written whole (None: none yet): the one to resume from,
    named without asking storage (which may be gone by the time it is needed)."""
    if path:
      self.last_checkpoint = path

  @contextlib.contextmanager
  def waiting(self, what: str):
    """Around one write: `what` says it in the notices ("saving checkpoint 400").
    A wait inside another is the outer one's."""
    if self.down:  # storage failed before: don't wait on it again
      raise StorageUnavailable(self.message(what, "it failed before"))
    with self._lock:
      outer = self._what is not None
      if not outer:
        self._what, self._since = what, time.monotonic()
    if self._thread is None:
      self._thread = threading.Thread(target=self._watch, name="storage-watchdog",
                                      daemon=True)
      self._thread.start()
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not is_storage_error(e):
        raise
      self.down = True
      first = (str(e).strip().splitlines() or [""])[0][:200]
      raise StorageUnavailable(self.message(what, f"{type(e).__name__}: {first}")) from None
    finally:
      if not outer:
        with self._lock:
          self._what = None

  def guarded(self, what: str, fn, *args):
    """A cleanup that writes: `fn(*args)` watched as `what`, skipped once storage
    has failed (it would only wait again)."""
    def cleanup():
      if not self.down:
        with self.waiting(what):
          fn(*args)
    return cleanup

  def _watch(self) -> None:
    notices, watched = 0, None
    while not self._closed.wait(1.0):
      with self._lock:
        what, since = self._what, self._since
      if what is None:
        continue
      if since != watched:  # another wait: its own notices
        notices, watched = 0, since
      waited = time.monotonic() - since
      if waited >= self.limit_s:
        print(f"error: {self.message(what, f'no answer in {waited:.0f} s')}", file=sys.stderr,
              flush=True)
        os._exit(StorageUnavailable.exit_status)  # pylint: disable=protected-access
      if waited >= (notices + 1) * self.notice_s:
        notices += 1
        logging.warning("Still %s after %.0f s: storage is slow or not answering, retrying; "
                        "the run gives up at %.0f s (config.storage_timeout_secs).", what,
                        waited, self.limit_s)

  def close(self) -> None:
    self._closed.set()


class StepWatchdog:
  """Bounded waits on the steps. A step blocked on input that does not come (a
  tf.data service with no worker, or one the trainer cannot reach; a data_dir
  whose storage went silent) holds the main thread inside TensorFlow: it can
  neither log nor run a signal's handler. From a thread of its own, while a
  step runs (running(kind)):
  - every notice_s a line says what it waits for;
  - past the limit (the larger of limit_s and 10x the longest such step so
    far; never the first, which compiles) the run ends, exit 75, the last
    checkpoint named: the same command resumes;
  - a stop signal whose safe point does not come (STOP_GRACE_S or twice the
    longest such step; FIRST_STOP_GRACE_S for the first) ends the process,
    128 + N; a second Ctrl-C at once.
  """

  STOP_GRACE_S = 10.0
  FIRST_STOP_GRACE_S = 30.0  # the first step compiles: its time is not known

  def __init__(self, limit_s: float, storage: StorageWatchdog, notice_s: float = 60.0):
    self.limit_s, self.notice_s = limit_s, min(notice_s, limit_s / 3)
    self._storage = storage  # its last checkpoint
    self._kind, self._since, self._source = None, 0.0, ""
    self._longest = {}  # kind -> the longest step of that kind, seconds
    self._lock = threading.Lock()
    self._closed = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
    self._thread.start()

  @contextlib.contextmanager
  def running(self, kind: str, source: str):
    """Around one execution of steps: kind says which ("training step"), source
    where its input comes from ("records from gs://b/data")."""
    with self._lock:
      self._kind, self._since, self._source = kind, time.monotonic(), source
    try:
      yield
    finally:
      with self._lock:
        self._longest[kind] = max(self._longest.get(kind, 0.0), time.monotonic() - self._since)
        self._kind = None

  def _exit(self, line: str, status: int) -> None:
    print(line, file=sys.stderr, flush=True)
    os._exit(status)  # pylint: disable=protected-access  (the main thread is blocked)

  def _watch(self) -> None:
    signals, notices, watched = [], 0, None
    while not self._closed.is_set():
      now = time.monotonic()
      signals += [(n, now) for n in stopping.arrived(0.5)]
      with self._lock:
        kind, since, source = self._kind, self._since, self._source
        longest = self._longest.get(kind)
      if sum(n == signal.SIGINT for n, _ in signals) >= 2:
        self._exit("interrupted (Ctrl-C twice): stopped without saving. Last checkpoint: "
                   f"{self._storage.last_checkpoint}.", 128 + signal.SIGINT)
      if kind is None or self._closed.is_set():
        continue
      now = time.monotonic()
      waited = now - since
      if signals:
        signum, at = signals[0]
        grace = max(self.STOP_GRACE_S, 2 * longest) if longest else self.FIRST_STOP_GRACE_S
        if now - at >= grace:
          self._exit(f"preempted: {signal.Signals(signum).name}, and the {kind} in progress "
                     f"had not returned {grace:.0f} s later (waiting for {source}?): "
                     "stopped without a new checkpoint. Last checkpoint: "
                     f"{self._storage.last_checkpoint}. Run the same command again to "
                     "resume.", 128 + signum)
      if since != watched:
        notices, watched = 0, since
      limit = max(self.limit_s, 10 * longest) if longest else None
      if limit and waited >= limit:
        self._exit(f"error: no {kind} returned in {waited:.0f} s (the longest took "
                   f"{longest:.1f} s): {source} stopped coming. Last checkpoint: "
                   f"{self._storage.last_checkpoint}. Run the same command again once it "
                   "answers: it resumes from there.", TryAgain.exit_status)
      if waited >= (notices + 1) * self.notice_s:
        notices += 1
        logging.warning("The %s has not returned in %.0f s%s: waiting for %s.%s", kind,
                        waited, f" (the longest took {longest:.1f} s)" if longest else "",
                        source, f" The run ends at {limit:.0f} s (exit 75)." if limit
                        else "")

  def close(self) -> None:
    self._closed.set()
