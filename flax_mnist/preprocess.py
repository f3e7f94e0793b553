"""Photos and drawings of digits made into MNIST inputs (scipy.ndimage, PIL).

MNIST's digits were scanned, size-normalized to fit a 20x20 box keeping their
aspect ratio (which anti-aliases them) and placed in a 28x28 frame with their
centre of mass at its centre, white on black. `to_mnist` does the same to any
grayscale picture of a digit (`pictures.load_gray` reads one) after undoing
what paper and a camera add: a light background is inverted, and the paper's
texture, uneven lighting and shadows are divided out before the digit is
found, cropped and scaled.
"""

import dataclasses
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from flax_mnist import paper, pictures
from flax_mnist.errors import DataError

FRAME = 28
BOX = 20
# Stroke widths in the 20x20 box, estimated (2 * area / perimeter) on the
# binary digit before it is scaled down. Strokes outside the range are
# thickened or thinned to 2.7, which comes out at about 3 pixels in the 28x28
# input by the same estimate on the pixels over half: MNIST's median is 2.9,
# its middle 80% 2.2 to 4.0 (measured on the test set).
STROKE_WIDTH = 2.7
STROKE_RANGE = (2.2, 3.2)
# The digit's long side while its strokes are thickened or thinned.
_STROKE_SCALE = 80
# How much darker than the paper a mark must be (as a fraction of the paper's
# brightness) to count as ink, and what the darkest marks must reach.
_MIN_INK = 0.05
_MIN_PEAK = 0.1
# Noise is taken to be at least this (8-bit steps, JPEG), so clean pictures
# do not have infinite signal to noise.
_MIN_NOISE = 0.01
# 8-connected components: marks touching at a corner are one stroke.
_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """`image` is what the model sees, (28, 28) uint8; `original` is the
  grayscale picture it came from, uint8, at most `pictures.WORK_SIZE` on its
  long side."""

  image: np.ndarray
  original: np.ndarray


def prepare(source: pictures.ImageSource, dataset: str = 'mnist') -> Prepared:
  """Reads `source` (a path, file content, PIL image or array) and makes it an
  input of `dataset` ('mnist' or 'fashion_mnist')."""
  gray = pictures.load_gray(source)
  return Prepared(MAKERS[dataset](gray), np.rint(gray * 255).astype(np.uint8))


def to_mnist(gray: np.ndarray) -> np.ndarray:
  """A grayscale picture of one digit (float in [0, 1]) as a (28, 28) uint8 input.

  A 28x28 picture that is already MNIST-formatted passes through unchanged.
  Raises `DataError` when there is no digit to find.
  """
  if looks_like_mnist(gray):
    return np.rint(gray * 255).astype(np.uint8)
  if min(gray.shape) < pictures.MIN_SIDE:
    raise DataError(pictures.too_small(gray.shape[1], gray.shape[0]))
  page = gray if paper.is_light(gray) else 1 - gray
  size = 0.3 * min(gray.shape)
  ink = paper.ink(page, size)
  region, threshold = _find_digit(ink)
  # Once the strokes' width is known, a closing just wider than anything the
  # pen made follows the shadows more closely (into corners, say).
  width = _stroke_width((ink > threshold) & region)
  if max(5 * width, 9) < size:
    ink = paper.ink(page, max(5 * width, 9))
    region, threshold = _find_digit(ink)
  digit = _normalize_strokes(np.clip(ink, 0, 1) * region, threshold)
  digit = _scaled(digit, BOX)
  # Whole-pixel shifts, as in MNIST, that never push ink out of the frame.
  top, left = np.rint(FRAME / 2 - np.array(ndimage.center_of_mass(digit))).astype(int)
  return _framed(digit, min(max(top, 0), FRAME - digit.shape[0]),
                 min(max(left, 0), FRAME - digit.shape[1]))


def to_fashion_mnist(gray: np.ndarray) -> np.ndarray:
  """A grayscale picture of one article (float in [0, 1]) as a (28, 28) uint8
  Fashion-MNIST input.

  Zalando made each image from a product photo on a light background:
  trimmed to the article, its long side scaled to 28 pixels, centred, and
  negated, so the article is light on black. The same is done here; a 28x28
  picture on a dark background is taken to be such an image already. Raises
  `DataError` when nothing stands out from the background.
  """
  if gray.shape == (FRAME, FRAME) and not paper.is_light(gray):
    return np.rint(gray * 255).astype(np.uint8)
  if min(gray.shape) < pictures.MIN_SIDE:
    raise DataError(pictures.too_small(gray.shape[1], gray.shape[0], 'an article'))
  article = 1 - gray if paper.is_light(gray) else gray
  ring = np.concatenate([article[0], article[-1], article[:, 0], article[:, -1]])
  background = np.median(ring)
  mask = article - background > max(_MIN_PEAK, 4 * np.median(np.abs(ring - background)))
  if not mask.any():
    raise DataError('no article found (nothing stands out from the background)')
  article = np.clip(article[_bbox(mask)] - background, 0, 1)
  article = _scaled(article / max(article.max(), 1e-6), FRAME)
  return _framed(article, (FRAME - article.shape[0]) // 2,
                 (FRAME - article.shape[1]) // 2)


def looks_like_mnist(gray: np.ndarray) -> bool:
  """28x28, light on a black background, 20 pixels on its long side and centred
  by mass: as every MNIST digit is."""
  if gray.shape != (FRAME, FRAME) or np.median(gray) > 0.05 or not (gray > 0).any():
    return False
  return (BOX - 1 <= _long_side(_bbox(gray > 0)) <= BOX + 1 and
          np.all(np.abs(np.array(ndimage.center_of_mass(gray)) - FRAME / 2) <= 1))


def _find_digit(ink: np.ndarray) -> tuple[np.ndarray, float]:
  """(a mask of the region around the digit, the faintest ink that counts).

  Marks are grouped into components on a coarse grid. Only strong ink (over
  half the darkest marks) scores, so faint mottling of the paper does not;
  the digit is the top-scoring component plus those of some weight near it,
  so specks and stray marks elsewhere are left out.
  """
  # Averaging out grain; a tiny picture has none to spare.
  smooth = ndimage.uniform_filter(ink, 3, mode='nearest') if min(ink.shape) >= 32 else ink
  low = max(paper.otsu(np.clip(smooth, 0, 1)), _MIN_INK)
  mask = smooth > low
  strong = smooth > max(low, 0.5 * np.percentile(smooth, 99.9))
  if not strong.any():
    raise DataError('no digit found: the image is blank (nothing darker or '
                    'lighter than its background)')
  cell = math.ceil(max(ink.shape) / 128)
  labels, count = ndimage.label(_blocks(mask, cell).any(-1), _EIGHT_NEIGHBOURS)
  fine = _upsample(labels, cell, ink.shape) * mask
  score = np.bincount(fine[strong], minlength=count + 1)
  score[0] = 0
  boxes = [None, *ndimage.find_objects(labels)]  # Component k's is boxes[k].
  order = np.argsort(-score)
  main = order[0]
  keep = [main]
  box = boxes[main]
  for component in order[1:]:
    if score[component] < 0.02 * score[main]:
      break
    other = boxes[component]
    gap = max(max(o.start - b.stop, b.start - o.stop) for b, o in zip(box, other))
    if gap <= 0.2 * _long_side(box) + 1:
      keep.append(component)
      box = tuple(slice(min(b.start, o.start), max(b.stop, o.stop))
                  for b, o in zip(box, other))
  strokes = np.isin(fine, keep) & mask
  region = _upsample(ndimage.binary_dilation(np.isin(labels, keep)), cell, ink.shape)
  # Noise (grain, mottling, JPEG) reaches about 5 of its deviations at most.
  level, noise = _background(smooth)
  if (np.percentile(ink[strokes], 99) < _MIN_PEAK or
      ((smooth - level) / noise)[strokes].max() < 8 or
      _long_side(_bbox(strokes)) < max(5, 0.04 * max(ink.shape))):
    raise DataError('no digit found: the image is blank but for faint marks or '
                    'specks')
  return region, low


def _background(smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The paper's level and noise in the ink map, in blocks an eighth of the
  picture across: the median, and its distance to the lower quartile over
  that of a normal distribution.

  Ink only adds, so the lower half is the paper's alone wherever the digit
  covers less than half a block. Noise varies from place to place: dividing
  by dim paper (in a shadow) amplifies it.
  """
  cell = max(8, math.ceil(max(smooth.shape) / 8))
  lower, level = np.percentile(_blocks(smooth, cell), [25, 50], axis=-1)
  noise = (level - lower) / 0.6745
  # Noise varies slowly: a block far noisier than its neighbours is mostly
  # digit (a small picture's), so theirs is the better estimate.
  around = ndimage.median_filter(noise, 3, mode='nearest')
  noise = np.maximum(np.minimum(noise, around), _MIN_NOISE)
  return _upsample(level, cell, smooth.shape), _upsample(noise, cell, smooth.shape)


def _normalize_strokes(ink: np.ndarray, threshold: float) -> np.ndarray:
  """The digit as a binary image about 80 pixels tall, strokes MNIST-wide.

  Like NIST's bilevel scans before MNIST's anti-aliasing. A thin pen on a big
  digit or a marker on a small one is thickened or thinned until its strokes
  will be `STROKE_WIDTH` wide in the 20x20 box.
  """
  rows, cols = _bbox(ink > threshold)
  long_side = _long_side((rows, cols))
  margin = math.ceil(0.1 * long_side) + 2
  crop = ink[max(0, rows.start - margin):rows.stop + margin,
             max(0, cols.start - margin):cols.stop + margin]
  if long_side >= 2 * _STROKE_SCALE:
    # Max pooling keeps thin strokes that averaging would fade.
    crop = _blocks(crop, long_side // _STROKE_SCALE).max(-1)
  elif long_side < _STROKE_SCALE:
    scale = _STROKE_SCALE / long_side
    crop = _resized(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                    Image.Resampling.BILINEAR)
  # Half the local stroke maximum: the edges of faint and dark strokes alike.
  window = 2 * int(0.125 * max(crop.shape)) + 1  # Odd: centred.
  local_peak = ndimage.maximum_filter(crop, window, mode='nearest')
  binary = crop > np.maximum(threshold, 0.5 * local_peak)
  long_side = _long_side(_bbox(binary))
  width = _stroke_width(binary)
  if not STROKE_RANGE[0] <= width * BOX / long_side <= STROKE_RANGE[1]:
    # Growing by r pixels adds 2r to both the width and the long side.
    steps = round((STROKE_WIDTH * long_side - BOX * width) /
                  (2 * BOX - 2 * STROKE_WIDTH))
    binary = np.pad(binary, max(steps, 0) + 1)
    adjusted = _grow(binary, steps)
    binary = adjusted if adjusted.any() else binary  # Never thinned away.
  return binary[_bbox(binary)].astype(np.float32)


def _stroke_width(binary: np.ndarray) -> float:
  """Twice the area over the perimeter: the width of long, thin strokes."""
  edge = binary & ~ndimage.binary_erosion(binary)
  return 2 * binary.sum() / max(1, edge.sum())


def _grow(binary: np.ndarray, steps: int) -> np.ndarray:
  """Dilated (steps > 0) or eroded (< 0) by |steps| pixels with a nearly
  round octagon: 4- and 8-neighbour steps taken in turn reach that far."""
  r = abs(steps)
  yy, xx = np.abs(np.mgrid[-r:r + 1, -r:r + 1])
  # ceil(r / 2) 4-neighbour steps and r // 2 8-neighbour ones.
  octagon = yy + xx <= r + r // 2
  if steps >= 0:
    return ndimage.binary_dilation(binary, octagon)
  return ndimage.binary_erosion(binary, octagon, border_value=1)


def _scaled(image: np.ndarray, long_side: int) -> np.ndarray:
  """Scaled so its long side is `long_side` pixels; box-filtering anti-aliases it."""
  scale = long_side / max(image.shape)
  return _resized(image, (max(1, round(image.shape[1] * scale)),
                          max(1, round(image.shape[0] * scale))),
                  Image.Resampling.BOX)


def _resized(image: np.ndarray, size: tuple[int, int],
             resample: Image.Resampling) -> np.ndarray:
  """`image` (float) resampled by PIL to `size`, (width, height)."""
  return np.asarray(Image.fromarray(np.asarray(image, np.float32)).resize(size, resample))


def _framed(image: np.ndarray, top: int, left: int) -> np.ndarray:
  """`image` at (`top`, `left`) in a black 28x28 frame, as uint8."""
  frame = np.zeros((FRAME, FRAME), np.float32)
  frame[top:top + image.shape[0], left:left + image.shape[1]] = image
  return np.rint(np.clip(frame, 0, 1) * 255).astype(np.uint8)


def _blocks(image: np.ndarray, cell: int) -> np.ndarray:
  """(rows, cols, cell * cell): the picture's cell x cell blocks, edges repeated."""
  h, w = image.shape
  padded = np.pad(image, ((0, -h % cell), (0, -w % cell)), mode='edge')
  rows, cols = padded.shape[0] // cell, padded.shape[1] // cell
  return padded.reshape(rows, cell, cols, cell).swapaxes(1, 2).reshape(rows, cols, -1)


def _upsample(grid: np.ndarray, cell: int, shape: tuple[int, int]) -> np.ndarray:
  return np.repeat(np.repeat(grid, cell, 0), cell, 1)[:shape[0], :shape[1]]


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
  """The rows and columns that hold the True pixels (of a mask with some)."""
  return ndimage.find_objects(mask.astype(np.int8))[0]


def _long_side(box: tuple[slice, slice]) -> int:
  return max(side.stop - side.start for side in box)


# How a picture becomes an input of each dataset (`Config.dataset`).
MAKERS = {'mnist': to_mnist, 'fashion_mnist': to_fashion_mnist}
