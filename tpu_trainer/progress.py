"""Progress of long work: done out of the total, rate and ETA.

On a terminal, a live tqdm bar that our log lines print above. Otherwise (logs
of unattended jobs, pipes), a log line at least every `every` seconds of work.
No TensorFlow here: the converter uses it too.
"""
import os
import sys
import time

from absl import logging
import tqdm


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _terminal_columns() -> int:
  """Columns of the terminal stderr is on; 0 when it is not one (or has no size)."""
  try:
    return os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
  except (OSError, ValueError):
    return 0


class Progress:
  """`total` units of work; update() as they are done, log() for a line."""

  def __init__(self, total: int, unit: str, initial: int = 0, every: float = 10.0,
               live: bool | None = None):
    self.total, self.done, self.every = total, initial, every
    self.live = _terminal_columns() > 0 if live is None else live
    self.start = self.last_line = time.perf_counter()
    self._bar = (tqdm.tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True,
                           file=sys.stderr) if self.live else None)

  def update(self, count: int, **postfix) -> None:
    self.done += count
    if self._bar is not None:
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)
      self._bar.update(count)

  def line_due(self) -> bool:
    """Whether `every` seconds passed since the last line, without a live bar."""
    return not self.live and time.perf_counter() - self.last_line >= self.every

  def eta(self, units_per_second: float) -> str:
    return format_duration((self.total - self.done) / max(units_per_second, 1e-9))

  def log(self, message: str, *args) -> None:
    """A log line; a live bar is cleared for it and drawn again below it."""
    self.last_line = time.perf_counter()
    if self._bar is not None:
      self._bar.clear()
    logging.info(message, *args)
    if self._bar is not None:
      self._bar.refresh()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
