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
from scipy import special

from flax_mnist import datasets

DIGITS = datasets.DATASETS['mnist'].class_names
# Below each enlarged image: its true and predicted labels and the confidence
# (a line's height).
_CAPTION = 16
_GAP = 5


def confident_mistakes(logits_NC: np.ndarray, labels_N: np.ndarray,
                       count: int) -> np.ndarray:
  """Indices of up to `count` misclassified examples, most confident first."""
  probabilities = special.softmax(logits_NC, axis=-1)
  predicted = probabilities.argmax(-1)
  wrong = np.flatnonzero(predicted != labels_N)
  order = np.argsort(-probabilities[wrong, predicted[wrong]], kind='stable')
  return wrong[order[:count]]


def sheet(images_NHW, labels_N: np.ndarray, logits_NC: np.ndarray, *,
          rows: int, columns: int, scale: int,
          class_names: Sequence[str] = DIGITS) -> Image.Image:
  """A `rows` x `columns` sheet of the most confident mistakes, each image
  enlarged `scale` times above 'true > predicted: confidence'.

  Class names longer than a digit go on two lines ('true', '> predicted:
  confidence'), in cells widened to the longest. `images_NHW` may be a device
  array: only the chosen images are copied. The sheet's size depends only on
  the layout and the class names; unused cells stay blank.
  """
  chosen = confident_mistakes(logits_NC, labels_N, rows * columns)
  images = np.asarray(images_NHW[chosen], np.uint8).reshape(-1, 28, 28)
  probabilities = special.softmax(logits_NC[chosen], axis=-1)
  font = ImageFont.load_default(size=11)
  names = max(map(len, class_names)) > 1
  side = 28 * scale
  width = max(side, *(math.ceil(font.getlength(f'> {name}: 100%'))
                      for name in class_names)) if names else side
  caption = 2 * _CAPTION if names else _CAPTION
  cell_w, cell_h = width + 2 * _GAP, side + caption + 2 * _GAP
  result = Image.new('L', (columns * cell_w, rows * cell_h), 255)
  draw = ImageDraw.Draw(result)
  for n, (image, label, p) in enumerate(zip(images, labels_N[chosen], probabilities)):
    left, top = (n % columns) * cell_w + _GAP, (n // columns) * cell_h + _GAP
    result.paste(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST),
                 (left + (width - side) // 2, top))
    true, predicted = class_names[label], class_names[p.argmax()]
    centre = (left + width // 2, top + side + caption // 2)
    if names:
      draw.multiline_text(centre, f'{true}\n> {predicted}: {p.max():.0%}',
                          fill=0, font=font, anchor='mm', align='center')
    else:
      draw.text(centre, f'{true} > {predicted}: {p.max():.0%}', fill=0,
                font=font, anchor='mm')
  return result
