import numpy as np

from flax_mnist import mistakes


def test_confident_mistakes_come_most_confident_first():
  labels = np.array([0, 1, 2, 3])
  logits = np.array([[5., 0, 0, 0],    # right
                     [3., 0, 0, 0],    # wrong, fairly sure
                     [0., 9, 0, 0],    # wrong, very sure
                     [0., 0, 1, 0.9]])  # wrong, unsure
  assert mistakes.confident_mistakes(logits, labels, 10).tolist() == [2, 1, 3]
  assert mistakes.confident_mistakes(logits, labels, 1).tolist() == [2]


def test_sheet_size_depends_only_on_its_layout():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (12, 28, 28, 1), np.uint8)
  labels = np.arange(12) % 10
  for logits in (rng.normal(size=(12, 10)), np.eye(10)[labels] * 9):
    sheet = mistakes.sheet(images, labels, logits, rows=2, columns=3, scale=2)
    assert sheet.size == (3 * (56 + 10), 2 * (56 + 16 + 10))
  # No mistakes: a blank sheet.
  assert np.asarray(sheet).min() == 255
