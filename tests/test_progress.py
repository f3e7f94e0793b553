import io
import sys

from flax_mnist import cli, progress

TRAIN = ['train', '--preset', 'keras', '--no-verify', '--set', 'steps=20',
         '--set', 'batch_size=16', '--set', 'log_every=10']


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_a_disabled_bar_draws_nothing(capsys):
  with progress.bar(False, 10, 'working', 'steps') as bar:
    bar.update(3)
    bar.set_postfix_str('loss 1')
  assert capsys.readouterr().out == ''


def test_plain_log_lines_when_not_a_terminal(tiny_idx_dir, tmp_path, capsys):
  assert cli.main([*TRAIN, '--workdir', str(tmp_path), '--data-dir', tiny_idx_dir]) == 0
  out = capsys.readouterr().out
  assert 'step 0, training accuracy' in out and 'step 10, training accuracy' in out
  assert 'step 20, test accuracy' in out
  assert '\r' not in out and '%|' not in out


def test_a_bar_on_a_terminal_with_the_log_lines_above_it(tiny_idx_dir, tmp_path,
                                                          monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stdout', terminal)
  assert cli.main([*TRAIN, '--workdir', str(tmp_path), '--data-dir', tiny_idx_dir]) == 0
  out = terminal.getvalue()
  assert 'train: 100%|' in out and '20/20' in out
  assert 'steps/s' in out and 'images/s' in out and 'loss' in out
  assert 'evaluating' in out
  assert 'step 10, training accuracy' in out and 'step 20, test accuracy' in out


def test_quiet_prints_only_the_result(tiny_idx_dir, tmp_path, monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stdout', terminal)
  assert cli.main([*TRAIN, '--quiet', '--workdir', str(tmp_path),
                   '--data-dir', tiny_idx_dir]) == 0
  lines = terminal.getvalue().splitlines()
  assert len(lines) == 1 and lines[0].startswith('step 20: test accuracy'), lines
