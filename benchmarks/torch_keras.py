"""The Keras tutorial's CNN in plain PyTorch: end_to_end.py's PyTorch reference.

    python benchmarks/torch_keras.py --data-dir ../shared/mnist [--batch-size 32]

What a PyTorch user would write: the four IDX files read (numpy) into tensors in
memory, keras_cnn's layers (PyTorch's default initialisation), Adam 1e-3,
one shuffled pass of full batches, then the test set in batches of 1,000.
Prints one JSON line: test accuracy, training and evaluation seconds.
"""

import json
import os
import time

import torch
from torch import nn

import plain_mnist


def keras_cnn() -> nn.Module:
  return nn.Sequential(
      nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
      nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10))


def tensors(data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
  images, labels = plain_mnist.load(data_dir, split)
  return (torch.from_numpy(images).unsqueeze(1).float().div_(255.0),
          torch.from_numpy(labels).long())


def main():
  args = plain_mnist.arguments(__doc__).parse_args()
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  x_train, y_train = tensors(args.data_dir, 'train')
  x_test, y_test = tensors(args.data_dir, 't10k')
  network = keras_cnn()
  optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
  start, step = time.perf_counter(), 0
  network.train()
  for _ in range(args.epochs):
    order = torch.randperm(len(x_train))
    for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
      if step == args.max_steps:
        break
      ids = order[first:first + args.batch_size]
      optimizer.zero_grad(set_to_none=True)
      nn.functional.cross_entropy(network(x_train[ids]), y_train[ids]).backward()
      optimizer.step()
      step += 1
  train_seconds = time.perf_counter() - start
  network.eval()
  correct = 0
  with torch.no_grad():
    for first in range(0, len(x_test), 1000):
      logits = network(x_test[first:first + 1000])
      correct += (logits.argmax(1) == y_test[first:first + 1000]).sum().item()
  print(json.dumps({'steps': step, 'test_accuracy': correct / len(x_test),
                    'train_seconds': train_seconds,
                    'eval_seconds': time.perf_counter() - start - train_seconds}))


if __name__ == '__main__':
  main()
