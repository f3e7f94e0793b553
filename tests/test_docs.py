"""Runs every ```python block of docs/from-tensorflow.md, on tiny data.

The guide's setup block runs first; each tutorial section then runs in its
own copy of the setup's namespace, from a temporary folder that holds
`my_digit.png`, with the data, checksum check and step count that the setup
reads from the environment set to a tiny stand-in.
"""

import logging
import re

import pytest

from conftest import REPO
from snippets import blocks, draw_digit, run

GUIDE = REPO / 'docs' / 'from-tensorflow.md'
SETUP = 'Running the snippets'
TUTORIALS = ('1. MNIST for ML beginners', '2. Deep MNIST for experts',
             '3. The TF2 Keras CNN')
# The steps of every tutorial section, in order.
STEPS = ('Load the data', 'Define the model', 'The loss', 'The optimizer',
         'The training loop', 'Evaluation', 'Saving and restoring',
         'Classifying your own photo', 'Looking at the graph')
# Training steps per model: the first log line is at step 0.
TEST_STEPS = 20


def sections() -> dict[str, str]:
  """Each level-2 heading of the guide and the text under it."""
  parts = re.split(r'^## ', GUIDE.read_text(), flags=re.M)[1:]
  return dict(part.split('\n', 1) for part in parts)


def tutorial(title: str) -> tuple[str, str]:
  matches = [(heading, text) for heading, text in sections().items()
             if heading.startswith(title)]
  assert len(matches) == 1, f'no single section starting {title!r}'
  return matches[0]


@pytest.fixture
def guide_dir(tmp_path, tiny_idx_dir, monkeypatch):
  """A working folder with my_digit.png; the setup block's inputs are tiny."""
  work = tmp_path / 'guide'
  work.mkdir()
  draw_digit(work / 'my_digit.png')
  monkeypatch.chdir(work)
  monkeypatch.setenv('GUIDE_DATA_DIR', tiny_idx_dir)
  monkeypatch.setenv('GUIDE_VERIFY', '0')
  monkeypatch.setenv('GUIDE_STEPS', str(TEST_STEPS))
  return work


def test_every_tutorial_has_its_steps_in_order():
  for title in TUTORIALS:
    heading, text = tutorial(title)
    steps = re.findall(r'^### (.*)$', text, re.M)
    assert [s for s in steps if s.startswith(STEPS)] == steps, heading
    assert [next(p for p in STEPS if s.startswith(p)) for s in steps] == list(STEPS)
    for step_text in re.split(r'^### ', text, flags=re.M)[1:]:
      assert blocks(step_text, 'python'), step_text.splitlines()[0]
      assert blocks(step_text, 'python-tf'), step_text.splitlines()[0]


@pytest.mark.parametrize('title', TUTORIALS)
def test_section_runs(title, guide_dir, capsys, caplog):
  caplog.set_level(logging.INFO)
  namespace = {'__name__': 'guide'}
  for i, code in enumerate(blocks(sections()[SETUP], 'python')):
    run(code, namespace, f'{GUIDE.name}: setup block {i + 1}')
  assert namespace['STEPS'] == TEST_STEPS and namespace['VERIFY'] is False
  heading, text = tutorial(title)
  for i, code in enumerate(blocks(text, 'python')):
    run(code, namespace, f'{GUIDE.name}: {heading}, block {i + 1}')
  output = capsys.readouterr().out
  logged = [r.getMessage() for r in caplog.records if r.name == 'flax_mnist.train']
  if 'train_and_evaluate(' in text:
    output += '\n'.join(logged)
    assert any(m.startswith('step 0, training accuracy') for m in logged)
  assert 'step 0, training accuracy' in output
  assert (guide_dir / 'runs').is_dir()
