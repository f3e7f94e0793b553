"""What the PyTorch and TensorFlow references share: their flags, and MNIST.

They read the four IDX files as a user's own script would, not through
`flax_mnist.idx`: importing the library would load JAX into their processes
and bill its import time to them.
"""

import argparse
import gzip
import os

import numpy as np


def _read(data_dir: str, name: str, header: int) -> np.ndarray:
  path = os.path.join(data_dir, name)
  opener = open if os.path.exists(path) else gzip.open
  with opener(path if opener is open else path + '.gz', 'rb') as f:
    return np.frombuffer(bytearray(f.read()), np.uint8, offset=header)


def load(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images_NHW uint8, labels_N uint8) of split 'train' or 't10k'."""
  labels = _read(data_dir, f'{split}-labels-idx1-ubyte', 8)
  images = _read(data_dir, f'{split}-images-idx3-ubyte', 16)
  return images.reshape(len(labels), 28, 28), labels


def arguments(doc: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
  parser.add_argument('--data-dir', required=True)
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--epochs', type=int, default=1)
  parser.add_argument('--max-steps', type=int, help='stop after this many steps')
  return parser
