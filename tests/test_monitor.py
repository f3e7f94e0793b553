import dataclasses
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from flax_mnist import configs, monitor, train
from flax_mnist.errors import FlaxMnistError

event_files = pytest.importorskip('event_files')  # needs tensorboardX


def _config(**changes) -> configs.Config:
  base = dataclasses.replace(configs.get_preset('keras'), epochs=None, steps=30,
                             batch_size=20, log_every=10, checkpoint_every=10,
                             eval_batch_size=50, eval_every=20)
  return dataclasses.replace(base, **changes)


def _metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


@pytest.fixture(scope='module')
def run(tiny_mnist, tmp_path_factory) -> tuple[str, dict]:
  """(workdir, final results) of a run evaluated at steps 20 and 30."""
  workdir = str(tmp_path_factory.mktemp('run'))
  _, results = train.train_and_evaluate(_config(), workdir, tiny_mnist)
  return workdir, results


def test_event_files_hold_the_runs_figures(run):
  workdir, results = run
  logdir = os.path.join(workdir, monitor.TENSORBOARD_DIR)
  scalars = event_files.scalars(logdir)
  logged = _metrics(workdir)
  trained = [m for m in logged if 'train_loss' in m]
  for tag, key in (('train/loss', 'train_loss'), ('train/accuracy', 'train_accuracy'),
                   ('learning_rate', 'learning_rate')):
    assert scalars[tag] == [(m['step'], pytest.approx(m[key])) for m in trained]
  assert [s for s, _ in scalars['images_per_second']] == [10, 20]
  tested = [m for m in logged if 'test_accuracy' in m]
  assert tested[-1]['test_accuracy'] == results['test_accuracy']
  for tag, key in (('test/accuracy', 'test_accuracy'), ('test/loss', 'test_loss')):
    assert scalars[tag] == [(m['step'], pytest.approx(m[key])) for m in tested]
  assert [s for s, _ in scalars['test/accuracy']] == [20, 30]
  pictures = event_files.values(logdir, 'test/mistakes')
  assert [step for step, _ in pictures] == [20, 30]
  with Image.open(io.BytesIO(pictures[-1][1].image.encoded_image_string)) as image:
    columns, rows, scale = (monitor.MISTAKE_COLUMNS, monitor.MISTAKE_ROWS,
                            monitor.MISTAKE_SCALE)
    assert image.size == (columns * (28 * scale + 10), rows * (28 * scale + 26))


def test_the_config_is_shown_as_hparams(run):
  from tensorboardX.proto import api_pb2, plugin_hparams_pb2
  logdir = os.path.join(run[0], monitor.TENSORBOARD_DIR)

  def plugin_data(tag):
    [(_, value)] = event_files.values(logdir, tag)
    return plugin_hparams_pb2.HParamsPluginData.FromString(
        value.metadata.plugin_data.content)

  experiment = plugin_data('_hparams_/experiment').experiment
  assert [m.name.tag for m in experiment.metric_infos] == ['test/accuracy', 'test/loss']
  hparams = plugin_data('_hparams_/session_start_info').session_start_info.hparams
  assert hparams['model'].string_value == 'keras_cnn'
  assert hparams['batch_size'].number_value == 20
  assert 'data_dir' not in hparams  # None is left out
  end = plugin_data('_hparams_/session_end_info').session_end_info
  assert end.status == api_pb2.Status.Value('STATUS_SUCCESS')


def test_a_resumed_run_shows_each_step_once(tiny_mnist, tmp_path):
  train.train_and_evaluate(_config(steps=20, eval_every=0), str(tmp_path), tiny_mnist)
  train.train_and_evaluate(_config(steps=40, eval_every=0), str(tmp_path), tiny_mnist)
  logdir = str(tmp_path / monitor.TENSORBOARD_DIR)
  assert len(os.listdir(logdir)) == 2
  scalars = event_files.scalars(logdir)
  assert [s for s, _ in scalars['train/loss']] == [0, 10, 20, 30]
  # The first run's final evaluation at step 20 is replaced, as in metrics.jsonl.
  assert [s for s, _ in scalars['test/accuracy']] == [40]


def test_training_without_tensorboardx_warns_once(tiny_mnist, tmp_path, monkeypatch,
                                                  caplog):
  monkeypatch.setitem(sys.modules, 'tensorboardX', None)
  caplog.set_level('INFO', logger='flax_mnist')
  _, results = train.train_and_evaluate(_config(), str(tmp_path), tiny_mnist)
  warnings = [r for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1 and 'pip install tensorboardX' in warnings[0].message
  assert not os.path.exists(tmp_path / monitor.TENSORBOARD_DIR)
  assert _metrics(tmp_path)[-1]['test_accuracy'] == results['test_accuracy']


def test_the_event_files_do_not_import_pytorch(tmp_path):
  # tensorboardX's writer imports torch where it can (for type hints only),
  # a second of every command's start; a stand-in torch says if it is.
  (tmp_path / 'torch.py').write_text('import sys\nsys.stderr.write("torch imported")\n')
  code = ('import sys; from flax_mnist import monitor; '
          f'monitor.TrainMonitor({str(tmp_path / "run")!r}).start('
          'monitor.configs.get_preset("beginners"), 0, 10); '
          'import torch')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=120)
  assert result.returncode == 0, result.stderr
  assert os.listdir(tmp_path / 'run' / monitor.TENSORBOARD_DIR)
  # Imported once, by the last statement: later imports of torch still work.
  assert result.stderr.count('torch imported') == 1, result.stderr


def test_metrics_log_skips_a_line_cut_short_and_drops_from_a_step(tmp_path):
  log = monitor.MetricsLog(str(tmp_path / monitor.METRICS_FILE))
  for step in (0, 10, 20):
    log.write(step=step, train_loss=1.0 / (step + 1))
  with open(log.path, 'a') as f:
    f.write('{"step": 30, "train_lo')  # A process killed mid-write.
  assert [e['step'] for e in log.entries()] == [0, 10, 20]
  log.drop_from(10)
  assert [e['step'] for e in log.entries()] == [0]
  assert open(log.path).read().count('\n') == 1


def test_bad_metrics_lines_are_skipped_with_one_warning(tmp_path, caplog):
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(b'{"step": 0, "train_loss": 2.3}\n\xff\xfe not utf-8\n'
                   b'{"step": "300"}\n[1, 2]\n{"step": 10, "train_loss": 1.0}\n'
                   b'{"step": 20, "train_lo')
  with caplog.at_level('WARNING', 'flax_mnist'):
    entries = monitor.MetricsLog(str(path)).entries()
  assert [e['step'] for e in entries] == [0, 10]
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and 'skipped 3 damaged line(s) (line 2, 3, 4)' in warnings[0]


def test_a_run_with_bad_metrics_lines_resumes_and_reports(tiny_mnist, tmp_path):
  from flax_mnist import report
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(steps=20, eval_every=0), workdir, tiny_mnist)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'ab') as f:
    f.write(b'\xff\xfe\n{"step": "300"}\n')
  train.train_and_evaluate(_config(eval_every=0), workdir, tiny_mnist)
  assert [m['step'] for m in report.read_metrics(workdir)] == [0, 10, 20, 30]


def test_tensorboard_as_a_file_is_refused_before_training(tiny_mnist, tmp_path, caplog):
  (tmp_path / monitor.TENSORBOARD_DIR).write_text('not a folder')
  with caplog.at_level('INFO', 'flax_mnist'):
    with pytest.raises(FlaxMnistError, match=r'tensorboard: not a folder'):
      train.train_and_evaluate(_config(), str(tmp_path), tiny_mnist)
  assert not any('training' in r.getMessage() for r in caplog.records)
  assert not (tmp_path / 'config.json').exists()


def test_the_runs_files_respect_the_umask(tiny_mnist, tmp_path):
  previous = os.umask(0o027)
  try:
    train.train_and_evaluate(_config(steps=20, eval_every=0), str(tmp_path), tiny_mnist)
    train.train_and_evaluate(_config(eval_every=0), str(tmp_path), tiny_mnist)
  finally:
    os.umask(previous)
  for name in ('config.json', 'metrics.jsonl'):
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
