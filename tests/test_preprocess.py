import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

import digits
from flax_mnist import idx, preprocess
from flax_mnist.errors import DataError


def _coverage(label=3, size=(200, 160), pen=10.0, seed=0):
  rng = np.random.default_rng(seed)
  return digits.hand_coverage(rng, label, 0.7 * min(size), pen, size)


def _picture(label=3, size=(200, 160), pen=10.0) -> np.ndarray:
  """Dark ink on light paper, uint8 (h, w)."""
  return np.rint(255 * (0.92 - 0.82 * _coverage(label, size, pen))).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a > 127, b > 127
  return (a & b).sum() / (a | b).sum()


def _stroke_width(image: np.ndarray) -> float:
  """The MNIST measure preprocess normalizes: 2 * area / perimeter over half."""
  return preprocess._stroke_width(image > 127)


def _save(image: Image.Image, path, fmt: str, **options) -> str:
  image.save(path, fmt, **options)
  return str(path)


@pytest.fixture(scope='module')
def reference() -> np.ndarray:
  return preprocess.prepare(_picture()).image


def test_output_is_mnist_shaped(reference):
  assert reference.shape == (28, 28) and reference.dtype == np.uint8
  rows, cols = np.flatnonzero(reference.any(1)), np.flatnonzero(reference.any(0))
  assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20
  assert np.all(np.abs(preprocess._centre_of_mass(reference / 255.) - 14) <= 0.5)
  assert reference.max() == 255 and reference[0].max() == 0
  assert 2.2 <= _stroke_width(reference) <= 4.0


def test_mnist_itself_passes_through_unchanged(mnist_dir):
  images, _ = idx.load_split(mnist_dir, 'test')
  images = np.asarray(images).reshape(-1, 28, 28)[:500]
  for image in images:
    assert preprocess.looks_like_mnist(image / 255.)
    np.testing.assert_array_equal(preprocess.prepare(image).image, image)


def _png16_rgb(path, rgb8: np.ndarray) -> str:
  """A 16-bit-per-channel RGB PNG, which PIL cannot write."""
  data = (rgb8.astype('>u2') * 257).tobytes()
  h, w = rgb8.shape[:2]
  raw = b''.join(b'\0' + data[r * w * 6:(r + 1) * w * 6] for r in range(h))

  def chunk(kind, body):
    return (struct.pack('>I', len(body)) + kind + body +
            struct.pack('>I', zlib.crc32(kind + body)))

  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
  return str(path)


@pytest.mark.parametrize('fmt,mode,suffix', [
    ('PNG', 'L', 'png'), ('PNG', 'LA', 'png'), ('PNG', 'RGB', 'png'),
    ('PNG', 'RGBA', 'png'), ('PNG', 'P', 'png'), ('PNG', 'I;16', 'png'),
    ('PNG', 'RGB16', 'png'), ('PNG', '1', 'png'), ('JPEG', 'L', 'jpg'),
    ('JPEG', 'RGB', 'jpg'), ('JPEG', 'CMYK', 'jpg'), ('MPO', 'RGB', 'jpg'),
    ('BMP', 'RGB', 'bmp'),
    ('BMP', 'P', 'bmp'), ('GIF', 'P', 'gif'), ('TIFF', 'RGB', 'tif'),
    ('TIFF', 'CMYK', 'tif'), ('TIFF', 'I;16', 'tiff'), ('TIFF', 'LA', 'tif'),
    ('WEBP', 'RGB', 'webp'), ('WEBP', 'RGBA', 'webp'),
])
def test_formats_and_modes(fmt, mode, suffix, tmp_path, reference):
  gray = _picture()
  path = tmp_path / f'digit.{suffix}'
  if mode == 'RGB16':
    path = _png16_rgb(path, np.repeat(gray[..., None], 3, -1))
  else:
    if mode == 'I;16':
      image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode == '1':
      image = Image.fromarray(gray).point(lambda v: 255 * (v > 128)).convert('1')
    else:
      image = Image.fromarray(gray).convert(mode)
    assert image.mode == mode
    path = _save(image, path, fmt)
  assert _iou(preprocess.prepare(path).image, reference) > 0.85


def test_transparency_is_composited_onto_white(reference, tmp_path):
  # Black strokes whose only shape is their alpha, as canvas apps export.
  alpha = np.rint(255 * _coverage()).astype(np.uint8)
  rgba = np.zeros(alpha.shape + (4,), np.uint8)
  rgba[..., 3] = alpha
  assert _iou(preprocess.prepare(rgba).image, reference) > 0.85
  assert preprocess.load_gray(Image.new('LA', (30, 30))).min() == 1
  # A GIF whose paper colour is transparent: the paper becomes white.
  gif = Image.fromarray(_picture()).convert('P')
  path = _save(gif, tmp_path / 'clear.gif', 'GIF', transparency=gif.getpixel((0, 0)))
  with Image.open(path) as image:
    assert 'transparency' in image.info
  assert _iou(preprocess.prepare(path).image, reference) > 0.85


def test_exif_orientation_is_respected(tmp_path, reference):
  upright = Image.fromarray(_picture())
  stored = upright.rotate(90, expand=True)  # Shown upright after a 90-degree turn.
  exif = Image.Exif()
  exif[0x0112] = 6
  path = _save(stored, tmp_path / 'phone.jpg', 'JPEG', exif=exif, quality=90)
  assert _iou(preprocess.prepare(path).image, reference) > 0.85
  plain = _save(stored, tmp_path / 'plain.jpg', 'JPEG', quality=90)
  assert _iou(preprocess.prepare(plain).image, reference) < 0.5


def test_gif_first_frame(tmp_path, reference):
  frames = [Image.fromarray(_picture(3)).convert('P'),
            Image.fromarray(_picture(7)).convert('P')]
  path = str(tmp_path / 'anim.gif')
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
  assert _iou(preprocess.prepare(path).image, reference) > 0.85


@pytest.mark.parametrize('array', [
    _picture(), _picture()[..., None], np.repeat(_picture()[..., None], 3, -1),
    _picture() / 255., _picture().astype(np.uint16) * 257, _picture() > 128,
])
def test_arrays(array, reference):
  assert _iou(preprocess.prepare(array).image, reference) > 0.85


@pytest.mark.parametrize('array,message', [
    (np.zeros((4, 28, 28)), 'must be (H, W)'),
    (np.zeros((28,)), 'must be (H, W)'),
    (np.zeros((28, 28), np.int64), 'unsupported image array dtype int64'),
])
def test_bad_arrays(array, message):
  with pytest.raises(DataError, match=message.replace('(', r'\(').replace(')', r'\)')):
    preprocess.prepare(array)


def test_light_on_dark_is_inverted(reference):
  assert _iou(preprocess.prepare(255 - _picture()).image, reference) > 0.9


def test_lighting_and_shadow_are_removed(reference):
  coverage = _coverage()
  h, w = coverage.shape
  yy, xx = np.mgrid[0:h, 0:w]
  gradient = 1 - 0.5 * xx / w
  shadow = 1 - 0.5 / (1 + np.exp(-(yy - 0.6 * xx - 40) / 3))  # A sharp edge.
  noise = np.random.default_rng(1).normal(0, 0.02, (h, w))
  paper = 0.9 * gradient * shadow + noise
  photo = paper * (1 - 0.85 * coverage)
  assert _iou(preprocess.prepare(np.clip(photo, 0, 1)).image, reference) > 0.8


@pytest.mark.parametrize('pen', [2.0, 4.0, 25.0])
def test_strokes_are_made_mnist_wide(pen):
  image = preprocess.prepare(_picture(size=(240, 240), pen=pen)).image
  assert 2.3 <= _stroke_width(image) <= 3.7


def test_small_off_centre_digit(reference):
  page = np.full((600, 800), 230, np.uint8)
  page[420:580, 20:220] = _picture()
  assert _iou(preprocess.prepare(page).image, reference) > 0.8


def test_specks_and_stray_marks_are_ignored(reference):
  page = np.full((400, 400), 230, np.uint8)
  page[100:260, 120:320] = _picture()
  rng = np.random.default_rng(0)
  for y, x in rng.integers(0, 396, (30, 2)):
    page[y:y + 2, x:x + 2] = 40
  page[10:20, 360:390] = 40  # A mark in a far corner.
  assert _iou(preprocess.prepare(page).image, reference) > 0.85


def test_tiny_image():
  tiny = np.asarray(Image.fromarray(_picture(1)).resize((8, 8), Image.Resampling.BOX))
  image = preprocess.prepare(tiny).image
  assert image.shape == (28, 28) and image.max() == 255


@pytest.fixture(scope='module')
def phone_photo(tmp_path_factory) -> str:
  """A 24-megapixel (6000x4000) JPEG of a digit on noisy paper."""
  paper = Image.effect_noise((6000, 4000), 12).point(lambda v: v + 70)
  ImageDraw.Draw(paper).line([(2600, 900), (3400, 900), (2900, 3100)],
                             fill=30, width=160, joint='curve')
  path = str(tmp_path_factory.mktemp('phone') / 'photo.jpg')
  paper.convert('RGB').save(path, quality=90)
  return path


def test_24_megapixel_jpeg_is_reduced(phone_photo):
  # Its time is benchmarks/predict_accuracy.py's to measure, not a test's.
  prepared = preprocess.prepare(phone_photo)
  assert max(prepared.original.shape) == preprocess.WORK_SIZE
  assert prepared.image.max() == 255


@pytest.mark.parametrize('make', [
    lambda: np.full((100, 100), 255, np.uint8),
    lambda: np.zeros((100, 100), np.uint8),
    lambda: np.full((28, 28), 0, np.uint8),
    lambda: np.clip(np.random.default_rng(0).normal(0.8, 0.03, (300, 400)) *
                    np.linspace(0.6, 1, 400), 0, 1),
])
def test_blank_images_have_no_digit(make):
  with pytest.raises(DataError, match='no digit found'):
    preprocess.prepare(make())


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match='no such file'):
    preprocess.prepare(str(tmp_path / 'nope.png'))


def test_zero_byte_file(tmp_path):
  path = tmp_path / 'empty.png'
  path.write_bytes(b'')
  with pytest.raises(DataError, match=r'empty file \(0 bytes\)'):
    preprocess.prepare(str(path))


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_truncated_file(fmt, tmp_path):
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), np.uint8)
                  ).save(buffer, fmt)
  path = tmp_path / 'cut'
  path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  with pytest.raises(DataError, match='truncated or damaged'):
    preprocess.prepare(str(path))


def test_not_an_image(tmp_path):
  path = tmp_path / 'notes.png'
  path.write_text('shopping list: eggs, milk\n')
  with pytest.raises(DataError, match='not a PNG, JPEG, BMP, GIF, TIFF or WebP image'):
    preprocess.prepare(str(path))
  eps = _save(Image.fromarray(_picture()), tmp_path / 'digit.jpg', 'EPS')
  with pytest.raises(DataError, match='not a PNG, JPEG'):
    preprocess.prepare(eps)


@pytest.mark.parametrize('size', [(120, 100), (300, 100)])  # Warning, error.
def test_decompression_bomb(size, tmp_path, monkeypatch):
  path = _save(Image.new('L', size, 255), tmp_path / 'big.png', 'PNG')
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 10_000)
  with pytest.raises(DataError, match='decompression bomb'):
    preprocess.prepare(path)
