"""Accuracy of `flax-mnist predict` on realistic pictures, and its speed.

    python benchmarks/predict_accuracy.py --workdir runs/keras_seed1

Makes the synthetic realistic set of tests/digits.py (handwriting and fonts,
photographed on paper or a blackboard; no MNIST in it), predicts it in one
call and prints the accuracy overall and by condition. Then saves MNIST's
10,000 test images as PNG files and checks that predicting the files is
predicting the arrays, and times the preprocessing of a 24-megapixel phone
JPEG and the whole command on 1 and on 100 pictures.
"""

import argparse
import collections
import io
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests'))

import digits  # noqa: E402
from flax_mnist import idx, predict, preprocess  # noqa: E402


def accuracy_table(workdir: str, size: int, seed: int, folder: str) -> None:
  samples = digits.make_set(size, seed)
  digits.save_set(samples, folder)
  start = time.perf_counter()
  predictions = predict.Predictor(workdir).predict_files([folder])
  elapsed = time.perf_counter() - start
  right = collections.Counter()
  total = collections.Counter()
  wrong = []
  for sample, prediction in zip(samples, predictions):
    ok = prediction.error is None and prediction.digit == sample.label
    conditions = sample.kind.split(', ')
    conditions[0] = 'font' if conditions[0] == 'font' else 'handwritten'
    for condition in ['all', *conditions, f'digit {sample.label}']:
      total[condition] += 1
      right[condition] += ok
    if not ok:
      wrong.append(f'  {os.path.basename(prediction.file)}: '
                   f'{prediction.error or prediction.digit} ({sample.kind})')
  print(f'{workdir}: {size} pictures (seed {seed}) predicted in {elapsed:.1f} s\n')
  print('| condition | pictures | accuracy |\n| --- | ---: | ---: |')
  for condition in sorted(total, key=lambda c: (c != 'all', c.startswith('digit'), c)):
    print(f'| {condition} | {total[condition]} | '
          f'{right[condition] / total[condition]:.4f} |')
  print(f'\nwrong ({len(wrong)}):', *wrong, sep='\n')


def mnist_round_trip(workdir: str, folder: str) -> None:
  """MNIST's test images as PNG files: the inputs made from them must be the
  arrays themselves, and so must the predictions."""
  images, labels = idx.load_split(idx.PACKAGED_DIR, 'test')
  images = np.asarray(images).reshape(-1, 28, 28)
  paths = [os.path.join(folder, f'mnist_{i:05d}.png') for i in range(len(images))]
  for image, path in zip(images, paths):
    Image.fromarray(image).save(path)
  predictor = predict.Predictor(workdir)
  from_files = predictor.predict_files(paths)
  direct = predictor.probabilities_of_inputs(images)
  same_inputs = sum(p.error is None and np.array_equal(p.image, image)
                    for p, image in zip(from_files, images))
  same_digits = sum(p.digit == digit for p, digit in zip(from_files, direct.argmax(1)))
  largest = np.abs(np.stack([p.probabilities for p in from_files]) - direct).max()
  print(f'\nMNIST test set as {len(paths)} PNG files: inputs equal to the arrays '
        f'{same_inputs}, same digit {same_digits}, largest probability difference '
        f'{largest:.1e}; accuracy {np.mean(direct.argmax(1) == np.asarray(labels)):.4f}')


def phone_photo(path: str) -> None:
  """A 6000x4000 JPEG: a realistic picture enlarged, with sensor grain."""
  rng = np.random.default_rng(0)
  sample = digits.make_sample(rng, 4)
  with Image.open(io.BytesIO(sample.data)) as small:
    big = small.convert('RGB').resize((6000, 4000), Image.Resampling.BICUBIC)
  # Strong enough grain that the file is as large as a phone's (about 8 MB):
  # decoding time grows with it.
  noise = Image.merge('RGB', [Image.effect_noise((6000, 4000), 40) for _ in range(3)])
  Image.blend(big, noise, 0.25).save(path, quality=92)


def time_phone_photo(folder: str, repeats: int = 5) -> None:
  path = os.path.join(folder, 'phone.jpg')
  phone_photo(path)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    preprocess.prepare(path)
    times.append(time.perf_counter() - start)
  print(f'\n24-megapixel JPEG ({os.path.getsize(path) / 1e6:.1f} MB) read and '
        f'preprocessed: median {np.median(times):.3f} s, best {min(times):.3f} s '
        f'of {repeats}')


def time_command(workdir: str, folder: str) -> None:
  files = sorted(str(p) for p in pathlib.Path(folder).glob('0*'))[:100]
  for count in (1, 100):
    start = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'flax_mnist', 'predict', '--workdir',
                    workdir, *files[:count]], check=False, capture_output=True)
    print(f'flax-mnist predict on {count:3d} picture(s): '
          f'{time.perf_counter() - start:.2f} s wall')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='runs/keras_seed1')
  parser.add_argument('--size', type=int, default=1000)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as folder:
    accuracy_table(args.workdir, args.size, args.seed, folder)
    mnist_round_trip(args.workdir, folder)
    time_phone_photo(folder)
    time_command(args.workdir, folder)


if __name__ == '__main__':
  main()
