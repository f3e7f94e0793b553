"""The search behind the `fast` preset: short cosine-schedule runs of its settings.

    python benchmarks/fast_search.py [--model fast_cnn] [--seeds 1 2]
        [--data-dir DIR] [--validation N] [--set KEY=VALUE ...]

Trains every combination of batch size, peak learning rate and epochs in the
grid (the `fast` preset otherwise: Adam (0.7, 0.9), 10% linear warmup then
cosine decay to 0) and prints the final test accuracy and training time of
each; the `fast` preset is the cheapest one whose every seed reaches 99.2%.
With `--validation N` it trains on all but N random training examples and
reports the accuracy on those N, so that the choice never looks at the test
set. On 2 CPU cores the default grid (8 runs) takes a few minutes.
"""

import dataclasses
import itertools
import tempfile

import common
from flax_mnist import configs, train


def main():
  parser = common.arguments(__doc__)
  parser.add_argument('--data-dir', default=common.DEFAULT_DATA_DIR)
  parser.add_argument('--model', default='fast_cnn')
  parser.add_argument('--batch-sizes', nargs='+', type=int, default=[128])
  parser.add_argument('--learning-rates', nargs='+', type=float,
                      default=[4e-3, 6e-3])
  parser.add_argument('--epochs', nargs='+', type=float, default=[2, 2.5])
  parser.add_argument('--seeds', nargs='+', type=int, default=[1, 2])
  parser.add_argument('--validation', type=int, default=0, metavar='N',
                      help='hold out N random training examples and report the '
                      'accuracy on them, not on the test set')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      dest='overrides', help='another config field, e.g. adam_b1=0.7')
  args = parser.parse_args()
  data = common.mnist(args.data_dir, args.smoke)
  if args.validation:
    data = common.held_out(data, args.validation)
  grid = list(itertools.product(args.batch_sizes, args.learning_rates,
                                args.epochs, args.seeds))
  if args.smoke:
    grid = grid[:1]
  rows = []
  for batch_size, learning_rate, epochs, seed in grid:
    config = dataclasses.replace(
        configs.apply_overrides(configs.fast(), args.overrides), model=args.model, batch_size=batch_size,
        learning_rate=learning_rate, epochs=epochs, seed=seed,
        lr_schedule='cosine', checkpoint_every=10**9, max_checkpoints=1)
    warmup = config.total_steps(len(data.train_labels)) // 10
    config = dataclasses.replace(config, warmup_steps=warmup)
    with tempfile.TemporaryDirectory() as workdir:
      _, results = train.train_and_evaluate(config, workdir, data)
    rows.append({'batch': batch_size, 'lr': learning_rate, 'epochs': epochs,
                 'seed': seed, 'steps': config.total_steps(len(data.train_labels)),
                 'accuracy': results['test_accuracy'],
                 'train_s': results['train_seconds'],
                 'compile_s': results['compile_seconds']})
    print(common.format_table(rows[-1:], list(rows[-1])), flush=True)
  common.report('fast_search', rows, list(rows[0]), args.out, model=args.model,
                overrides=args.overrides,
                evaluated_on=f'{args.validation} held-out training examples'
                if args.validation else 'the test set')


if __name__ == '__main__':
  main()
