"""What the user can fix, as types: the tools print these as one 'error:' line
(exit 2). Any other exception is a bug in this project or below it, and keeps
its traceback (cli.run)."""


class UserError(ValueError):
  """Bad input or settings; the message names the thing and what to do."""


class MissingError(UserError, FileNotFoundError):
  """A file, directory or object the user named (or implied) is not there."""


class Diverged(UserError):
  """The loss diverged (NaN, infinite or exploding): training stopped, nothing was
  exported. The tools exit with 3."""


class StorageUnavailable(UserError):
  """The workdir's storage stopped answering (watchdog.py): nothing more could be
  written; rerunning the same command resumes from the last checkpoint. The
  tools exit with 75 (sysexits' EX_TEMPFAIL: try again later) at once, without
  the cleanup that would wait on storage again."""
  exit_status = 75


class OtherVariables(UserError):
  """The workdir's checkpoint is of another model or optimizer (a builder's code
  changed since it was written): both backends say it so."""

  def __init__(self, checkpoint: str):
    super().__init__(f"{checkpoint} holds other variables than this model and optimizer: "
                     "use another --workdir, or delete that one.")
