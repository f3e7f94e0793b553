"""Epoch time and time to accuracy of each preset, through `train_and_evaluate`.

    python benchmarks/time_to_accuracy.py [--presets keras fast] [--data-dir DIR]

Trains each preset as `flax-mnist train` does, evaluating on all 10,000 test
images a few times per epoch, and reports the training time (steps only:
compilation, evaluation and checkpoints are timed apart) until the test
accuracy first reaches the preset's target, the time per epoch, the compile
time and the whole wall time.
"""

import dataclasses
import json
import os
import tempfile
import time

import common
from flax_mnist import configs, input_pipeline, train

TARGETS = {'beginners': 0.915, 'experts': 0.992, 'keras': 0.99, 'fast': 0.992}


def run(preset: str, data: input_pipeline.Mnist, evals_per_epoch: int,
        overrides: list[str]) -> dict:
  config = configs.apply_overrides(configs.get_preset(preset), overrides)
  num_train = len(data.train_labels)
  steps_per_epoch = config.steps_per_epoch(num_train)
  total_steps = config.total_steps(num_train)
  config = dataclasses.replace(
      config, eval_every=max(1, steps_per_epoch // evals_per_epoch),
      checkpoint_every=total_steps, max_checkpoints=1)
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    _, results = train.train_and_evaluate(config, workdir, data)
    wall = time.perf_counter() - start
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      evals = [e for e in map(json.loads, f) if 'test_accuracy' in e]
  target = TARGETS[preset]
  reached = next((e for e in evals if e['test_accuracy'] >= target), None)
  return {'preset': preset, 'model': config.model, 'batch': config.batch_size,
          'steps': total_steps, 'target': target,
          'final_accuracy': results['test_accuracy'],
          'steps_to_target': reached['step'] if reached else None,
          'train_s_to_target': reached['train_seconds'] if reached else None,
          'epoch_s': results['train_seconds'] * steps_per_epoch / total_steps,
          'train_s': results['train_seconds'],
          'compile_s': results['compile_seconds'], 'wall_s': wall,
          'evals': [(e['step'], e['test_accuracy'], e['train_seconds'])
                    for e in evals]}


def main():
  parser = common.arguments(__doc__)
  parser.add_argument('--presets', nargs='+', default=list(configs.PRESETS))
  parser.add_argument('--data-dir', default=common.DEFAULT_DATA_DIR)
  parser.add_argument('--evals-per-epoch', type=int, default=4)
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override for every preset')
  args = parser.parse_args()
  data = common.mnist(args.data_dir, args.smoke)
  overrides = args.set
  if args.smoke:
    overrides = ['steps=20', 'batch_size=20', *overrides]
  rows = [run(p, data, args.evals_per_epoch, overrides) for p in args.presets]
  common.report('time_to_accuracy', rows,
                ['preset', 'model', 'batch', 'steps', 'target', 'final_accuracy',
                 'steps_to_target', 'train_s_to_target', 'epoch_s', 'train_s',
                 'compile_s', 'wall_s'], args.out)


if __name__ == '__main__':
  main()
