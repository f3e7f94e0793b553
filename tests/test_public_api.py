"""The public surface: every name in `flax_mnist.__all__` shows a runnable
example, and every docstring example of the package runs (optax-style)."""

import doctest
import importlib
import inspect
import pkgutil
import re

import pytest

import flax_mnist
from conftest import REPO, make_idx_dir
from snippets import blocks

MODULES = sorted(m.name for m in pkgutil.iter_modules(flax_mnist.__path__)
                 if m.name != '__main__')
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PAGES = ('README.md', 'docs/from-tensorflow.md')


@pytest.fixture(scope='module')
def doctest_dir(tmp_path_factory):
  """A folder with `mnist/` (tiny IDX files) and `runs/beginners`, trained
  on them: what the examples name."""
  work = tmp_path_factory.mktemp('doctests')
  make_idx_dir(work / 'mnist')
  config = flax_mnist.Config(steps=4, data_dir=str(work / 'mnist'),
                             verify_data=False)
  flax_mnist.train_and_evaluate(config, str(work / 'runs' / 'beginners'))
  return work


def test_every_public_name_has_an_example():
  for name in flax_mnist.__all__:
    value = getattr(flax_mnist, name)
    if isinstance(value, (dict, str)) or (inspect.isclass(value) and
                                   issubclass(value, Exception)):
      continue
    assert '>>>' in (inspect.getdoc(value) or ''), name


@pytest.mark.parametrize('name', ['__init__'] + MODULES)
def test_examples_run(name, doctest_dir, monkeypatch):
  monkeypatch.chdir(doctest_dir)
  module = flax_mnist if name == '__init__' else importlib.import_module(
      f'flax_mnist.{name}')
  runner = doctest.DocTestRunner(optionflags=_FLAGS)
  for test in doctest.DocTestFinder().find(module):
    runner.run(test)
  results = runner.summarize(verbose=False)
  assert results.failed == 0, f'{results.failed} of {name}\'s examples failed'


@pytest.mark.parametrize('page', PAGES)
def test_the_pages_use_only_the_public_surface(page):
  code = '\n'.join(blocks((REPO / page).read_text()))
  assert 'import flax_mnist' in code
  assert not re.findall(r'(?:from|import) flax_mnist\.\w+|from flax_mnist import', code)
  used = set(re.findall(r'\bflax_mnist\.(\w+)', code))
  assert used and used <= set(flax_mnist.__all__), used - set(flax_mnist.__all__)
