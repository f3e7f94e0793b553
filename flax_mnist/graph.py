"""A picture of a model's layers, as the tutorials' TensorBoard graph showed it.

The input and each layer are boxes, top to bottom in call order, with the
layer's name, type, output shape and parameter count, joined by arrows. One
layout is drawn either as SVG (written as XML) or as PNG (with PIL), so no
plotting library is needed.
"""

import os
from typing import NamedTuple
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw, ImageFont

from flax_mnist import summary
from flax_mnist.errors import FlaxMnistError

WIDTH = 420
_BOX_W, _BOX_H, _GAP, _TOP = 320, 46, 30, 56
# Colours by layer type, as TensorBoard tells op kinds apart.
_FILLS = {'input': '#fff2cc', 'Conv': '#cfe2f3', 'MaxPool': '#fce5cd',
          'Dense': '#d9ead3', 'Dropout': '#ead1dc'}
_OTHER_FILL = '#eeeeee'
# PNGs are drawn at twice the layout's size, so text stays sharp.
_PNG_SCALE = 2


class _Box(NamedTuple):
  top: int
  fill: str
  title: str
  detail: str


def _layout(name: str) -> tuple[str, list[_Box], int]:
  """(the picture's title, the boxes, the picture's height)."""
  rows = summary.layer_rows(name)
  boxes = [_Box(_TOP, _FILLS['input'], 'input', 'output 28x28x1')]
  for layer, kind, shape, count in rows:
    boxes.append(_Box(_TOP + len(boxes) * (_BOX_H + _GAP),
                      _FILLS.get(kind, _OTHER_FILL), f'{layer} ({kind})',
                      f'output {"x".join(map(str, shape))} · {count:,} parameters'))
  title = f'{name}: {sum(row[3] for row in rows):,} parameters'
  return title, boxes, boxes[-1].top + _BOX_H + 20


def save(name: str, path: str) -> None:
  """Draws model `name` into `path`, as SVG or PNG by its extension.

  >>> save('keras_cnn', 'keras_cnn.svg')
  >>> open('keras_cnn.svg').read(4)
  '<svg'
  """
  extension = os.path.splitext(path)[1].lower()
  draw = {'.svg': _save_svg, '.png': _save_png}.get(extension)
  if draw is None:
    raise FlaxMnistError(f'{path}: cannot draw a graph as '
                         f'{extension or "a file with no extension"}; '
                         'name it .svg or .png')
  try:
    draw(*_layout(name), path)
  except OSError as e:
    raise FlaxMnistError(f'{path}: cannot write the graph ({e.strerror})') from None


def _save_svg(title: str, boxes: list[_Box], height: int, path: str) -> None:
  left, middle = (WIDTH - _BOX_W) // 2, WIDTH // 2
  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
         f'height="{height}" viewBox="0 0 {WIDTH} {height}" '
         'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
         f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
         f'<text x="{middle}" y="30" text-anchor="middle" font-size="16" '
         f'font-weight="bold">{escape(title)}</text>']
  for box, below in zip(boxes, boxes[1:] + [None]):
    out += [f'<rect x="{left}" y="{box.top}" width="{_BOX_W}" height="{_BOX_H}" '
            f'rx="8" fill="{box.fill}" stroke="#555555"/>',
            f'<text x="{middle}" y="{box.top + 19}" text-anchor="middle" '
            f'font-size="14" font-weight="bold">{escape(box.title)}</text>',
            f'<text x="{middle}" y="{box.top + 37}" text-anchor="middle" '
            f'font-size="12" fill="#333333">{escape(box.detail)}</text>']
    if below is not None:
      start, end = box.top + _BOX_H, below.top
      out += [f'<line x1="{middle}" y1="{start}" x2="{middle}" y2="{end - 6}" '
              'stroke="#555555" stroke-width="1.5"/>',
              f'<polygon points="{middle - 5},{end - 8} {middle + 5},{end - 8} '
              f'{middle},{end}" fill="#555555"/>']
  out.append('</svg>\n')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(out))


def _save_png(title: str, boxes: list[_Box], height: int, path: str) -> None:
  s = _PNG_SCALE
  image = Image.new('RGB', (WIDTH * s, height * s), 'white')
  draw = ImageDraw.Draw(image)
  fonts = {size: ImageFont.load_default(size=size * s) for size in (12, 14, 16)}
  left, middle = (WIDTH - _BOX_W) // 2, WIDTH // 2
  draw.text((middle * s, 24 * s), title, fill='black', font=fonts[16], anchor='mm')
  for box, below in zip(boxes, boxes[1:] + [None]):
    draw.rounded_rectangle((left * s, box.top * s, (left + _BOX_W) * s,
                            (box.top + _BOX_H) * s), radius=8 * s, fill=box.fill,
                           outline='#555555', width=s)
    draw.text((middle * s, (box.top + 14) * s), box.title, fill='black',
              font=fonts[14], anchor='mm')
    draw.text((middle * s, (box.top + 33) * s), box.detail, fill='#333333',
              font=fonts[12], anchor='mm')
    if below is not None:
      start, end = box.top + _BOX_H, below.top
      draw.line((middle * s, start * s, middle * s, (end - 6) * s),
                fill='#555555', width=s)
      draw.polygon([((middle - 5) * s, (end - 8) * s), ((middle + 5) * s, (end - 8) * s),
                    (middle * s, end * s)], fill='#555555')
  image.save(path)
