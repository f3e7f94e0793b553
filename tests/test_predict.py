import dataclasses
import io
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import digits
from conftest import REPO, TRAIN_STEPS
from flax_mnist import cli, configs, idx, predict, resume, train
from flax_mnist.errors import DataError

pytestmark = pytest.mark.slow

# The bar is lower than the 95% a fully trained model must reach
# (benchmarks/predict_accuracy.py): the suite's model trains TRAIN_STEPS.
REALISTIC_SET = 100
MIN_ACCURACY = 0.9


@pytest.fixture(scope='session')
def workdir(keras_workdir) -> str:
  return keras_workdir


@pytest.fixture(scope='session')
def predictor(workdir) -> predict.Predictor:
  return predict.Predictor(workdir)


@pytest.fixture
def digit_png(tmp_path) -> str:
  path = str(tmp_path / 'seven.png')
  rng = np.random.default_rng(0)
  coverage = digits.hand_coverage(rng, 7, 150, 12, (200, 220))
  Image.fromarray(np.rint(255 * (0.9 - 0.8 * coverage)).astype(np.uint8)).save(path)
  return path


def test_realistic_set(predictor, tmp_path):
  samples = digits.make_set(REALISTIC_SET, seed=1234)
  digits.save_set(samples, tmp_path)
  predictions = predictor.predict_files([str(tmp_path)])
  assert [p.error for p in predictions] == [None] * REALISTIC_SET
  correct = sum(p.digit == s.label for p, s in zip(predictions, samples))
  print(f'realistic set: {correct}/{REALISTIC_SET} after {TRAIN_STEPS} steps')
  assert correct / REALISTIC_SET >= MIN_ACCURACY


def test_mnist_png_round_trip_matches_the_arrays(workdir, predictor, mnist_dir,
                                                 tmp_path):
  images, labels = idx.load_split(mnist_dir, 'test')
  images = np.asarray(images).reshape(-1, 28, 28)[:1000]
  paths = [str(tmp_path / f'{i:04d}.png') for i in range(len(images))]
  for image, path in zip(images, paths):
    Image.fromarray(image).save(path)
  from_files = predictor.predict_files(paths)
  # The array path: the model on the arrays, as evaluation feeds them.
  _, state = resume.restore_workdir(workdir)
  logits = state.apply_fn({'params': state.params},
                          images, train=False)
  direct = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_array_equal(np.stack([p.image for p in from_files]), images)
  assert [p.digit for p in from_files] == list(direct.argmax(1))
  np.testing.assert_allclose(np.stack([p.probabilities for p in from_files]),
                             direct, atol=1e-6)
  assert np.mean(direct.argmax(1) == np.asarray(labels)[:1000]) > 0.9


def test_mnist_drawn_dark_on_light_and_enlarged(predictor, mnist_dir):
  # Not passed through: the whole pipeline, on real handwriting.
  images, labels = idx.load_split(mnist_dir, 'test')
  images = 255 - np.asarray(images).reshape(-1, 28, 28)[:100]
  pictures = [np.asarray(Image.fromarray(image).resize((112, 112), Image.Resampling.BICUBIC))
              for image in images]
  probabilities = predictor.predict_probabilities(pictures)
  assert np.mean(probabilities.argmax(1) == np.asarray(labels)[:100]) >= 0.9


def test_compiles_once_for_any_number(predictor, digit_png):
  predictor.predict_files([digit_png])
  predictor.predict_files([digit_png] * 100)
  predictor.probabilities_of_inputs(np.zeros((3, 28, 28), np.uint8))
  assert predictor._forward._cache_size() == 1


def test_library_takes_paths_pil_images_and_arrays(workdir, digit_png):
  pil = Image.open(digit_png)
  predictor = predict.Predictor(workdir)
  probabilities = predictor.predict_probabilities(
      [digit_png, pil, np.asarray(pil), np.asarray(pil.convert('RGB'))])
  assert probabilities.shape == (4, 10) and probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
  np.testing.assert_allclose(probabilities, probabilities[:1].repeat(4, 0), atol=1e-6)
  assert predictor.predict_probabilities([]).shape == (0, 10)


def test_library_names_the_bad_image(predictor, digit_png, tmp_path):
  with pytest.raises(DataError, match=r'^image 1: no digit found'):
    predictor.predict_probabilities([digit_png, np.full((50, 50), 255, np.uint8)])
  missing = str(tmp_path / 'gone.png')
  with pytest.raises(DataError, match=f'^{missing}: no such file'):
    predictor.predict_probabilities([missing])


def test_expand_paths(tmp_path, digit_png):
  folder = tmp_path / 'photos'
  folder.mkdir()
  for name in ('b.JPG', 'a.png', 'c.webp', 'notes.txt', '._a.png'):
    (folder / name).write_bytes(b'x')
  (folder / 'sub.png').mkdir()
  (tmp_path / 'empty').mkdir()
  assert predict.expand_paths([str(folder), digit_png, str(tmp_path / 'empty')]) == [
      (str(folder / 'a.png'), None), (str(folder / 'b.JPG'), None),
      (str(folder / 'c.webp'), None), (digit_png, None),
      (str(tmp_path / 'empty'),
       'no images in this folder (looked for .png, .jpg, .jpeg, .bmp, .gif, '
       '.tif, .tiff, .webp)')]


@pytest.fixture
def bad_inputs(tmp_path, monkeypatch) -> dict[str, str]:
  """Each kind of bad input, by the words its error must contain."""
  folder = tmp_path / 'bad'
  folder.mkdir()
  (folder / 'empty.png').write_bytes(b'')
  buffer = io.BytesIO()
  Image.effect_noise((200, 200), 40).save(buffer, 'JPEG')
  (folder / 'cut.jpg').write_bytes(buffer.getvalue()[:2000])
  (folder / 'letter.jpg').write_text('Dear Sir, ...')
  Image.new('L', (200, 150), 250).save(folder / 'blank.png')
  Image.new('L', (400, 300), 250).save(folder / 'huge.png')
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 50_000)  # Over digit_png's.
  (tmp_path / 'no_images').mkdir()
  return {str(tmp_path / 'missing.png'): 'no such file',
          str(tmp_path / 'no_images'): 'no images in this folder',
          str(folder / 'empty.png'): 'empty file (0 bytes)',
          str(folder / 'cut.jpg'): 'truncated or damaged',
          str(folder / 'letter.jpg'): 'not a PNG, JPEG, BMP, GIF, TIFF or WebP image',
          str(folder / 'blank.png'): 'no digit found',
          str(folder / 'huge.png'): 'decompression bomb'}


def test_cli_reports_each_bad_file_and_predicts_the_rest(
    workdir, digit_png, bad_inputs, capsys):
  args = ['predict', '--workdir', workdir, digit_png, *bad_inputs]
  assert cli.main(args) == 1
  out, err = capsys.readouterr()
  assert len(out.splitlines()) == 1
  assert out.startswith(f'{digit_png}: 7 (probability ')
  assert 'top 3: 7 ' in out
  lines = err.splitlines()
  assert len(lines) == len(bad_inputs) and 'Traceback' not in err
  for line, (path, words) in zip(lines, bad_inputs.items()):
    assert line.startswith(f'flax-mnist: error: {path}: ') and words in line


def test_cli_json(workdir, digit_png, bad_inputs, capsys):
  assert cli.main(['predict', '--workdir', workdir, '--json', digit_png,
                   *bad_inputs]) == 1
  out, err = capsys.readouterr()
  objects = [json.loads(line) for line in out.splitlines()]
  assert err == '' and len(objects) == 1 + len(bad_inputs)
  good = objects[0]
  assert good['file'] == digit_png and good['digit'] == 7
  assert [t['digit'] for t in good['top3']][0] == 7
  assert good['probability'] == good['top3'][0]['probability']
  assert all(set(o) == {'file', 'error'} for o in objects[1:])
  assert cli.main(['predict', '--workdir', workdir, '--json', digit_png]) == 0


def test_show_input(workdir, digit_png, bad_inputs, tmp_path, capsys,
                    monkeypatch):
  sheet = str(tmp_path / 'inputs.png')
  cli.main(['predict', '--workdir', workdir, '--show-input', sheet, digit_png,
            *bad_inputs])
  capsys.readouterr()
  monkeypatch.undo()  # The sheet is over bad_inputs' lowered pixel limit.
  with Image.open(sheet) as image:
    assert image.height == (1 + len(bad_inputs)) * 120
    # The 28x28 input, enlarged 4x beside the original.
    row = np.asarray(image)[4:116, 124:236]
    expected = predict.Predictor(workdir).predict_files([digit_png])[0].image
    np.testing.assert_array_equal(row[::4, ::4], expected)
  assert cli.main(['predict', '--workdir', workdir, '--show-input',
                   str(tmp_path / 'no' / 'such' / 'dir.png'), digit_png]) == 2


def test_help(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['predict', '--help'])
  assert exit_info.value.code == 0
  assert '--show-input FILE.png' in capsys.readouterr().out


def test_cli_without_a_run(tmp_path, digit_png, capsys):
  assert cli.main(['predict', '--workdir', str(tmp_path), digit_png]) == 2
  assert 'no checkpoints here' in capsys.readouterr().err


def test_command_line_output_is_clean(workdir, digit_png, tmp_path):
  (tmp_path / 'junk.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
  out = subprocess.run(
      [sys.executable, '-m', 'flax_mnist', 'predict', '--workdir', workdir,
       '--json', digit_png, str(tmp_path / 'junk.png')],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert out.returncode == 1 and out.stderr == ''
  first, second = map(json.loads, out.stdout.splitlines())
  assert first['digit'] == 7 and 'error' in second


@pytest.fixture(scope='module')
def small_predictor(tiny_mnist, tmp_path_factory) -> predict.Predictor:
  """A few steps of softmax regression: these tests check shapes and errors."""
  config = dataclasses.replace(configs.get_preset('beginners'), steps=10)
  path = str(tmp_path_factory.mktemp('beginners'))
  train.train_and_evaluate(config, path, tiny_mnist)
  return predict.Predictor(path)


def test_one_path_or_a_list(small_predictor, digit_png):
  one = small_predictor.predict_probabilities(digit_png)
  assert one.shape == (1, 10)
  np.testing.assert_array_equal(one, small_predictor.predict_probabilities([digit_png]))
  [prediction] = small_predictor.predict_files(digit_png)
  np.testing.assert_array_equal(prediction.probabilities, one[0])


def test_predict_files_takes_pil_images_and_arrays_with_a_result_each(
    small_predictor, digit_png):
  with Image.open(digit_png) as image:
    image.load()
  blank = np.full((40, 40), 255, np.uint8)
  predictions = small_predictor.predict_files([image, blank, digit_png])
  assert [p.file for p in predictions] == ['image 0', 'image 1', digit_png]
  assert predictions[0].error is None and predictions[2].error is None
  np.testing.assert_array_equal(predictions[0].probabilities,
                                predictions[2].probabilities)
  assert 'no digit found' in predictions[1].error


def test_the_size_message_names_the_pictures_own_size(small_predictor, tmp_path):
  path = str(tmp_path / 'thin.png')
  Image.new('L', (1, 20000), 255).save(path)
  [prediction] = small_predictor.predict_files([path])
  assert prediction.error.startswith('1x20000 pixels (width x height) is too small')


def test_links_and_fifos_in_a_folder_are_counted(small_predictor, digit_png, tmp_path,
                                                 caplog):
  import os
  folder = tmp_path / 'pictures'
  folder.mkdir()
  os.symlink(digit_png, folder / 'good.png')
  os.symlink(folder / 'loop.png', folder / 'loop.png')
  os.symlink(tmp_path / 'gone.png', folder / 'dangling.png')
  os.mkfifo(folder / 'pipe.png')
  with caplog.at_level('WARNING', 'flax_mnist'):
    predictions = small_predictor.predict_files([str(folder)])
  assert [os.path.basename(p.file) for p in predictions] == ['good.png']
  [warning] = [r.getMessage() for r in caplog.records]
  assert warning == (f'{folder}: skipped 1 dangling link, 1 symlink loop, 1 FIFO '
                     '(not files)')
