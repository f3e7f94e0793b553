"""The code blocks of the project's Markdown pages (README.md and
docs/from-tensorflow.md), and what running them needs."""

import re

from PIL import Image, ImageDraw

_BLOCK = re.compile(r'^```([^\n]*)\n(.*?)^```$', re.M | re.S)


def blocks(text: str, info: str = 'python') -> list[str]:
  """The code of each fenced block of `text` whose info string is `info`."""
  return [code for kind, code in _BLOCK.findall(text) if kind.strip() == info]


def run(code: str, namespace: dict, where: str) -> None:
  """Runs `code` in `namespace`; a traceback names `where` (page and block)."""
  exec(compile(code, where, 'exec'), namespace)


def draw_digit(path) -> None:
  """A dark 7 drawn with a marker on white paper."""
  image = Image.new('L', (120, 160), 235)
  draw = ImageDraw.Draw(image)
  draw.line([(25, 30), (95, 30), (50, 135)], fill=20, width=9)
  image.save(path)
