"""What the user can fix, as types: the tools print these as one 'error:' line
(exit 2). Any other exception is a bug in this project or below it, and keeps
its traceback (cli.run)."""
import errno
import re
import shutil


class UserError(ValueError):
  """Bad input or settings; the message names the thing and what to do."""


class MissingError(UserError, FileNotFoundError):
  """A file, directory or object the user named (or implied) is not there."""


class Diverged(UserError):
  """The loss diverged (NaN, infinite or exploding): training stopped, nothing was
  exported. The tools exit with 3."""


class TryAgain(UserError):
  """Something outside the run failed (its storage, another worker) and the same
  command, run again, resumes from the last checkpoint. The tools exit with 75
  (sysexits' EX_TEMPFAIL: try again later; a GKE job restarts on it) at once:
  the interpreter's own exit would wait on storage again, or on JAX's lost peer
  (its shutdown barrier ends in an abort and a C++ stack)."""
  exit_status = 75


class StorageUnavailable(TryAgain):
  """The workdir's (or data_dir's) storage stopped answering (watchdog.py)."""


class WorkerLost(TryAgain):
  """Another process of a multi-process job is gone (its VM lost, killed)."""


class OtherVariables(UserError):
  """The workdir's checkpoint is of another model or optimizer (a builder's code
  changed since it was written): both backends say it so."""

  def __init__(self, checkpoint: str):
    super().__init__(f"{checkpoint} holds other variables than this model and optimizer: "
                     "use another --workdir, or delete that one.")


def disk_full_path(error: Exception) -> str | None:
  """The path being written when `error` is a full disk (Python's OSError or
  TensorFlow's ResourceExhaustedError), else None."""
  if isinstance(error, OSError) and error.errno == errno.ENOSPC:
    return error.filename or "(a file)"
  if isinstance(error, shutil.Error):  # copytree: [(source, destination, why), ...]
    full = [dst for _, dst, why in error.args[0] if "No space left on device" in str(why)]
    return full[0] if full else None
  match = re.search(r"(\S+); No space left on device", str(error))
  return match.group(1) if match else None
