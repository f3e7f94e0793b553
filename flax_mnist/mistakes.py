"""The test images a model gets wrong: the most confident mistakes among an
evaluation's logits (`evaluation.evaluate_split`), and a picture of them
labelled with their class names.

The picture is drawn with PIL alone, so training can put it in TensorBoard
on machines with no plotting library.
"""

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from flax_mnist import datasets

DIGITS = datasets.DATASETS['mnist'].class_names
# Below each enlarged image: its true and predicted labels and the confidence
# (a line's height).
_CAPTION = 16
_GAP = 5


def confident_mistakes(logits_NC: np.ndarray, labels_N: np.ndarray,
                       count: int) -> np.ndarray:
  """Indices of up to `count` misclassified examples, most confident first."""
  predicted, confidence = predictions(logits_NC)
  wrong = np.flatnonzero(predicted != labels_N)
  order = np.argsort(-confidence[wrong], kind='stable')
  return wrong[order[:count]]


def predictions(logits_NC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each row's predicted class and its softmax probability.

  >>> predictions(np.log(np.array([[0.2, 0.8], [0.6, 0.4]])))
  (array([1, 0]), array([0.8, 0.6]))
  """
  # The largest probability alone, 1 / sum(exp(logits - max)): scipy.special's
  # softmax would cost training 0.2 s of imports.
  shifted = logits_NC - logits_NC.max(-1, keepdims=True)
  return logits_NC.argmax(-1), 1 / np.exp(shifted).sum(-1)


def sheet(images_NHW, labels_N: np.ndarray, logits_NC: np.ndarray, *,
          rows: int, columns: int, scale: int,
          class_names: Sequence[str] = DIGITS) -> Image.Image:
  """A `rows` x `columns` sheet of the most confident mistakes, each image
  enlarged `scale` times above 'true > predicted: confidence'.

  Class names longer than a digit go on two lines ('true', '> predicted:
  confidence'), in cells widened to the longest. `images_NHW` may be a device
  array. The sheet's size depends only on the layout and the class names;
  unused cells stay blank.
  """
  chosen = confident_mistakes(logits_NC, labels_N, rows * columns)
  # Indexed on the host: a device array's indexing compiles 8 small programs,
  # 0.15 s, where copying the 10,000 test images takes milliseconds.
  images = np.asarray(images_NHW, np.uint8)[chosen].reshape(-1, 28, 28)
  predicted, confidence = predictions(logits_NC[chosen])
  font = ImageFont.load_default(size=11)
  names = max(map(len, class_names)) > 1
  side = 28 * scale
  width = max(side, *(math.ceil(font.getlength(f'> {name}: 100%'))
                      for name in class_names)) if names else side
  caption = 2 * _CAPTION if names else _CAPTION
  cell_w, cell_h = width + 2 * _GAP, side + caption + 2 * _GAP
  result = Image.new('L', (columns * cell_w, rows * cell_h), 255)
  draw = ImageDraw.Draw(result)
  for n, (image, label, guess, p) in enumerate(
      zip(images, labels_N[chosen], predicted, confidence)):
    left, top = (n % columns) * cell_w + _GAP, (n // columns) * cell_h + _GAP
    result.paste(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST),
                 (left + (width - side) // 2, top))
    true, said = class_names[label], class_names[guess]
    centre = (left + width // 2, top + side + caption // 2)
    if names:
      draw.multiline_text(centre, f'{true}\n> {said}: {p:.0%}',
                          fill=0, font=font, anchor='mm', align='center')
    else:
      draw.text(centre, f'{true} > {said}: {p:.0%}', fill=0,
                font=font, anchor='mm')
  return result
