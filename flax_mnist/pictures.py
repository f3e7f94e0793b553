"""Pictures read and decoded: paths, file content, PIL images and arrays made
grayscale float arrays for `preprocess` to find the digit in.

What may be read is kept narrow on purpose: only the formats in
`IMAGE_FORMATS`, whatever a file's name says; a picture too small to hold a
digit, a decompression bomb or a damaged file is a `DataError` whose message
does not name the file (callers do).
"""

import collections
import errno
import io
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
    raise DataError(too_small(*image.size))
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


def too_small(width: int, height: int, thing: str = 'a digit') -> str:
  """The `DataError` message for a picture under `MIN_SIDE` on a side."""
  return (f'{width}x{height} pixels (width x height) is too small to hold '
          f'{thing} (at least {MIN_SIDE} on each side)')
