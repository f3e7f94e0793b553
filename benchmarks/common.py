"""What every benchmark shares: the machine's description, tables, JSON, data."""

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys

import jax
import numpy as np

from flax_mnist import idx
from flax_mnist import malloc
from flax_mnist import models

# Every benchmark runs with the allocator the command line uses.
malloc.keep_freed_memory()

REPO = pathlib.Path(__file__).resolve().parent.parent
# The real MNIST, shipped in the package.
DEFAULT_DATA_DIR = idx.PACKAGED_DIR


def cpu_model() -> str:
  """The CPU's name, with its family and model: machines that report only
  'AMD EPYC' differ in them (25 is Zen 3 and 4, 26 Zen 5)."""
  fields = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        fields.setdefault(key.strip(), value.strip())
        if not line.strip():
          break
  except OSError:
    pass
  if 'model name' not in fields:
    return platform.processor() or platform.machine()
  if 'cpu family' in fields and 'model' in fields:
    return f"{fields['model name']} (family {fields['cpu family']}, model {fields['model']})"
  return fields['model name']


def environment() -> dict:
  """Versions and hardware, recorded with every result."""
  import flax
  import jaxlib
  import optax
  device = jax.devices()[0]
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': ' '.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
      'python': platform.python_version(),
      'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
      'flax': flax.__version__, 'optax': optax.__version__,
      'backend': jax.default_backend(),
      'device': getattr(device, 'device_kind', str(device)),
      'device_count': jax.device_count(),
      'cpu': cpu_model(), 'cpu_count': os.cpu_count(),
  }


def mnist(data_dir: str, smoke: bool):
  """MNIST from `data_dir`; in smoke mode its first 1,000 / 500 examples."""
  from flax_mnist import input_pipeline
  data = input_pipeline.from_idx_dir(data_dir)
  if smoke:
    data = input_pipeline.Mnist(data.train_images[:1000], data.train_labels[:1000],
                                data.test_images[:500], data.test_labels[:500])
  return data


def held_out(data, count: int, seed: int = 0):
  """`data` with `count` training examples, drawn at random (numpy seed
  `seed`), as its test split and the rest as its training split: settings
  chosen on them never see the test set."""
  from flax_mnist import input_pipeline
  order = np.random.default_rng(seed).permutation(len(data.train_labels))
  if not 0 < count < len(order):
    raise SystemExit(f'--validation {count}: expected 1 to {len(order) - 1} examples')
  held, kept = order[:count], order[count:]
  return input_pipeline.from_arrays(
      (data.train_images[kept], data.train_labels[kept]),
      (data.train_images[held], data.train_labels[held]))


def arguments(doc: str) -> argparse.ArgumentParser:
  """A parser with the flags every benchmark takes."""
  parser = argparse.ArgumentParser(
      description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--smoke', action='store_true',
                      help='tiny sizes, seconds: checks the script still runs')
  parser.add_argument('--out', help='write the results here as JSON')
  return parser


def add_models_argument(parser: argparse.ArgumentParser, default) -> None:
  """`--models`: any of the library's networks, `default` when not given."""
  parser.add_argument('--models', nargs='+', choices=list(models.MODELS),
                      default=list(default), metavar='MODEL',
                      help=f'of {", ".join(models.MODELS)} (default: {" ".join(default)})')


def format_table(rows: list[dict], columns: list[str]) -> str:
  """A plain-text table with one column per key in `columns`."""
  cells = [[_cell(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c)
            for i, c in enumerate(columns)]
  lines = ['  '.join(c.rjust(w) for c, w in zip(columns, widths))]
  lines += ['  '.join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
  return '\n'.join(lines)


def _cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.3g}' if abs(value) < 100 else f'{value:,.0f}'
  return str(value)


def report(name: str, rows: list[dict], columns: list[str], out: str | None,
           **extra) -> None:
  """Prints the table and, with `out`, writes rows + environment as JSON."""
  env = environment()
  print(f'{name} on {env["device"]} ({env["backend"]}, {env["cpu"]}), '
        f'jax {env["jax"]}, flax {env["flax"]}')
  print(format_table(rows, columns))
  if out:
    with open(out, 'w') as f:
      json.dump({'benchmark': name, 'environment': env, **extra, 'rows': rows},
                f, indent=2)
