"""Keeps freed memory in the process on glibc, so XLA:CPU's buffers are reused.

glibc serves every block above its mmap threshold (128 KiB, rising to at most
32 MiB) with its own mmap and unmaps it when it is freed, and trims the heap
top above 128 KiB. Each XLA:CPU execution allocates its temporaries, tens of
MiB in one block, and frees them at the end, so with glibc's defaults every
training step faults them back in page by page: a keras_cnn epoch at batch
128 took 8.2 million minor faults and 10-19 s of system time on 2 cores
(benchmarks/README.md). `keep_freed_memory` makes malloc serve large blocks
from one heap (no mmap: the threshold alone cannot go above 32 MiB; one
arena) and never trim it, more reliably than GLIBC_TUNABLES=glibc.malloc.
mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296: the process
keeps its peak heap instead of handing it back. Numerics do not change: only where the buffers
come from.

Other C libraries (musl, macOS, Windows) are left as they are.
"""

import ctypes
import os

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def is_glibc() -> bool:
  """Whether this process runs on GNU libc."""
  try:
    version = os.confstr('CS_GNU_LIBC_VERSION')
  except (AttributeError, ValueError, OSError):
    return False
  return bool(version) and version.startswith('glibc')


def keep_freed_memory() -> bool:
  """On glibc, stops malloc returning freed memory to the OS; else nothing.

  Process-wide and lasting: the command line calls it at start; library users
  who train in their own process may call it once. Returns whether it applied.

  >>> keep_freed_memory() in (True, False)  # once, before training
  True
  """
  if not is_glibc():
    return False
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  # No block is mmapped; -1 is SIZE_MAX once glibc widens it: never trim.
  # One arena: a thread's arena grows in heaps of at most 64 MiB and unmaps
  # each one that empties, whatever the trim threshold, so threads share the
  # main one.
  return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1) and
              mallopt(_M_ARENA_MAX, 1))
