"""Data parallelism over many devices and hosts, with JAX's own machinery.

Each global batch is split over a 1-D mesh ('data') of the devices of every
process; parameters, optimizer state and the datasets are replicated, and
XLA averages the gradients over the global batch. Several processes (hosts)
join one run through `jax.distributed`; each one feeds its own devices' rows
of every batch. On one device nothing is sharded: the single-device program.
"""

import collections
import dataclasses
import logging
import os
import re
from typing import Any

import jax
import numpy as np

from flax_mnist.errors import ConfigError, FlaxMnistError, first_line

DATA_AXIS = 'data'

# The environment variables `initialize` reads where its arguments are None.
ENV_COORDINATOR = 'FLAX_MNIST_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'FLAX_MNIST_NUM_PROCESSES'
ENV_PROCESS_ID = 'FLAX_MNIST_PROCESS_ID'
ENV_HEARTBEAT = 'FLAX_MNIST_HEARTBEAT_TIMEOUT'
ENVIRONMENT = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, ENV_HEARTBEAT)


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               heartbeat_timeout: int | None = None) -> None:
  """Joins a multi-process run: `jax.distributed.initialize`, before any JAX work.

  Arguments left None come from FLAX_MNIST_COORDINATOR_ADDRESS,
  FLAX_MNIST_NUM_PROCESSES, FLAX_MNIST_PROCESS_ID and
  FLAX_MNIST_HEARTBEAT_TIMEOUT, then from JAX's own detection (Cloud TPU,
  Slurm, Open MPI). A process that stops sending heartbeats for
  `heartbeat_timeout` seconds (default 100) makes the others fail. CPUs
  reduce across processes over TCP with gloo, JAX's default.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
  num_processes = _from_env(num_processes, ENV_NUM_PROCESSES)
  process_id = _from_env(process_id, ENV_PROCESS_ID)
  heartbeat_timeout = _from_env(heartbeat_timeout, ENV_HEARTBEAT)
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        **({} if heartbeat_timeout is None
           else {'heartbeat_timeout_seconds': heartbeat_timeout}))
  except (RuntimeError, ValueError, TypeError) as e:
    raise FlaxMnistError(f'cannot join the distributed run '
                         f'({first_line(e)})') from None


def _from_env(value: int | None, name: str) -> int | None:
  if value is not None or not os.environ.get(name):
    return value
  try:
    return int(os.environ[name])
  except ValueError:
    raise ConfigError(f'{name} must be an integer, got '
                      f'{os.environ[name]!r}') from None


def lost_process_message(error: BaseException) -> str | None:
  """In a multi-process run, one line on `error` if XLA's runtime raised it.

  A process that dies breaks the others' next all-reduce: XLA raises
  JaxRuntimeError (or ValueError where the failed result is passed on) with
  a status code first, e.g. 'UNKNOWN: Gloo all-reduce failed: ...'.
  """
  if not (isinstance(error, (jax.errors.JaxRuntimeError, ValueError)) and
          re.match(r'[A-Z_]+: ', str(error))):
    return None
  return (f'process {jax.process_index()} of {jax.process_count()} stopped: '
          f'{first_line(error)} (has another process of the run died? see '
          'its output)')


def is_primary() -> bool:
  """Whether this process writes the run's files and logs (process 0)."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


class PrimaryLogsOnly(logging.Filter):
  """Lets other processes log only warnings and errors: one copy of each line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or is_primary()


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """Where arrays go: `replicated` and `batch` shardings, None on one device."""

  mesh: jax.sharding.Mesh | None = None

  @classmethod
  def create(cls, num_devices: int, batch_size: int) -> 'DataParallel':
    """A mesh of `num_devices` (0: every device of every process).

    `batch_size` must split evenly over the devices.
    """
    devices = jax.devices()
    count = num_devices or len(devices)
    if count > len(devices):
      raise ConfigError(f'num_devices {count}: only {len(devices)} '
                        f'{jax.default_backend()} device(s) here')
    if jax.process_count() > 1 and count != len(devices):
      raise ConfigError(f'num_devices {count}: a run of {jax.process_count()} '
                        f'processes uses all {len(devices)} devices (set 0)')
    if batch_size % count:
      raise ConfigError(f'batch_size {batch_size} does not split over {count} '
                        f'devices: use a multiple of {count}, or set num_devices')
    if count == 1:
      return cls()
    return cls(jax.sharding.Mesh(np.array(devices[:count]), (DATA_AXIS,)))

  @classmethod
  def of(cls, array: jax.Array) -> 'DataParallel':
    """The data parallelism `array` was replicated by (`replicate`)."""
    sharding = array.sharding
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
      return cls(sharding.mesh)
    return cls()

  @property
  def size(self) -> int:
    return 1 if self.mesh is None else self.mesh.size

  @property
  def replicated(self) -> jax.sharding.NamedSharding | None:
    return None if self.mesh is None else jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec())

  @property
  def batch(self) -> jax.sharding.NamedSharding | None:
    """Rows split over the devices, in order: process 0's devices first."""
    return None if self.mesh is None else jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(DATA_AXIS))

  def replicate(self, tree: Any) -> Any:
    """`tree`'s arrays (the same in every process) on every device.

    Each process puts its own devices' copies; on one device, the default.
    """
    if self.mesh is None:
      return jax.device_put(tree)
    return jax.tree_util.tree_map(lambda x: put(np.asarray(x), self.replicated),
                                  tree)

  def abstract(self, tree: Any) -> Any:
    """`tree`'s shapes (`jax.eval_shape` output) placed as `replicate` places them.

    Restoring a checkpoint against it works whatever device count saved it.
    """
    sharding = self.replicated or jax.sharding.SingleDeviceSharding(
        jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def put(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host array, the same in every process, as a global array over `sharding`."""
  return jax.make_array_from_callback(array.shape, sharding, lambda i: array[i])


class InFlight:
  """Keeps the host at most `limit` dispatches ahead of the devices.

  XLA:CPU launches each device's part of a multi-device program on one pool of
  max(cores, devices) threads, and a launch blocks while its device has 32
  programs queued. The blocked launches then hold the threads that the queued
  programs' all-reduces need: all devices wait forever (JAX 0.10). So every
  program must be paced: `limit` times the programs of a dispatch (a train
  call; an eval batch's gather, step and sum) stays well under 32.
  """

  def __init__(self, limit: int = 4):
    self._limit = limit
    self._pending = collections.deque()

  def add(self, outputs: Any) -> None:
    """Notes a dispatch by its (not donated) outputs; waits for an old one."""
    self._pending.append(outputs)
    if len(self._pending) > self._limit:
      jax.block_until_ready(self._pending.popleft())
