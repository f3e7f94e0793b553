"""Orbax checkpoints of a run, wrapped in one place.

A checkpoint holds the `TrainState` arrays (step, parameters, optimizer state,
RNG key) and a JSON record with the config and the position in the data.
Restoring goes against an abstract (shape-only) state, so no throwaway
parameters are materialized and shapes are checked.
"""

import os
from typing import Any

import orbax.checkpoint as ocp

from flax_mnist.errors import FlaxMnistError

CHECKPOINT_DIR = 'checkpoints'


class Checkpointer:
  """Saves and restores the checkpoints under `WORKDIR/checkpoints`."""

  def __init__(self, workdir: str, max_to_keep: int = 3, *,
               read_only: bool = False):
    """`read_only` opens an existing run (and fails clearly when there is none)."""
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    if read_only and not os.path.isdir(self.directory):
      raise FlaxMnistError(f'{workdir}: no checkpoints here (train first: '
                           f'flax-mnist train --workdir {workdir} ...)')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, record: dict) -> None:
    """Starts writing; arrays are copied off the device before this returns."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        record=ocp.args.JsonSave(record)), force=True)

  def restore_record(self, step: int | None = None) -> dict:
    """The JSON record (config, data position) of `step`, default the latest."""
    step = self._resolve(step)
    return self._manager.restore(step, args=ocp.args.Composite(
        record=ocp.args.JsonRestore()))['record']

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[Any, dict]:
    """(state shaped like `abstract_state`, record) of `step`, default the latest."""
    step = self._resolve(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          record=ocp.args.JsonRestore()))
    except (ValueError, KeyError, OSError) as e:
      raise FlaxMnistError(f'{self.directory}/{step}: cannot restore this '
                           f'checkpoint ({type(e).__name__}: '
                           f'{str(e).splitlines()[0] if str(e) else ""})') from None
    return restored['state'], restored['record']

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _resolve(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FlaxMnistError(f'{self.directory}: no checkpoint found')
    return step

