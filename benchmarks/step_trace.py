"""Where the library's own training step spends its time, op by op, as XLA runs it.

    python benchmarks/step_trace.py [--models keras_cnn] [--batch-sizes 32 128]
        [--steps 30] [--top 15] [--out results.json] [--smoke]

`step_profile.py` times each piece jitted alone; this traces the real step
(`core.train_steps`, the backend's default steps per dispatch, as `train`
runs it) under `jax.profiler.trace` and sums, per step, the time of every
event named after one of the compiled program's instructions: on CPU one
per thunk (a loop fusion, or a YNNPACK, oneDNN or Eigen kernel), on GPU one
per kernel. What the pieces timed alone miss shows here: which kernels XLA
picked, what it fused or wrote out between them. Independent ops run at the
same time on different cores, so the ops add up to more than the step's
wall time (the `step` row, measured untraced).
"""

import collections
import pathlib
import re
import tempfile
import time

import jax

import common
import throughput
from flax_mnist import configs, core

NUM_EXAMPLES = 60_000
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (.*)$', re.MULTILINE)
_CONTROL_FLOW = re.compile(r'\b(?:while|call|conditional)\(')
_SOURCE = re.compile(r'op_name="(?:jit\(train_steps\)/)?([^"]*)"')


def _instructions(hlo_text: str) -> dict[str, str]:
  """Name -> 'shape source-op' of the compiled program's instructions, less
  control flow."""
  described = {}
  for name, shape, rest in _INSTRUCTION.findall(hlo_text):
    if _CONTROL_FLOW.search(rest):
      continue  # its events enclose those of the ops it runs
    source = _SOURCE.search(rest)
    described[name] = f'{shape} {source.group(1) if source else ""}'.strip()
  return described


def trace_step(model: str, batch_size: int, steps: int) -> tuple[float, dict]:
  """(untraced ms a step, {instruction: (ms a step, description)})."""
  config = configs.Config(model=model, batch_size=batch_size)
  training = throughput.random_training(model, batch_size, 'float32',
                                        core.steps_per_dispatch(config), NUM_EXAMPLES)
  dispatch = training.dispatch
  described = _instructions(training.lowered.compile().as_text())

  def run(state, calls):
    for i in range(calls):
      state, _ = training.run(state, i * dispatch)
    return jax.block_until_ready(state)

  calls = max(1, steps // dispatch)
  state = run(training.state, 3)
  start = time.perf_counter()
  state = run(state, calls)
  step_ms = 1e3 * (time.perf_counter() - start) / (calls * dispatch)
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder):
      run(state, calls)
    trace_file = next(pathlib.Path(folder).rglob('*.xplane.pb'))
    profile = jax.profiler.ProfileData.from_file(str(trace_file))
    totals = collections.Counter()
    for plane in profile.planes:
      for line in plane.lines:
        for event in line.events:
          if event.name in described:
            totals[event.name] += event.duration_ns
  per_step = 1e-6 / (calls * dispatch)
  return step_ms, {name: (ns * per_step, described[name]) for name, ns in totals.items()}


def main():
  parser = common.arguments(__doc__)
  common.add_models_argument(parser, ['keras_cnn', 'deep_cnn'])
  parser.add_argument('--batch-sizes', nargs='+', type=int)
  parser.add_argument('--steps', type=int, default=30, help='steps traced')
  parser.add_argument('--top', type=int, default=15, help='ops listed per case')
  args = parser.parse_args()
  rows = []
  for model in args.models:
    sizes = args.batch_sizes or sorted({throughput.PRESET_BATCH[model], 128})
    for batch_size in ([8] if args.smoke else sizes):
      step_ms, ops = trace_step(model, batch_size, 2 if args.smoke else args.steps)
      ranked = sorted(ops.items(), key=lambda item: -item[1][0])[:args.top]
      rows.append({'model': model, 'batch': batch_size, 'op': 'step',
                   'ms': step_ms, 'what': 'wall time of one step, untraced'})
      rows.append({'model': model, 'batch': batch_size, 'op': 'all ops',
                   'ms': sum(ms for ms, _ in ops.values()),
                   'what': f'{len(ops)} ops, summed'})
      rows += [{'model': model, 'batch': batch_size, 'op': name, 'ms': ms,
                'what': what[:90]} for name, (ms, what) in ranked]
  common.report('trace', rows, ['model', 'batch', 'op', 'ms', 'what'], args.out,
                unit='ms per training step')


if __name__ == '__main__':
  main()
