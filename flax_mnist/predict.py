"""Classifying pictures of digits (or, for a Fashion-MNIST run, of articles)
with a trained workdir.

The checkpoint is restored and the forward pass compiled once, for a fixed
batch size, so a hundred pictures cost little more than one; each picture is
read by `pictures` and made into an input of the run's dataset by
`preprocess`. A picture that cannot be read or has no digit is reported by
itself while the others are still predicted.

At about 300 lines it holds what `predict` shows: the `Predictor`, its
per-file results and the sheet of the inputs the model saw.
"""

import concurrent.futures
import dataclasses
import functools
import logging
import os
import textwrap
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from flax_mnist import datasets
from flax_mnist import evaluation
from flax_mnist import inputs
from flax_mnist import models
from flax_mnist import pictures
from flax_mnist import preprocess
from flax_mnist import resume
from flax_mnist.errors import DataError, FlaxMnistError

logger = logging.getLogger(__name__)

# Every forward pass has this many rows (padded), so it compiles only once.
BATCH_SIZE = 64
# The side of each picture in `save_inputs`' sheet.
_TILE = 112


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One picture's result: `probabilities` (10,) or an `error` message.

  `image` is the (28, 28) uint8 input the model saw and `original` the
  grayscale picture it was made from, where they could be made.
  `class_names` are the dataset's (the digits for MNIST).

  >>> p = Prediction('seven.png', np.eye(10, dtype=np.float32)[7])
  >>> p.digit, p.label, p.probability
  (7, '7', 1.0)
  """

  file: str
  probabilities: np.ndarray | None = None
  image: np.ndarray | None = None
  original: np.ndarray | None = None
  error: str | None = None
  class_names: tuple[str, ...] = datasets.DATASETS['mnist'].class_names

  @property
  def digit(self) -> int:
    """The predicted class's number (a digit for MNIST)."""
    return int(np.argmax(self.probabilities))

  @property
  def label(self) -> str:
    """The predicted class's name."""
    return self.class_names[self.digit]

  @property
  def probability(self) -> float:
    return float(np.max(self.probabilities))

  @property
  def top3(self) -> list[tuple[int, float]]:
    order = np.argsort(-self.probabilities, kind='stable')[:3]
    return [(int(d), float(self.probabilities[d])) for d in order]

  def to_json(self) -> dict[str, Any]:
    if self.error is not None:
      return {'file': self.file, 'error': self.error}
    return {'file': self.file, 'digit': self.digit, 'label': self.label,
            'probability': self.probability,
            'top3': [{'digit': d, 'label': self.class_names[d], 'probability': p}
                     for d, p in self.top3]}


def _probabilities(apply_fn, params, images_BHWC: jax.Array) -> jax.Array:
  return jax.nn.softmax(evaluation.forward(apply_fn, params, images_BHWC))


class Predictor:
  """A trained model, ready to classify: `Predictor(workdir)` restores the
  workdir's latest checkpoint, `Predictor.from_state` takes a state in hand.

  `model` and `step` name what it holds. Each forward pass is padded to the
  smallest of `batch_sizes` that holds it (a server gives several, so a
  single picture does not pay for 64).

  >>> import dataclasses, numpy as np
  >>> from flax_mnist import configs, core
  >>> state = core.create_train_state(configs.get_preset('beginners'))
  >>> predictor = Predictor.from_state(state)
  >>> predictor.model, predictor.probabilities_of_inputs(np.zeros((2, 784), np.float32)).shape
  ('softmax_regression', (2, 10))
  """

  def __init__(self, workdir: str, batch_sizes: Sequence[int] = (BATCH_SIZE,)):
    config, state = resume.restore_workdir(workdir)
    self._use(state, config.dataset, batch_sizes)

  @classmethod
  def from_state(cls, state, dataset: str = 'mnist',
                 batch_sizes: Sequence[int] = (BATCH_SIZE,)) -> 'Predictor':
    """A predictor of `state`'s model, e.g. `train_and_evaluate`'s result,
    trained on `dataset` (datasets.py)."""
    predictor = cls.__new__(cls)
    predictor._use(state, dataset, batch_sizes)
    return predictor

  def _use(self, state, dataset: str, batch_sizes: Sequence[int]) -> None:
    # apply_fn is the Linen module's bound apply: its class names the model.
    module = type(state.apply_fn.__self__)
    self.model = next(name for name, cls in models.MODELS.items() if cls is module)
    self.step = int(state.step)
    self.dataset = dataset
    self.class_names = datasets.get(dataset).class_names
    self._params = state.params
    self._forward = jax.jit(functools.partial(_probabilities, state.apply_fn))
    self._batch_sizes = sorted(batch_sizes)

  def compile(self) -> None:
    """Compiles the forward pass for every batch size now, not at first use."""
    for size in self._batch_sizes:
      self._forward(self._params, np.zeros((size, 28, 28, 1), np.float32)
                    ).block_until_ready()

  def probabilities_of_inputs(self, images) -> np.ndarray:
    """(N, 10) float32 probabilities of MNIST-style inputs: white on black,
    centred, any of `inputs`' kinds (uint8 or floats in [0, 1], (N, 784),
    (N, 28, 28) or (N, 28, 28, 1))."""
    images = inputs.model_input(np.asarray(images))
    results = []
    largest = self._batch_sizes[-1]
    for start in range(0, len(images), largest):
      batch = images[start:start + largest]
      size = next(s for s in self._batch_sizes if s >= len(batch))
      padded = np.zeros((size, 28, 28, 1), np.float32)
      padded[:len(batch)] = batch
      results.append(np.asarray(self._forward(self._params, padded))[:len(batch)])
    return (np.concatenate(results) if results
            else np.zeros((0, 10), np.float32))

  def predict_probabilities(self, images: pictures.ImageSource
                            | Iterable[pictures.ImageSource]) -> np.ndarray:
    """(N, 10) probabilities of pictures given as paths, PIL images or arrays
    (one, or a list: `pictures.as_list`).

    Raises `DataError` naming the first picture that cannot be used
    (`predict_files` gives a result for each instead).
    """
    made = []
    for i, image in enumerate(pictures.as_list(images)):
      try:
        made.append(preprocess.prepare(image, self.dataset).image)
      except DataError as e:
        name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f'image {i}'
        raise DataError(f'{name}: {e}') from None
    return self.probabilities_of_inputs(_stack(made))

  def predict_files(self, paths: pictures.ImageSource
                    | Iterable[pictures.ImageSource]) -> list[Prediction]:
    """A `Prediction` per picture, folders expanded to the pictures in them.

    Pictures may be paths, PIL images or arrays, one or a list; those that
    are not paths are named 'image I' by their place in the list.
    """
    files = []  # (name, error or None, source)
    for i, source in enumerate(pictures.as_list(paths)):
      if isinstance(source, (str, os.PathLike)):
        files.extend((file, error, file) for file, error in expand_paths([source]))
      else:
        files.append((f'image {i}', None, source))
    rows = []  # (file, input or None, original or None, error or None)
    # numpy and PIL release the GIL, so pictures are prepared on every core;
    # decoding stays on this thread, as PIL's bomb warning is caught through
    # the process-wide warning filters. Chunks bound the pictures held at once.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
      for start in range(0, len(files), BATCH_SIZE):
        loaded = [(file, *_load(source, error))
                  for file, error, source in files[start:start + BATCH_SIZE]]
        made = pool.map(functools.partial(_make_input, self.dataset),
                        [gray for _, gray, _ in loaded])
        for (file, gray, error), (image, problem) in zip(loaded, made):
          # The original is kept for errors too: it shows why there was no digit.
          original = None if gray is None else _thumbnail(gray)
          rows.append((file, image, original, error or problem))
    probabilities = iter(self.probabilities_of_inputs(
        _stack([image for _, image, _, _ in rows if image is not None])))
    return [Prediction(file, None if image is None else next(probabilities),
                       image, original, error, self.class_names)
            for file, image, original, error in rows]


def _stack(images: list[np.ndarray]) -> np.ndarray:
  """The prepared (28, 28) uint8 inputs as one (N, 28, 28) array, N >= 0."""
  return np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)


def _load(source: pictures.ImageSource, error: str | None
          ) -> tuple[np.ndarray | None, str | None]:
  """(the picture in gray, None) or (None, what is wrong with it)."""
  if error is not None:
    return None, error
  try:
    return pictures.load_gray(source), None
  except DataError as e:
    return None, str(e)


def _make_input(dataset: str, gray: np.ndarray | None
                ) -> tuple[np.ndarray | None, str | None]:
  """(the `dataset` input, None), (None, why there is none) or, with no
  picture, (None, None)."""
  if gray is None:
    return None, None
  try:
    return preprocess.MAKERS[dataset](gray), None
  except DataError as e:
    return None, str(e)


def expand_paths(paths: Sequence[str]) -> list[tuple[str, str | None]]:
  """(file, error or None) for each path; a folder gives its pictures, sorted.

  A folder's pictures are its files with an image extension
  (`pictures.IMAGE_EXTENSIONS`, any case) but hidden ones (macOS leaves
  `._name.jpg` files that are not pictures); a file named directly is read
  whatever its name.
  """
  files = []
  for path in paths:
    if not os.path.isdir(path):
      files.append((path, None))
      continue
    try:
      names = sorted(os.listdir(path))
    except OSError as e:
      files.append((path, f'cannot list this folder ({e.strerror})'))
      continue
    images = [os.path.join(path, name) for name in names
              if name.lower().endswith(pictures.IMAGE_EXTENSIONS)
              and not name.startswith('.')
              and os.path.isfile(os.path.join(path, name))]
    files.extend((image, None) for image in images)
    skipped = pictures.not_files(path, [
        name for name in names if name.lower().endswith(pictures.IMAGE_EXTENSIONS)])
    if skipped:
      logger.warning('%s: skipped %s (not files)', path, skipped)
    if not images:
      files.append((path, 'no images in this folder (looked for '
                          f'{", ".join(pictures.IMAGE_EXTENSIONS)})'))
  return files


def _thumbnail(gray: np.ndarray) -> np.ndarray:
  image = Image.fromarray(np.rint(gray * 255).astype(np.uint8))
  image.thumbnail((_TILE, _TILE), Image.Resampling.BOX)
  return np.asarray(image)


def save_inputs(predictions: Sequence[Prediction], path: str) -> None:
  """A sheet with a row per picture: the original, the 28x28 input the model
  saw (enlarged 4x, pixels kept sharp), and the prediction or error."""
  font = ImageFont.load_default(size=13)
  text_width = 360
  sheet = Image.new('L', (2 * _TILE + 24 + text_width,
                          max(1, len(predictions)) * (_TILE + 8)), 255)
  draw = ImageDraw.Draw(sheet)
  for row, prediction in enumerate(predictions):
    top = row * (_TILE + 8) + 4
    if prediction.original is not None:
      original = Image.fromarray(prediction.original)
      left = 4 + (_TILE - original.width) // 2
      upper = top + (_TILE - original.height) // 2
      sheet.paste(original, (left, upper))
      # Outlined, so white paper stands out from the sheet.
      draw.rectangle((left - 1, upper - 1, left + original.width,
                      upper + original.height), outline=160)
    if prediction.image is not None:
      sheet.paste(Image.fromarray(prediction.image).resize(
          (_TILE, _TILE), Image.Resampling.NEAREST), (_TILE + 12, top))
    if prediction.error is None:
      lines = [f'{prediction.class_names[d]}: {p:.3f}' for d, p in prediction.top3]
      lines[0] = f'predicted {lines[0]}'
    else:
      lines = ['error:', *textwrap.wrap(prediction.error, 48)]
    name = os.path.basename(prediction.file)
    draw.multiline_text((2 * _TILE + 20, top), '\n'.join([name, *lines]),
                        fill=0, font=font, spacing=3)
  try:
    sheet.save(path)
  except (OSError, ValueError) as e:
    raise FlaxMnistError(f'{path}: cannot write the input sheet ({e})') from None

