"""Photos and drawings of digits made into MNIST inputs (numpy and PIL only).

MNIST's digits were scanned, size-normalized to fit a 20x20 box keeping their
aspect ratio (which anti-aliases them) and placed in a 28x28 frame with their
centre of mass at its centre, white on black. `to_mnist` does the same to any
picture of a digit after undoing what paper and a camera add: a light
background is inverted, and the paper's texture, uneven lighting and shadows
are divided out before the digit is found, cropped and scaled.
"""

import collections
import dataclasses
import errno
import io
import math
import os
import stat
import warnings
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flax_mnist.errors import DataError

# Anything a caller can hand in as an image (bytes: an encoded file's content).
ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff',
                    '.webp')
# What PIL may decode (by content, whatever the name; JPEG includes the MPO
# files many phones write). Leaving out the rest keeps PIL from, say, handing
# an EPS file to Ghostscript.
IMAGE_FORMATS = ('PNG', 'JPEG', 'BMP', 'GIF', 'TIFF', 'WEBP')
# The longest side the digit is searched at: enough for a digit a tenth of a
# photo's height, small enough that a 24-megapixel photo takes milliseconds.
WORK_SIZE = 512
# Smaller pictures cannot hold a digit anyone could read.
MIN_SIDE = 8
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


@dataclasses.dataclass(frozen=True)
class Prepared:
  """`image` is what the model sees, (28, 28) uint8; `original` is the
  grayscale picture it came from, uint8, at most `WORK_SIZE` on its long side."""

  image: np.ndarray
  original: np.ndarray


def prepare(source: ImageSource, dataset: str = 'mnist') -> Prepared:
  """Reads `source` (a path, file content, PIL image or array) and makes it an
  input of `dataset` ('mnist' or 'fashion_mnist')."""
  gray = load_gray(source)
  return Prepared(MAKERS[dataset](gray), np.rint(gray * 255).astype(np.uint8))


def as_list(images: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
  """`images` as a list: one picture (a path, a PIL image, an (H, W) or
  (H, W, 1|3|4) array) is a list of one; anything else is iterated (a stack
  of (N, H, W) arrays gives N pictures)."""
  if isinstance(images, (str, os.PathLike, Image.Image)):
    return [images]
  if isinstance(images, np.ndarray) and (
      images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4))):
    return [images]
  return list(images)


def not_files(folder: str, names: Iterable[str]) -> str | None:
  """What the entries `names` of `folder` that are not files nor folders are
  ('1 symlink loop, 2 FIFOs'), or None when there are none."""
  kinds = collections.Counter()
  for name in names:
    path = os.path.join(folder, name)
    try:
      mode = os.stat(path).st_mode
    except OSError as e:
      if os.path.islink(path):
        kinds['symlink loop' if e.errno == errno.ELOOP else 'dangling link'] += 1
      continue
    if stat.S_ISFIFO(mode):
      kinds['FIFO'] += 1
    elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
      kinds['special file'] += 1
  return ', '.join(f'{n} {kind}{"s" if n > 1 else ""}'
                   for kind, n in kinds.items()) or None


def load_gray(source: ImageSource) -> np.ndarray:
  """`source` as float32 gray in [0, 1], at most `WORK_SIZE` on its long side.

  Transparency is composited onto white; EXIF orientation is applied.
  Raises `DataError` (its message does not name the file) for anything that is
  not a readable image.
  """
  if isinstance(source, np.ndarray):
    return _gray(_from_array(source))
  if isinstance(source, Image.Image):
    return _gray(ImageOps.exif_transpose(source))
  if isinstance(source, bytes):
    if not source:
      raise DataError('empty (0 bytes)')
    return _decode(io.BytesIO(source))
  return _read(os.fspath(source))


def _read(path: str) -> np.ndarray:
  try:
    if os.path.isdir(path):
      raise DataError('is a folder, not an image')
    if os.path.getsize(path) == 0:
      raise DataError('empty file (0 bytes)')
  except FileNotFoundError:
    raise DataError('no such file') from None
  except OSError as e:
    raise DataError(f'cannot read it ({e.strerror})') from None
  return _decode(path)


def _decode(file: str | io.BytesIO) -> np.ndarray:
  """A path's or an in-memory file's picture, as `load_gray` gives it."""
  with warnings.catch_warnings():
    # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse both.
    warnings.simplefilter('error', Image.DecompressionBombWarning)
    try:
      with Image.open(file, formats=IMAGE_FORMATS) as image:
        # JPEG only: decode at the smallest scale still >= WORK_SIZE.
        image.draft('L', (WORK_SIZE, WORK_SIZE))
        return _gray(ImageOps.exif_transpose(image))
    except DataError:
      raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
      raise DataError(f'refused as a possible decompression bomb: {e} '
                      '(PIL.Image.MAX_IMAGE_PIXELS sets the limit)') from None
    except UnidentifiedImageError:
      raise DataError('not a PNG, JPEG, BMP, GIF, TIFF or WebP image') from None
    except Exception as e:  # Decoders of damaged files raise many kinds.
      raise DataError(f'cannot decode it: truncated or damaged '
                      f'({type(e).__name__}: {e})') from None


def _from_array(array: np.ndarray) -> Image.Image:
  """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as a PIL image.

  uint8 and bool are 8-bit, uint16 (gray only) 16-bit, floats are in [0, 1].
  """
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
    raise DataError('an image array must be (H, W), (H, W, 1), (H, W, 3) or '
                    f'(H, W, 4), got shape {array.shape}')
  if array.dtype == bool:
    array = array.astype(np.uint8) * 255
  if np.issubdtype(array.dtype, np.floating):
    array = np.clip(np.nan_to_num(array), 0, 1).astype(np.float32)
    if array.ndim == 3:
      array = np.rint(array * 255).astype(np.uint8)
  elif not (array.dtype == np.uint8 or (array.dtype == np.uint16 and array.ndim == 2)):
    raise DataError(f'unsupported image array dtype {array.dtype} with shape '
                    f'{array.shape} (use uint8, uint16 for gray, bool or floats '
                    'in [0, 1])')
  return Image.fromarray(np.ascontiguousarray(array))


def _gray(image: Image.Image) -> np.ndarray:
  if min(image.size) < MIN_SIDE:
    raise DataError(_too_small(*image.size))
  if image.mode.startswith('I;16'):
    image = image.convert('I')
  elif image.mode in ('1', 'P', 'PA'):
    image = image.convert('RGBA' if image.has_transparency_data else 'L')
  scale = WORK_SIZE / max(image.size)
  if scale < 1:
    size = tuple(max(1, round(side * scale)) for side in image.size)
    image = image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)
  if image.mode in ('I', 'F'):
    array = np.asarray(image, np.float32)
    # 16-bit sources load as 'I'; 'F' is taken to be in [0, 1] already.
    return np.clip(array / 65535 if image.mode == 'I' else array, 0, 1)
  if image.has_transparency_data:
    image = Image.alpha_composite(Image.new('RGBA', image.size, 'white'),
                                  image.convert('RGBA'))
  return np.asarray(image.convert('L'), np.float32) / 255


def to_mnist(gray: np.ndarray) -> np.ndarray:
  """A grayscale picture of one digit (float in [0, 1]) as a (28, 28) uint8 input.

  A 28x28 picture that is already MNIST-formatted passes through unchanged.
  Raises `DataError` when there is no digit to find.
  """
  if looks_like_mnist(gray):
    return np.rint(gray * 255).astype(np.uint8)
  if min(gray.shape) < MIN_SIDE:
    raise DataError(_too_small(gray.shape[1], gray.shape[0]))
  paper = gray if _light_background(gray) else 1 - gray
  size = 0.3 * min(gray.shape)
  ink = _ink(paper, size)
  region, threshold = _find_digit(ink)
  # Once the strokes' width is known, a closing just wider than anything the
  # pen made follows the shadows more closely (into corners, say).
  width = _stroke_width((ink > threshold) & region)
  if max(5 * width, 9) < size:
    ink = _ink(paper, max(5 * width, 9))
    region, threshold = _find_digit(ink)
  digit = _normalize_strokes(np.clip(ink, 0, 1) * region, threshold)
  return _centre(_fit_box(digit))


def _too_small(width: int, height: int, thing: str = 'a digit') -> str:
  return (f'{width}x{height} pixels (width x height) is too small to hold '
          f'{thing} (at least {MIN_SIDE} on each side)')


def to_fashion_mnist(gray: np.ndarray) -> np.ndarray:
  """A grayscale picture of one article (float in [0, 1]) as a (28, 28) uint8
  Fashion-MNIST input.

  Zalando made each image from a product photo on a light background:
  trimmed to the article, its long side scaled to 28 pixels, centred, and
  negated, so the article is light on black. The same is done here; a 28x28
  picture on a dark background is taken to be such an image already. Raises
  `DataError` when nothing stands out from the background.
  """
  if gray.shape == (FRAME, FRAME) and not _light_background(gray):
    return np.rint(gray * 255).astype(np.uint8)
  if min(gray.shape) < MIN_SIDE:
    raise DataError(_too_small(gray.shape[1], gray.shape[0], 'an article'))
  article = 1 - gray if _light_background(gray) else gray
  ring = np.concatenate([article[0], article[-1], article[:, 0], article[:, -1]])
  background = np.median(ring)
  mask = article - background > max(_MIN_PEAK, 4 * np.median(np.abs(ring - background)))
  if not mask.any():
    raise DataError('no article found (nothing stands out from the background)')
  top, bottom, left, right = _bbox(mask)
  article = np.clip(article[top:bottom, left:right] - background, 0, 1)
  scale = FRAME / max(article.shape)
  size = (max(1, round(article.shape[1] * scale)),
          max(1, round(article.shape[0] * scale)))
  article = np.asarray(Image.fromarray(article / max(article.max(), 1e-6), 'F')
                       .resize(size, Image.Resampling.BOX))
  frame = np.zeros((FRAME, FRAME), np.float32)
  top, left = (FRAME - article.shape[0]) // 2, (FRAME - article.shape[1]) // 2
  frame[top:top + article.shape[0], left:left + article.shape[1]] = article
  return np.rint(np.clip(frame, 0, 1) * 255).astype(np.uint8)


def looks_like_mnist(gray: np.ndarray) -> bool:
  """28x28, light on a black background, 20 pixels on its long side and centred
  by mass: as every MNIST digit is."""
  if gray.shape != (FRAME, FRAME) or np.median(gray) > 0.05:
    return False
  ink = gray > 0
  rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
  if not len(rows):
    return False
  long_side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
  return (BOX - 1 <= long_side <= BOX + 1 and
          np.all(np.abs(_centre_of_mass(gray) - FRAME / 2) <= 1))


def _light_background(gray: np.ndarray) -> bool:
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


def _ink(paper: np.ndarray, size: float) -> np.ndarray:
  """How much darker than the local paper each pixel is, at most 1.

  Below 0 where grain makes the paper lighter than its envelope.

  The paper is the picture's upper envelope: a morphological closing (max then
  min filter) `size` pixels wide erases the ink narrower than that and keeps
  lighting gradients and the edges of shadows wider than that. Dividing by it
  makes ink under a shadow as dark as ink in the light. The envelope is
  smooth, so half resolution will do.
  """
  h, w = paper.shape
  halve = min(h, w) >= 64
  size = _odd(size / 2 if halve else size)
  source = _mean3(_pool(paper, 2, np.mean) if halve else paper)
  # Continuing the picture past its edges keeps gradients exact there.
  padded = np.pad(source, size, mode='reflect', reflect_type='odd')
  envelope = _running_min(_running_max(padded, size), size)[size:-size, size:-size]
  if envelope.shape != (h, w):
    envelope = np.asarray(Image.fromarray(envelope, 'F').resize(
        (envelope.shape[1] * 2, envelope.shape[0] * 2),
        Image.Resampling.BILINEAR))[:h, :w]
  return 1 - paper / np.maximum(envelope, 1e-3)


def _find_digit(ink: np.ndarray) -> tuple[np.ndarray, float]:
  """(a mask of the region around the digit, the faintest ink that counts).

  Marks are grouped into components on a coarse grid. Only strong ink (over
  half the darkest marks) scores, so faint mottling of the paper does not;
  the digit is the top-scoring component plus those of some weight near it,
  so specks and stray marks elsewhere are left out.
  """
  # Averaging out grain; a tiny picture has none to spare.
  smooth = _mean3(ink) if min(ink.shape) >= 32 else ink
  low = max(_otsu(np.clip(smooth, 0, 1)), _MIN_INK)
  mask = smooth > low
  strong = smooth > max(low, 0.5 * np.percentile(smooth, 99.9))
  if not strong.any():
    raise DataError('no digit found: the image is blank (nothing darker or '
                    'lighter than its background)')
  cell = math.ceil(max(ink.shape) / 128)
  labels = _label(_pool(mask, cell, np.any))
  fine = _upsample(labels, cell, ink.shape) * mask
  score = np.bincount(fine[strong], minlength=labels.max() + 1)
  score[0] = 0
  order = np.argsort(-score)
  main = order[0]
  keep = [main]
  box = _bbox(labels == main)
  for component in order[1:]:
    if score[component] < 0.02 * score[main]:
      break
    other = _bbox(labels == component)
    gap = max(other[0] - box[1], box[0] - other[1], other[2] - box[3],
              box[2] - other[3])
    if gap <= 0.2 * max(box[1] - box[0], box[3] - box[2]) + 1:
      keep.append(component)
      box = (min(box[0], other[0]), max(box[1], other[1]),
             min(box[2], other[2]), max(box[3], other[3]))
  strokes = np.isin(fine, keep) & mask
  y0, y1, x0, x1 = _bbox(strokes)
  long_side = max(y1 - y0, x1 - x0)
  region = _upsample(_grow(np.isin(labels, keep), 1), cell, ink.shape)
  # Noise (grain, mottling, JPEG) reaches about 5 of its deviations at most.
  level, noise = _background(smooth)
  if (np.percentile(ink[strokes], 99) < _MIN_PEAK or
      ((smooth - level) / noise)[strokes].max() < 8 or
      long_side < max(5, 0.04 * max(ink.shape))):
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
  h, w = noise.shape
  padded = np.pad(noise, 1, mode='edge')
  around = np.median([padded[dy:dy + h, dx:dx + w]
                      for dy in range(3) for dx in range(3)], axis=0)
  noise = np.maximum(np.minimum(noise, around), _MIN_NOISE)
  return _upsample(level, cell, smooth.shape), _upsample(noise, cell, smooth.shape)


def _normalize_strokes(ink: np.ndarray, threshold: float) -> np.ndarray:
  """The digit as a binary image about 80 pixels tall, strokes MNIST-wide.

  Like NIST's bilevel scans before MNIST's anti-aliasing. A thin pen on a big
  digit or a marker on a small one is thickened or thinned until its strokes
  will be `STROKE_WIDTH` wide in the 20x20 box.
  """
  y0, y1, x0, x1 = _bbox(ink > threshold)
  margin = math.ceil(0.1 * max(y1 - y0, x1 - x0)) + 2
  crop = ink[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin]
  long_side = max(y1 - y0, x1 - x0)
  if long_side >= 2 * _STROKE_SCALE:
    # Max pooling keeps thin strokes that averaging would fade.
    crop = _pool(crop, long_side // _STROKE_SCALE, np.max)
  elif long_side < _STROKE_SCALE:
    scale = _STROKE_SCALE / long_side
    size = (round(crop.shape[1] * scale), round(crop.shape[0] * scale))
    crop = np.asarray(Image.fromarray(crop.astype(np.float32), 'F').resize(
        size, Image.Resampling.BILINEAR))
  # Half the local stroke maximum: the edges of faint and dark strokes alike.
  local_peak = _running_max(crop, _odd(0.25 * max(crop.shape)))
  binary = crop > np.maximum(threshold, 0.5 * local_peak)
  y0, y1, x0, x1 = _bbox(binary)
  long_side = max(y1 - y0, x1 - x0)
  width = _stroke_width(binary)
  if not STROKE_RANGE[0] <= width * BOX / long_side <= STROKE_RANGE[1]:
    # Growing by r pixels adds 2r to both the width and the long side.
    steps = round((STROKE_WIDTH * long_side - BOX * width) /
                  (2 * BOX - 2 * STROKE_WIDTH))
    binary = np.pad(binary, max(steps, 0) + 1)
    adjusted = _grow(binary, steps)
    binary = adjusted if adjusted.any() else binary  # Never thinned away.
  y0, y1, x0, x1 = _bbox(binary)
  return binary[y0:y1, x0:x1].astype(np.float32)


def _fit_box(digit: np.ndarray) -> np.ndarray:
  """Scaled so its long side is 20 pixels; box-filtering anti-aliases it."""
  scale = BOX / max(digit.shape)
  size = (max(1, round(digit.shape[1] * scale)),
          max(1, round(digit.shape[0] * scale)))
  return np.asarray(Image.fromarray(digit, 'F').resize(
      size, Image.Resampling.BOX))


def _centre(digit: np.ndarray) -> np.ndarray:
  """In a 28x28 frame with its centre of mass at pixel (14, 14), as uint8.

  Shifts are whole pixels, as in MNIST, and never push ink out of the frame.
  """
  frame = np.zeros((FRAME, FRAME), np.float32)
  h, w = digit.shape
  top, left = np.rint(FRAME / 2 - _centre_of_mass(digit)).astype(int)
  top, left = min(max(top, 0), FRAME - h), min(max(left, 0), FRAME - w)
  frame[top:top + h, left:left + w] = digit
  return np.rint(np.clip(frame, 0, 1) * 255).astype(np.uint8)


def _centre_of_mass(image: np.ndarray) -> np.ndarray:
  total = image.sum()
  return np.array([image.sum(1) @ np.arange(image.shape[0]),
                   image.sum(0) @ np.arange(image.shape[1])]) / total


def _stroke_width(binary: np.ndarray) -> float:
  """Twice the area over the perimeter: the width of long, thin strokes."""
  padded = np.pad(binary, 1)
  interior = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] &
              padded[1:-1, :-2] & padded[1:-1, 2:])
  return 2 * binary.sum() / max(1, (binary & ~interior).sum())


def _grow(binary: np.ndarray, steps: int) -> np.ndarray:
  """Dilated (steps > 0) or eroded (< 0) by |steps| pixels, alternating 4- and
  8-neighbour steps so the result is nearly round."""
  for i in range(abs(steps)):
    padded = np.pad(binary, 1, constant_values=steps < 0)
    shifts = [padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)
              if i % 2 or dy == 0 or dx == 0]
    binary = np.logical_or.reduce(shifts) if steps > 0 else np.logical_and.reduce(shifts)
  return binary


def _label(mask: np.ndarray) -> np.ndarray:
  """8-connected components, numbered from 1 (0 is background)."""
  h, w = mask.shape
  labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
  while True:
    padded = np.pad(labels, 1)
    grown = np.maximum.reduce([padded[1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx]
                               for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    # Jump to the label of the pixel a label names: far fewer iterations.
    grown = np.where(mask, grown.ravel()[grown.ravel() - 1].reshape(h, w), 0)
    if np.array_equal(grown, labels):
      break
    labels = grown
  # A leading 0 keeps the background 0 even when there is none.
  return np.unique(np.append(0, labels), return_inverse=True)[1][1:].reshape(h, w)


def _otsu(values: np.ndarray) -> float:
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


def _mean3(image: np.ndarray) -> np.ndarray:
  """Mean over each pixel's 3x3 neighbourhood, edges repeated."""
  padded = np.pad(image, 1, mode='edge')
  rows = padded[:-2] + padded[1:-1] + padded[2:]
  return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / np.float32(9)


def _running_max(image: np.ndarray, size: int) -> np.ndarray:
  """Max over a size x size window (odd size), in time independent of size.

  van Herk / Gil-Werman: prefix and suffix maxima within blocks of `size`,
  taken down the columns (whole rows at a time, which numpy does fast).
  """
  r = size // 2
  for _ in range(2):  # Down the columns, then (transposed) along the rows.
    n, w = image.shape
    total = -(-(n + 2 * r) // size) * size
    padded = np.full((total, w), -np.inf, np.float32)
    padded[r:r + n] = image
    blocks = padded.reshape(total // size, size, w)
    prefix = np.maximum.accumulate(blocks, 1).reshape(total, w)
    suffix = np.maximum.accumulate(blocks[:, ::-1], 1)[:, ::-1].reshape(total, w)
    image = np.ascontiguousarray(
        np.maximum(suffix[:n], prefix[size - 1:size - 1 + n]).T)
  return image


def _running_min(image: np.ndarray, size: int) -> np.ndarray:
  return -_running_max(-image, size)


def _blocks(image: np.ndarray, cell: int) -> np.ndarray:
  """(rows, cols, cell * cell): the picture's cell x cell blocks, edges repeated."""
  h, w = image.shape
  padded = np.pad(image, ((0, -h % cell), (0, -w % cell)), mode='edge')
  rows, cols = padded.shape[0] // cell, padded.shape[1] // cell
  return padded.reshape(rows, cell, cols, cell).swapaxes(1, 2).reshape(rows, cols, -1)


def _pool(image: np.ndarray, cell: int, reduce) -> np.ndarray:
  """`reduce` (np.mean, np.max, np.any) over cell x cell blocks."""
  return reduce(_blocks(image, cell), axis=-1)


def _upsample(grid: np.ndarray, cell: int, shape: tuple[int, int]) -> np.ndarray:
  return np.repeat(np.repeat(grid, cell, 0), cell, 1)[:shape[0], :shape[1]]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of the True pixels, bottom and right exclusive."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _odd(size: float) -> int:
  return max(3, int(size) // 2 * 2 + 1)


# How a picture becomes an input of each dataset (`Config.dataset`).
MAKERS = {'mnist': to_mnist, 'fashion_mnist': to_fashion_mnist}
