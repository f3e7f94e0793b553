"""A realistic set of digit pictures made from scratch (no MNIST in it).

Each picture is a digit written by a simulated hand (stroke templates bent by
a random slant, rotation, proportions and wobble) or set in a font, drawn
with a pen from a fine liner to a thick marker, and photographed: on paper
with texture and noise, under a lighting gradient, partly in shadow, slightly
out of focus, light on dark (a blackboard) for some, small in a large frame
or off-centre for others, and often saved as JPEG.
"""

import dataclasses
import glob
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_FILES = sorted(glob.glob('/usr/share/fonts/truetype/dejavu/DejaVu[!M]*.ttf'))


def _arc(cx, cy, rx, ry, start, stop, n=40):
  """Points on an ellipse from angle `start` to `stop` (degrees, y down)."""
  t = np.radians(np.linspace(start, stop, n))
  return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


# Strokes of each digit in a box 0.6 wide and 1 tall (y down); several hands.
HANDS = {
    0: [[_arc(0.3, 0.5, 0.28, 0.49, -90, 275)],
        [_arc(0.3, 0.5, 0.22, 0.49, -100, 260)]],
    1: [[[(0.3, 0.0), (0.3, 1.0)]],
        [[(0.12, 0.22), (0.34, 0.0), (0.34, 1.0)]],
        [[(0.14, 0.2), (0.32, 0.0), (0.32, 1.0)], [(0.1, 1.0), (0.54, 1.0)]]],
    2: [[_arc(0.3, 0.28, 0.27, 0.27, 195, 375) + [(0.02, 1.0), (0.62, 1.0)]],
        [_arc(0.3, 0.3, 0.28, 0.29, 200, 400) + [(0.05, 0.98), (0.3, 0.9),
                                                 (0.62, 1.0)]]],
    3: [[_arc(0.28, 0.25, 0.26, 0.24, 200, 450) + _arc(0.28, 0.74, 0.3, 0.26, -90, 160)],
        [[(0.02, 0.0), (0.55, 0.0), (0.2, 0.42)] + _arc(0.28, 0.7, 0.3, 0.29, -105, 160)]],
    4: [[[(0.46, 0.0), (0.0, 0.66), (0.62, 0.66)], [(0.46, 0.0), (0.46, 1.0)]],
        [[(0.06, 0.0), (0.03, 0.58), (0.62, 0.58)], [(0.46, 0.18), (0.46, 1.0)]]],
    5: [[[(0.55, 0.0), (0.1, 0.0), (0.07, 0.45)] + _arc(0.3, 0.68, 0.28, 0.31, -125, 150)],
        [[(0.1, 0.02), (0.06, 0.45)] + _arc(0.3, 0.68, 0.28, 0.31, -125, 150),
         [(0.1, 0.02), (0.58, 0.0)]]],
    6: [[_arc(0.58, 0.72, 0.52, 0.72, 262, 180) + _arc(0.31, 0.72, 0.25, 0.27, 180, -180)],
        [[(0.5, 0.0), (0.1, 0.55)] + _arc(0.32, 0.73, 0.25, 0.26, 220, -140)]],
    7: [[[(0.0, 0.0), (0.6, 0.0), (0.2, 1.0)]],
        [[(0.0, 0.05), (0.6, 0.0), (0.22, 1.0)], [(0.15, 0.5), (0.52, 0.5)]]],
    8: [[_arc(0.3, 0.25, 0.22, 0.24, 0, 360), _arc(0.3, 0.73, 0.28, 0.27, -90, 270)],
        [_arc(0.3, 0.26, 0.24, 0.25, 90, 450) + _arc(0.3, 0.74, 0.29, 0.25, -90, 270)]],
    9: [[_arc(0.3, 0.28, 0.27, 0.27, 0, 360) + [(0.56, 1.0)]],
        [_arc(0.3, 0.28, 0.27, 0.27, 10, 370) + _arc(-0.05, 0.28, 0.62, 0.72, 0, 75)]],
}


@dataclasses.dataclass(frozen=True)
class Sample:
  """A picture of `label`, encoded as a file of `fmt`, and how it was made."""

  data: bytes
  fmt: str
  label: int
  kind: str

  @property
  def suffix(self) -> str:
    return {'JPEG': '.jpg', 'PNG': '.png'}[self.fmt]


def hand_coverage(rng, label, height, pen, size):
  """Ink coverage (float, (h, w)) of a handwritten digit about `height` tall."""
  strokes = HANDS[label][rng.integers(len(HANDS[label]))]
  slant = rng.uniform(-0.3, 0.15)
  angle = math.radians(rng.uniform(-10, 10))
  widen = rng.uniform(0.75, 1.3)
  phases = rng.uniform(0, 2 * math.pi, 4)
  wobble = rng.uniform(0, 0.035)

  def transform(x, y):
    x, y = (x - 0.3) * widen, y - 0.5
    x += wobble * math.sin(3 * y + phases[0]) + wobble * math.sin(5 * x + phases[1])
    y += wobble * math.sin(4 * x + phases[2]) + wobble * math.sin(3 * y + phases[3])
    x -= slant * y
    return (x * math.cos(angle) - y * math.sin(angle),
            x * math.sin(angle) + y * math.cos(angle))

  return _render([[transform(x, y) for x, y in stroke] for stroke in strokes],
                 height, pen, size)


def coverage(label=3, size=(200, 160), pen=10.0) -> np.ndarray:
  """The unit tests' digit: `hand_coverage` 0.7 of the short side tall, seed 0."""
  return hand_coverage(np.random.default_rng(0), label, 0.7 * min(size), pen, size)


def on_paper(label=3, size=(200, 160), pen=10.0) -> np.ndarray:
  """The unit tests' plain picture: `coverage` in dark ink on light paper,
  uint8 (h, w)."""
  return np.rint(255 * (0.92 - 0.82 * coverage(label, size, pen))).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two uint8 inputs' pixels over half."""
  a, b = a > 127, b > 127
  return (a & b).sum() / (a | b).sum()


def _render(strokes, height, pen, size):
  """Strokes (centred unit coordinates) drawn 3x larger, then box-filtered."""
  factor = 3
  canvas = Image.new('L', (size[0] * factor, size[1] * factor))
  draw = ImageDraw.Draw(canvas)
  width = max(1, round(pen * factor))
  centre = (canvas.width / 2, canvas.height / 2)
  for stroke in strokes:
    points = [(centre[0] + x * height * factor, centre[1] + y * height * factor)
              for x, y in stroke]
    draw.line(points, fill=255, width=width, joint='curve')
    for x, y in (points[0], points[-1]):  # Round pen tips.
      draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2),
                   fill=255)
  small = canvas.resize(size, Image.Resampling.BOX)
  return np.asarray(small, np.float32) / 255


def _font_coverage(rng, label, height, size):
  """Ink coverage of the digit set in a random font, about `height` tall."""
  choices = len(FONT_FILES) + 1
  choice = rng.integers(choices)
  points = max(8, round(height * 1.35))
  if choice == len(FONT_FILES):
    font = ImageFont.load_default(size=points)
  else:
    font = ImageFont.truetype(FONT_FILES[choice], points)
  canvas = Image.new('L', size)
  ImageDraw.Draw(canvas).text((size[0] / 2, size[1] / 2), str(label), fill=255,
                              font=font, anchor='mm')
  canvas = canvas.rotate(rng.uniform(-8, 8), Image.Resampling.BILINEAR)
  return np.asarray(canvas, np.float32) / 255


def _smooth_noise(rng, shape, scale):
  """Noise with features about `scale` pixels across, unit standard deviation."""
  small = (max(2, round(shape[1] / scale)), max(2, round(shape[0] / scale)))
  noise = Image.fromarray(rng.standard_normal(small[::-1]).astype(np.float32), 'F')
  noise = np.asarray(noise.resize(shape[::-1], Image.Resampling.BICUBIC))
  return noise / max(noise.std(), 1e-6)


def _lighting(rng, shape, kinds):
  """A multiplicative illumination field: gradient, shadow, both or neither."""
  h, w = shape
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  light = np.ones(shape, np.float32)
  if 'gradient' in kinds:
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(direction) + yy * math.sin(direction))
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1)
    light *= 1 - rng.uniform(0.3, 0.55) * ramp
  if 'shadow' in kinds:
    direction = rng.uniform(0, 2 * math.pi)
    along = xx * math.cos(direction) + yy * math.sin(direction)
    edge = rng.uniform(np.percentile(along, 25), np.percentile(along, 75))
    softness = rng.uniform(2, 0.08 * max(shape))
    inside = 0.5 + 0.5 * np.tanh((along - edge) / (2 * softness))  # A sigmoid.
    light *= 1 - rng.uniform(0.3, 0.55) * inside
  return light


def make_sample(rng: np.random.Generator, label: int) -> Sample:
  """One picture of `label`, every condition drawn from `rng`."""
  small_in_frame = rng.random() < 0.15
  w, h = rng.choice([(480, 640), (640, 480), (400, 400), (300, 400), (256, 256)])
  if rng.random() < 0.3:
    w, h = w // 3, h // 3
  fraction = rng.uniform(0.12, 0.2) if small_in_frame else rng.uniform(0.3, 0.75)
  height = fraction * min(w, h)
  font = rng.random() < 0.3
  if font:
    ink = _font_coverage(rng, label, height, (w, h))
    pen = 'font'
  else:
    relative = rng.choice([0.04, 0.07, 0.1, 0.14, 0.18])
    ink = hand_coverage(rng, label, height, max(1.0, relative * height), (w, h))
    pen = f'pen {relative:.2f}'
  # Off-centre: anywhere the digit still fits.
  ys, xs = np.nonzero(ink > 0.05)
  dy = rng.integers(-ys.min(), h - ys.max()) if len(ys) else 0
  dx = rng.integers(-xs.min(), w - xs.max()) if len(xs) else 0
  ink = np.roll(ink, (dy, dx), (0, 1))

  kinds = [k for k, p in (('gradient', 0.6), ('shadow', 0.4)) if rng.random() < p]
  light = _lighting(rng, (h, w), kinds)
  dark_background = rng.random() < 0.2
  if dark_background:
    background = rng.uniform(0.08, 0.3) * np.array([0.9, 1.0, 0.95])
    colour = rng.uniform(0.75, 0.95) * np.ones(3)
    ink = ink * rng.uniform(0.7, 1.0, ink.shape).astype(np.float32)  # Chalk.
  else:
    background = rng.uniform(0.7, 0.95) * np.array([1.0, 0.97, rng.uniform(0.85, 1)])
    colour = rng.choice([[0.1, 0.1, 0.12], [0.1, 0.15, 0.55], [0.35, 0.35, 0.35],
                         [0.7, 0.1, 0.1]]) * rng.uniform(0.5, 1.2)
  # The paper's mottling is in what it reflects; the sensor's grain is added.
  mottling = rng.uniform(0.003, 0.02) * _smooth_noise(rng, (h, w), rng.uniform(4, 30))
  grain = rng.uniform(0.005, 0.03) * rng.standard_normal((h, w))
  picture = background + (colour - background) * ink[..., None]
  picture = picture * ((1 + mottling) * light)[..., None] + grain[..., None]
  image = Image.fromarray(np.rint(np.clip(picture, 0, 1) * 255).astype(np.uint8))
  blur = rng.uniform(0, 1.5)
  if blur > 0.3:
    image = image.filter(ImageFilter.GaussianBlur(blur))
  fmt = 'JPEG' if rng.random() < 0.6 else 'PNG'
  buffer = io.BytesIO()
  image.save(buffer, fmt, **({'quality': int(rng.integers(40, 95))}
                             if fmt == 'JPEG' else {'compress_level': 1}))
  kind = ', '.join([pen, 'light on dark' if dark_background else 'dark on light',
                    *kinds, *(['small'] if small_in_frame else []), fmt])
  return Sample(buffer.getvalue(), fmt, label, kind)


def make_set(size: int, seed: int = 0) -> list[Sample]:
  """`size` pictures, the digits in turn, reproducible from `seed`."""
  rng = np.random.default_rng(seed)
  return [make_sample(rng, i % 10) for i in range(size)]


def save_set(samples: list[Sample], folder) -> list[str]:
  """Writes the samples as files in `folder`; returns their paths in order."""
  paths = []
  for i, sample in enumerate(samples):
    path = f'{folder}/{i:05d}_{sample.label}{sample.suffix}'
    with open(path, 'wb') as f:
      f.write(sample.data)
    paths.append(path)
  return paths
