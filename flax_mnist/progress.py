"""Progress bars for long tasks, drawn only when asked for.

The library reports through `logging` in every mode; a caller that writes to
a terminal (the command line) also asks for tqdm bars, and routes the log
lines through `BarHandler` so that they scroll above the bars. tqdm is
imported only when a bar is drawn.
"""

import contextlib
import logging
import os
import shutil
import sys
from typing import Any, Iterator


def _tqdm():
  from tqdm import tqdm
  return tqdm


class NoBar:
  """Stands in for a bar that is not drawn."""

  n = 0

  def update(self, n: int = 1) -> None:
    pass

  def set_postfix_str(self, s: str = '', refresh: bool = True) -> None:
    pass


@contextlib.contextmanager
def bar(enabled: bool, total: int, desc: str, unit: str, *, initial: int = 0,
        leave: bool = True) -> Iterator[Any]:
  """A tqdm bar on stdout counting `unit`s; when not `enabled`, an object with
  the same `update`, `set_postfix_str` and `n` that draws nothing."""
  if not enabled:
    yield NoBar()
    return
  with _tqdm()(total=total, initial=initial, desc=desc, unit=f' {unit}',
               leave=leave, file=sys.stdout, **_screen(),
               bar_format='{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} '
                          '[{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]') as b:
    yield b


def _screen() -> dict[str, Any]:
  """Follow the terminal's size; where it reports none (a pty opened by
  `script` or a CI runner), tqdm would hide its bars, so take shutil's fallback."""
  try:
    size = os.get_terminal_size(sys.stdout.fileno())
    if size.columns and size.lines:
      return {'dynamic_ncols': True}
  except (OSError, ValueError):
    pass
  fallback = shutil.get_terminal_size()
  return {'ncols': fallback.columns, 'nrows': fallback.lines}


class BarHandler(logging.StreamHandler):
  """Writes each log line above the progress bars instead of through them."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      _tqdm().write(self.format(record), file=self.stream)
    except Exception:  # logging's contract: report, never raise.
      self.handleError(record)
