"""One live run per workdir: a lock file (local) or object (gs://) naming its owner.

The lock (WORKDIR/.lock) holds host, pid and a lease that the run renews while it
trains. Another run into the same workdir is refused while the lock is live. A
lock left by a killed run (kill -9, a lost VM) does not block forever: on the same
host a dead pid frees it at once; anywhere, an expired lease (LEASE_SECONDS
without renewal) does. On gs:// the lock is created with if_generation_match=0
and taken over with the generation read, so two runs cannot both win.

Each acquisition writes a token of its own. A run whose lease ran out (a stalled
renewal, a clock step) may have lost its lock to another run: its renewal and
its check before a checkpoint (confirm) compare and swap against its token (the
generation on gs://; locally under an flock of the workdir), and on finding
another run's lock it stops with one line before writing anything more.
"""
import contextlib
import fcntl
import json
import os
import socket
import time
import uuid

from tpu_trainer import storage
from tpu_trainer.errors import UserError

LOCK_FILE = ".lock"
LEASE_SECONDS = 15 * 60


def process_start_time(pid: int) -> float | None:
  """When a process started (epoch seconds), from Linux's /proc; None elsewhere."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time
    with open("/proc/stat") as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
  except (OSError, ValueError, IndexError, StopIteration):
    return None
  return boot + ticks / os.sysconf("SC_CLK_TCK")


class WorkdirLock:
  """Held from acquire() to release(); renew() extends the lease."""

  def __init__(self, workdir: str, client=None):
    self.path = storage.join(workdir, LOCK_FILE)
    self.workdir = workdir
    self.remote = storage.is_gcs(workdir)
    self.client = client
    self.generation = None
    self.token = uuid.uuid4().hex
    self._started = time.time()

  def _owner(self) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": self._started,
            "lease_until": time.time() + LEASE_SECONDS, "token": self.token}

  def _blob(self):
    bucket, name = storage.split_gcs(self.path)
    self.client = self.client or storage.gcs_client()
    return self.client.bucket(bucket).blob(name)

  def _read(self):
    """(owner dict, generation) of the current lock, or (None, None)."""
    if self.remote:
      blob = self._blob()
      from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
      try:
        text = blob.download_as_text()
      except exceptions.NotFound:
        return None, None
      return json.loads(text), blob.generation
    try:
      with open(self.path) as f:
        return json.load(f), None
    except FileNotFoundError:
      return None, None
    except ValueError:  # half written by a run killed mid-write: nobody's
      return {"host": "", "pid": 0, "lease_until": 0}, None

  @contextlib.contextmanager
  def _exclusive(self):
    """Locally: read, compare and write under an flock of the workdir itself."""
    fd = os.open(self.workdir, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      yield
    finally:
      os.close(fd)  # and the flock with it

  def _write(self, owner: dict, expected) -> bool:
    """Creates (expected=0) or replaces the lock atomically when it is still the
    one expected (on gs://: its generation; locally: its token, None for a lock
    without one); False if someone else's write came first."""
    text = json.dumps(owner)
    if self.remote:
      blob = self._blob()
      from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
      try:
        blob.upload_from_string(text, if_generation_match=expected)
      except exceptions.PreconditionFailed:  # someone else's write came first
        return False
      self.generation = blob.generation
      return True
    if expected == 0:
      # Written whole beside it, then linked into place (link fails if the lock
      # exists): a reader never sees a lock half written, which would read as a
      # dead run's and be taken over.
      tmp = storage.local_temp_path(self.path)
      with open(tmp, "w") as f:
        f.write(text)
      try:
        os.link(tmp, self.path)
      except FileExistsError:
        return False
      finally:
        os.remove(tmp)
      return True
    with self._exclusive():
      current, _ = self._read()
      if current is None or current.get("token") != expected:
        return False
      storage.write_text(self.path, text)  # atomic replace
    return True

  @staticmethod
  def _stale(owner: dict) -> bool:
    """Whether a lock's owner is gone: its lease ran out, or on this host its pid
    is dead, is this very process (a rerun in-process, or a restarted container
    whose process is pid 1 again), or belongs to a process started after the lock
    was taken (the pid was reused)."""
    if owner.get("lease_until", 0) < time.time():
      return True
    if owner.get("host") != socket.gethostname():
      return False
    pid = int(owner.get("pid", 0))
    if pid == os.getpid():
      return True
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return True
    except PermissionError:
      return False
    started = process_start_time(pid)
    return started is not None and started > owner.get("started", float("inf")) + 1

  def acquire(self) -> "WorkdirLock":
    if not self.remote:
      os.makedirs(self.workdir, exist_ok=True)
    if self._write(self._owner(), 0):
      return self
    owner, generation = self._read()
    if owner is not None and not self._stale(owner):
      raise UserError(
          f"workdir={self.workdir} is in use by pid {owner.get('pid')} on "
          f"{owner.get('host')} (lock {self.path}, lease until "
          f"{time.strftime('%H:%M:%S', time.localtime(owner.get('lease_until', 0)))}). "
          "Use another --workdir; if that run is dead, delete the lock or wait for the lease.")
    # A dead run's lock (or none: released just now): take it over, if nobody else
    # did in the meantime.
    expected = 0 if owner is None else generation if self.remote else owner.get("token")
    if not self._write(self._owner(), expected):
      raise UserError(f"workdir={self.workdir}: another run took the lock {self.path} "
                      "just now; use another --workdir.")
    return self

  def renew(self) -> None:
    """Extends the lease; UserError if another run holds the lock now."""
    if not self._write(self._owner(), self.generation if self.remote else self.token):
      self._lost()

  def confirm(self) -> None:
    """UserError if another run holds the lock now (before a checkpoint)."""
    owner, _ = self._read()
    if owner is None or owner.get("token") != self.token:
      self._lost(owner)

  def _lost(self, owner=None) -> None:
    owner = owner or self._read()[0] or {}
    raise UserError(
        f"workdir={self.workdir}: this run's lock {self.path} now belongs to pid "
        f"{owner.get('pid', '?')} on {owner.get('host', '?')} (this run's lease ran out: a "
        "stalled renewal or a clock step, and another run took the workdir over). This run "
        "stops here, writing nothing more; the other one goes on there.")

  def release(self) -> None:
    owner, _ = self._read()
    if owner and owner.get("token") == self.token:
      storage.delete(self.path, self.client)
