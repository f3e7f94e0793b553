"""SIGTERM and SIGINT during training: finish the step, save, then stop.

Schedulers preempt with SIGTERM and a grace period; people press Ctrl-C.
Either way the loop is told, saves the current step and stops cleanly. A
second signal stops at once (the last complete checkpoint stays good).

In a multi-process run every process must save the same step, but each
would see a signal at its own moment: there JAX's preemption service (on by
default with `jax.distributed`) takes SIGTERM to any process and names one
dispatch at which all of them stop.
"""

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """While entered, remembers the first SIGTERM/SIGINT instead of dying of it.

  Signal handlers can only be set from the main thread; elsewhere this
  leaves the process's handlers alone and never asks to stop.
  """

  def __init__(self):
    self.signal_number: int | None = None
    self._previous = {}

  @property
  def name(self) -> str:
    return signal.Signals(self.signal_number).name

  def requested(self, dispatch: int) -> bool:
    """Whether to stop before `dispatch`, which counts the loop's dispatches
    from 0 in the same way in every process."""
    if (self.signal_number is None and jax.process_count() > 1 and
        multihost_utils.reached_preemption_sync_point(dispatch)):
      self.signal_number = signal.SIGTERM
    return self.signal_number is not None

  def __enter__(self) -> 'StopRequest':
    if (jax.process_count() == 1 and
        threading.current_thread() is threading.main_thread()):
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
