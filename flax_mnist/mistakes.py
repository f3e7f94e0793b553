"""The test digits a model gets wrong: the most confident mistakes among an
evaluation's logits (`evaluation.evaluate_split`), and a labelled picture.

The picture is drawn with PIL alone, so training can put it in TensorBoard
on machines with no plotting library.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import special

# Below each enlarged digit: its true and predicted labels and the confidence.
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
          rows: int, columns: int, scale: int) -> Image.Image:
  """A `rows` x `columns` sheet of the most confident mistakes, each digit
  enlarged `scale` times above 'true > predicted: confidence'.

  `images_NHW` may be a device array: only the chosen digits are copied. The
  sheet's size depends only on the layout; unused cells stay blank.
  """
  chosen = confident_mistakes(logits_NC, labels_N, rows * columns)
  images = np.asarray(images_NHW[chosen], np.uint8).reshape(-1, 28, 28)
  probabilities = special.softmax(logits_NC[chosen], axis=-1)
  side = 28 * scale
  cell_w, cell_h = side + 2 * _GAP, side + _CAPTION + 2 * _GAP
  result = Image.new('L', (columns * cell_w, rows * cell_h), 255)
  draw = ImageDraw.Draw(result)
  font = ImageFont.load_default(size=11)
  for n, (image, label, p) in enumerate(zip(images, labels_N[chosen], probabilities)):
    left, top = (n % columns) * cell_w + _GAP, (n // columns) * cell_h + _GAP
    result.paste(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST),
                 (left, top))
    draw.text((left + side // 2, top + side + _CAPTION // 2),
              f'{label} > {p.argmax()}: {p.max():.0%}', fill=0, font=font,
              anchor='mm')
  return result
