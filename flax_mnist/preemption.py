"""SIGTERM and SIGINT during training: finish the step, save, then stop.

Schedulers preempt with SIGTERM and a grace period; people press Ctrl-C.
Either way the loop is told, saves the current step and stops cleanly. A
second signal stops at once (the last complete checkpoint stays good).
"""

import logging
import signal
import threading

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """While entered, remembers the first SIGTERM/SIGINT instead of dying of it.

  Signal handlers can only be set from the main thread; elsewhere, or with
  `listen` False, this leaves the process's handlers alone and never asks to
  stop.
  """

  def __init__(self, listen: bool = True):
    self.signal_number: int | None = None
    self._listen = listen
    self._previous = {}

  @property
  def name(self) -> str:
    return signal.Signals(self.signal_number).name

  def __enter__(self) -> 'StopRequest':
    if self._listen and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous = {}

  def _handle(self, number: int, frame) -> None:
    if self.signal_number is not None:
      raise KeyboardInterrupt
    self.signal_number = number
    logger.warning('%s: saving a checkpoint after this step, then stopping '
                   '(send it again to stop at once)', self.name)
