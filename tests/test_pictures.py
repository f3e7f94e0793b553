"""Reading pictures (`flax_mnist.pictures`): every format and mode, arrays,
transparency, orientation, and each way a file can be unreadable. A picture
read well gives the same MNIST input as the plain one (`digit_input`)."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

import digits
from flax_mnist import pictures, preprocess
from flax_mnist.errors import DataError


def _save(image: Image.Image, path, fmt: str, **options) -> str:
  image.save(path, fmt, **options)
  return str(path)


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
def test_formats_and_modes(fmt, mode, suffix, tmp_path, digit_input):
  gray = digits.on_paper()
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
  assert digits.iou(preprocess.prepare(path).image, digit_input) > 0.85


def test_transparency_is_composited_onto_white(digit_input, tmp_path):
  # Black strokes whose only shape is their alpha, as canvas apps export.
  alpha = np.rint(255 * digits.coverage()).astype(np.uint8)
  rgba = np.zeros(alpha.shape + (4,), np.uint8)
  rgba[..., 3] = alpha
  assert digits.iou(preprocess.prepare(rgba).image, digit_input) > 0.85
  assert pictures.load_gray(Image.new('LA', (30, 30))).min() == 1
  # A GIF whose paper colour is transparent: the paper becomes white.
  gif = Image.fromarray(digits.on_paper()).convert('P')
  path = _save(gif, tmp_path / 'clear.gif', 'GIF', transparency=gif.getpixel((0, 0)))
  with Image.open(path) as image:
    assert 'transparency' in image.info
  assert digits.iou(preprocess.prepare(path).image, digit_input) > 0.85


def test_exif_orientation_is_respected(tmp_path, digit_input):
  upright = Image.fromarray(digits.on_paper())
  stored = upright.rotate(90, expand=True)  # Shown upright after a 90-degree turn.
  exif = Image.Exif()
  exif[0x0112] = 6
  path = _save(stored, tmp_path / 'phone.jpg', 'JPEG', exif=exif, quality=90)
  assert digits.iou(preprocess.prepare(path).image, digit_input) > 0.85
  plain = _save(stored, tmp_path / 'plain.jpg', 'JPEG', quality=90)
  assert digits.iou(preprocess.prepare(plain).image, digit_input) < 0.5


def test_gif_first_frame(tmp_path, digit_input):
  frames = [Image.fromarray(digits.on_paper(3)).convert('P'),
            Image.fromarray(digits.on_paper(7)).convert('P')]
  path = str(tmp_path / 'anim.gif')
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
  assert digits.iou(preprocess.prepare(path).image, digit_input) > 0.85


@pytest.mark.parametrize('array', [
    digits.on_paper(), digits.on_paper()[..., None], np.repeat(digits.on_paper()[..., None], 3, -1),
    digits.on_paper() / 255., digits.on_paper().astype(np.uint16) * 257, digits.on_paper() > 128,
])
def test_arrays(array, digit_input):
  assert digits.iou(preprocess.prepare(array).image, digit_input) > 0.85


@pytest.mark.parametrize('array,message', [
    (np.zeros((4, 28, 28)), 'must be (H, W)'),
    (np.zeros((28,)), 'must be (H, W)'),
    (np.zeros((28, 28), np.int64), 'unsupported image array dtype int64'),
])
def test_bad_arrays(array, message):
  with pytest.raises(DataError, match=message.replace('(', r'\(').replace(')', r'\)')):
    pictures.load_gray(array)


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
  gray = pictures.load_gray(phone_photo)
  assert max(gray.shape) == pictures.WORK_SIZE
  assert preprocess.to_mnist(gray).max() == 255


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match='no such file'):
    pictures.load_gray(str(tmp_path / 'nope.png'))


def test_zero_byte_file(tmp_path):
  path = tmp_path / 'empty.png'
  path.write_bytes(b'')
  with pytest.raises(DataError, match=r'empty file \(0 bytes\)'):
    pictures.load_gray(str(path))


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_truncated_file(fmt, tmp_path):
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), np.uint8)
                  ).save(buffer, fmt)
  path = tmp_path / 'cut'
  path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  with pytest.raises(DataError, match='truncated or damaged'):
    pictures.load_gray(str(path))


def test_not_an_image(tmp_path):
  path = tmp_path / 'notes.png'
  path.write_text('shopping list: eggs, milk\n')
  with pytest.raises(DataError, match='not a PNG, JPEG, BMP, GIF, TIFF or WebP image'):
    pictures.load_gray(str(path))
  eps = _save(Image.fromarray(digits.on_paper()), tmp_path / 'digit.jpg', 'EPS')
  with pytest.raises(DataError, match='not a PNG, JPEG'):
    pictures.load_gray(eps)


@pytest.mark.parametrize('size', [(120, 100), (300, 100)])  # Warning, error.
def test_decompression_bomb(size, tmp_path, monkeypatch):
  path = _save(Image.new('L', size, 255), tmp_path / 'big.png', 'PNG')
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 10_000)
  with pytest.raises(DataError, match='decompression bomb'):
    pictures.load_gray(path)


def test_too_small_to_read():
  with pytest.raises(DataError, match=r'7x30 pixels .* too small to hold a digit'):
    pictures.load_gray(np.zeros((30, 7), np.uint8))
