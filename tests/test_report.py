import dataclasses
import html.parser
import os
import sys
import xml.etree.ElementTree as ElementTree

import pytest
from PIL import Image

from conftest import synthetic_split, write_idx
from flax_mnist import cli, configs, evaluation, report, train
from flax_mnist.errors import FlaxMnistError

pytest.importorskip('matplotlib')


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> str:
  """A short keras run on small IDX data, with evaluations along the way."""
  data_dir = tmp_path_factory.mktemp('idx')
  for split, num, seed in (('train', 600, 0), ('t10k', 130, 1)):
    images, labels = synthetic_split(num, seed)
    write_idx(str(data_dir / f'{split}-images-idx3-ubyte.gz'), images)
    write_idx(str(data_dir / f'{split}-labels-idx1-ubyte.gz'), labels)
  config = dataclasses.replace(
      configs.get_preset('keras'), epochs=None, steps=20, batch_size=20,
      log_every=5, eval_every=10, checkpoint_every=10, eval_batch_size=50,
      data_dir=str(data_dir), verify_data=False)
  path = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(config, path)
  return path


class _Images(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.sources = []

  def handle_starttag(self, tag, attrs):
    if tag == 'img':
      self.sources.append(dict(attrs)['src'])


def test_report_writes_every_picture_and_a_page_of_them(workdir, tmp_path):
  out = str(tmp_path / 'report')
  path = report.write_report(workdir, out)
  assert path == os.path.join(out, 'report.html')
  sizes = {'learning_curves.png': report.CURVES_SIZE,
           'confusion_matrix.png': report.CONFUSION_SIZE,
           'per_class_accuracy.png': report.PER_CLASS_SIZE,
           'mistakes.png': (report.MISTAKE_COLUMNS * (28 * report.MISTAKE_SCALE + 10),
                            report.MISTAKE_ROWS * (28 * report.MISTAKE_SCALE + 26))}
  for name, size in sizes.items():
    with Image.open(os.path.join(out, name)) as image:
      assert (image.format, image.size) == ('PNG', size), name
  assert ElementTree.parse(os.path.join(out, 'network.svg')).getroot().tag.endswith('svg')
  page = open(path).read()
  parser = _Images()
  parser.feed(page)
  assert parser.sources == list(report.PICTURES)
  assert sorted(os.listdir(out)) == sorted([*report.PICTURES, 'report.html'])
  accuracy = evaluation.evaluate_workdir(workdir)['test_accuracy']
  assert f'<th>test accuracy</th><td>{accuracy:.4f}</td>' in page
  assert '<th>model</th><td>keras_cnn</td>' in page
  assert '<th>step</th><td>20</td>' in page


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
  confusion = report.confusion_matrix([1, 1, 2, 9], [1, 7, 2, 9])
  assert confusion.sum() == 4 and confusion[1, 7] == 1 and confusion[1, 1] == 1
  assert confusion.trace() == 3


def test_report_on_the_command_line_goes_into_the_workdir(workdir, capsys):
  assert cli.main(['report', '--workdir', workdir, '--quiet']) == 0
  path = os.path.join(workdir, report.REPORT_DIR, 'report.html')
  assert capsys.readouterr().out == f'wrote {path}\n'
  assert os.path.exists(path)


def test_without_matplotlib_the_report_says_what_to_install(workdir, monkeypatch):
  monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)
  with pytest.raises(FlaxMnistError, match='pip install matplotlib'):
    report.write_report(workdir)


def test_a_workdir_with_no_run(tmp_path, capsys):
  assert cli.main(['report', '--workdir', str(tmp_path)]) == 2
  assert 'no checkpoints here' in capsys.readouterr().err
