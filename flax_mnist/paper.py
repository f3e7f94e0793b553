"""The paper a digit is written on: which side of it the ink is, and the ink
map, with the paper's texture, lighting and shadows divided out.

The digit itself is found in that map by `preprocess`.
"""

import math

import numpy as np
from PIL import Image
from scipy import ndimage


def is_light(gray: np.ndarray) -> bool:
  """Whether the digit is darker than the paper around it.

  The picture's border is paper; a smooth surface fitted to it there stands
  for the paper's lighting everywhere. The digit is what departs from it the
  most, below on light paper and above on a dark one.
  """
  step = math.ceil(max(gray.shape) / 160)
  # Plenty for a verdict. Logarithms make lighting an offset, so that ink
  # under a shadow stands out from its paper by as much as in the light.
  gray = np.log(gray[::step, ::step] + 0.05)
  h, w = gray.shape
  yy, xx = np.mgrid[0:h, 0:w]
  yy, xx = yy / max(h - 1, 1) - 0.5, xx / max(w - 1, 1) - 0.5
  ring = max(1, round(0.04 * min(h, w)))
  border = np.ones((h, w), bool)
  border[ring:-ring, ring:-ring] = False
  terms = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], -1)
  rows, values = terms[border], gray[border]
  for _ in range(2):  # Refit without the border's outliers (a digit touching it).
    # Normal equations: the centred terms are well conditioned, and numpy's
    # lstsq is 50 times slower here.
    try:
      coefficients = np.linalg.solve(rows.T @ rows, rows.T @ values)
    except np.linalg.LinAlgError:  # A flat border leaves the fit degenerate.
      coefficients = np.linalg.lstsq(rows, values, rcond=None)[0]
    residual = values - rows @ coefficients
    keep = np.abs(residual) <= 2.5 * np.median(np.abs(residual)) + 1e-3
    rows, values = rows[keep], values[keep]
  detail = gray - terms @ coefficients
  low, median, high = np.percentile(detail, [0.05, 50, 99.95])
  return median - low > high - median


def ink(page: np.ndarray, size: float) -> np.ndarray:
  """How much darker than the local paper each pixel of `page` (dark on
  light) is, at most 1.

  Below 0 where grain makes the paper lighter than its envelope.

  The paper is the picture's upper envelope: a morphological closing `size`
  pixels wide erases the ink narrower than that and keeps lighting gradients
  and the edges of shadows wider than that. Dividing by it makes ink under a
  shadow as dark as ink in the light. The envelope is smooth, so half
  resolution will do.
  """
  h, w = page.shape
  halve = min(h, w) >= 64
  size = 2 * int((size / 2 if halve else size) / 2) + 1  # Odd: centred windows.
  source = page
  if halve:  # 2x2 means (of what there is at an odd edge).
    source = np.asarray(Image.fromarray(np.asarray(page, np.float32)).reduce(2))
  source = ndimage.uniform_filter(source, 3, mode='nearest')
  # Continuing the picture past its edges (by point reflection) keeps
  # gradients exact there; the closing reaches size - 1 pixels, all padding.
  padded = np.pad(source, size, mode='reflect', reflect_type='odd')
  envelope = ndimage.grey_closing(padded, size)[size:-size, size:-size]
  if halve:
    double = (2 * envelope.shape[1], 2 * envelope.shape[0])
    envelope = np.asarray(Image.fromarray(envelope).resize(
        double, Image.Resampling.BILINEAR))[:h, :w]
  return 1 - page / np.maximum(envelope, 1e-3)


def otsu(values: np.ndarray) -> float:
  """The threshold that best splits `values` (in [0, 1]) into two classes."""
  counts, edges = np.histogram(values, 256, (0, 1))
  centres = (edges[:-1] + edges[1:]) / 2
  weight = np.cumsum(counts)
  total = np.cumsum(counts * centres)
  with np.errstate(divide='ignore', invalid='ignore'):
    below = total / weight
    above = (total[-1] - total) / (weight[-1] - weight)
    between = weight * (weight[-1] - weight) * (below - above) ** 2
  if np.isnan(between[:-1]).all():  # A single value: nothing to split.
    return 1.0
  return float(edges[np.nanargmax(between[:-1]) + 1])
