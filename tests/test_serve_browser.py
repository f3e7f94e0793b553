"""The drawing page in a real browser: Debian's headless Chromium, driven by
Playwright, against a real `flax-mnist serve`.

A missing browser fails these tests (`.ci/run` installs it): they are the
only check that the page works.
"""

import base64
import os
import re

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright

import digits
import serving
from conftest import TRAIN_STEPS

# A served model trained for hundreds of steps, a browser: not the fast tier.
pytestmark = pytest.mark.slow

CHROMIUM = '/usr/bin/chromium'
# Playwright's own browser builds cannot be downloaded here; Debian's can.
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
                 '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
# Digits whose first stroke template in tests/digits.py the suite's model
# reads right when drawn on the pad.
DRAWN = (0, 1, 3, 5, 6, 7, 8)
# A guard against hangs on a busy machine, not a measurement.
expect.set_options(timeout=60_000)


@pytest.fixture(scope='module')
def browser():
  if not os.path.exists(CHROMIUM):
    pytest.fail(f'no browser at {CHROMIUM}: apt-get install chromium (as .ci/run does)')
  with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


def _open(browser, url: str, **options):
  """A fresh page on `url`, ready, collecting the errors it logs."""
  context = browser.new_context(**{'viewport': {'width': 1000, 'height': 760},
                                   **options})
  page = context.new_page()
  page.errors = []
  page.on('pageerror', lambda error: page.errors.append(str(error)))
  page.on('console', lambda message: message.type == 'error' and
          page.errors.append(message.text))
  page.goto(url)
  expect(page.locator('body')).to_have_attribute('data-ready', 'true')
  return page


@pytest.fixture
def page(browser, keras_server):
  page = _open(browser, keras_server.url)
  yield page
  assert page.errors == []
  page.context.close()


def _stroke_points(page, label: int, reverse: bool = False):
  """The strokes of `label` in page coordinates, filling most of the pad."""
  box = page.locator('#pad').bounding_box()
  strokes = []
  for stroke in digits.HANDS[label][0]:
    points = [(box['x'] + box['width'] * (0.5 + 0.7 * (x - 0.3)),
               box['y'] + box['height'] * (0.15 + 0.7 * y)) for x, y in stroke]
    strokes.append(points[::-1] if reverse else points)
  return strokes


def _draw_with_mouse(page, label: int) -> None:
  for points in _stroke_points(page, label):
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
      page.mouse.move(*point, steps=4)
    page.mouse.up()


def _draw_with_touch(page, label: int, reverse: bool = False) -> None:
  """Real touch input (Chrome's DevTools protocol), which makes pointer events
  of type touch, as a finger does."""
  session = page.context.new_cdp_session(page)
  for points in _stroke_points(page, label, reverse):
    session.send('Input.dispatchTouchEvent', {
        'type': 'touchStart', 'touchPoints': [{'x': points[0][0], 'y': points[0][1]}]})
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
      for t in np.linspace(0, 1, 5)[1:]:
        session.send('Input.dispatchTouchEvent', {
            'type': 'touchMove',
            'touchPoints': [{'x': x0 + t * (x1 - x0), 'y': y0 + t * (y1 - y0)}]})
    session.send('Input.dispatchTouchEvent', {'type': 'touchEnd', 'touchPoints': []})


def _model(server) -> str:
  return httpx.get(f'{server.url}/api/models').json()[0]['name']


def _probabilities(page, model: str) -> dict[int, float]:
  bars = page.locator(f'[data-testid="probability"][data-model="{model}"]')
  expect(bars).to_have_count(10)
  return {int(bar.get_attribute('data-digit')): float(bar.get_attribute('data-value'))
          for bar in bars.all()}


def _digit(page, model: str):
  return page.locator(f'[data-testid="digit"][data-model="{model}"]')


def _expect_blank(page, model: str) -> None:
  expect(_digit(page, model)).to_have_text('')
  expect(page.locator(f'[data-testid="message"][data-model="{model}"]')
         ).to_have_text('draw a digit')
  assert set(_probabilities(page, model).values()) == {0.0}


def test_blank_page_asks_for_a_digit(page, keras_server):
  model = _model(keras_server)
  _expect_blank(page, model)
  expect(page.locator(f'[data-testid="step"][data-model="{model}"]')
         ).to_have_text(str(TRAIN_STEPS))
  expect(page.locator('#hint')).to_be_visible()


@pytest.mark.parametrize('label', DRAWN)
def test_drawn_digit_is_read_live(page, keras_server, label):
  model = _model(keras_server)
  _draw_with_mouse(page, label)
  expect(_digit(page, model)).to_have_text(str(label))
  probabilities = _probabilities(page, model)
  assert max(probabilities, key=probabilities.get) == label
  assert abs(sum(probabilities.values()) - 1) < 1e-4
  # The 28x28 input the model saw is shown.
  source = page.locator(f'[data-testid="input"][data-model="{model}"]').get_attribute('src')
  assert source.startswith('data:image/png;base64,')


def test_clear(page, keras_server):
  model = _model(keras_server)
  _draw_with_mouse(page, 7)
  expect(_digit(page, model)).to_have_text('7')
  page.click('#clear')
  _expect_blank(page, model)
  expect(page.locator('#hint')).to_be_visible()
  # The 7 is gone: a 1 drawn now is read as a 1.
  _draw_with_mouse(page, 1)
  expect(_digit(page, model)).to_have_text('1')


def _photo(label: int, seed: int) -> digits.Sample:
  """A realistic photo of a digit on paper (tests/digits.py)."""
  return digits.make_sample(np.random.default_rng(seed), label)


def test_uploaded_photo_goes_through_predicts_preprocessing(page, keras_server,
                                                            tmp_path):
  sample = _photo(4, seed=1)  # A PNG in a shadow.
  path = tmp_path / f'photo{sample.suffix}'
  path.write_bytes(sample.data)
  api = httpx.post(f'{keras_server.url}/api/predict', content=sample.data).json()
  assert api['digit'] == sample.label
  model = _model(keras_server)
  page.set_input_files('#upload', str(path))
  expect(_digit(page, model)).to_have_text(str(sample.label))
  source = page.locator(f'[data-testid="input"][data-model="{model}"]').get_attribute('src')
  assert source == f'data:image/png;base64,{api["input"]}'


def test_dropped_photo(page, keras_server):
  sample = _photo(2, seed=0)  # A JPEG.
  model = _model(keras_server)
  transfer = page.evaluate_handle(
      """([data, name, type]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type}));
        return transfer;
      }""", [base64.b64encode(sample.data).decode(), f'photo{sample.suffix}',
            f'image/{sample.fmt.lower()}'])
  page.dispatch_event('#pad', 'dragover', {'dataTransfer': transfer})
  page.dispatch_event('#pad', 'drop', {'dataTransfer': transfer})
  expect(_digit(page, model)).to_have_text(str(sample.label))


def test_phone_touch_draws_without_scrolling(browser, keras_server):
  page = _open(browser, keras_server.url, viewport={'width': 390, 'height': 600},
               is_mobile=True, has_touch=True, device_scale_factor=3)
  model = _model(keras_server)
  # The page is taller than the screen, so a swipe could scroll it.
  assert page.evaluate('document.documentElement.scrollHeight > innerHeight')
  box = page.locator('#pad').bounding_box()
  assert box['x'] >= 0 and box['x'] + box['width'] <= 390
  assert page.evaluate('document.documentElement.scrollWidth') <= 390
  # Upwards, as a swipe that would scroll the page down.
  _draw_with_touch(page, 1, reverse=True)
  expect(_digit(page, model)).to_have_text('1')
  assert page.evaluate('scrollY') == 0
  assert page.errors == []
  page.context.close()


def test_panels_side_by_side_follow_a_training_model(browser, keras_workdir,
                                                     tmp_path):
  """Two workdirs, one at an earlier step that --watch sees get a newer one."""
  half = TRAIN_STEPS // 2
  early = serving.copy_run(keras_workdir, tmp_path / 'early', half)
  with serving.serving(tmp_path, '--workdir', keras_workdir, '--workdir', early,
                       '--watch') as server:
    page = _open(browser, server.url, viewport={'width': 1100, 'height': 700})
    names = [m['name'] for m in httpx.get(f'{server.url}/api/models').json()]
    assert names == [os.path.basename(keras_workdir), 'early']
    panels = page.locator('article.panel')
    expect(panels).to_have_count(2)
    first, second = (panels.nth(i).bounding_box() for i in range(2))
    assert abs(first['y'] - second['y']) < 1 and first['x'] < second['x']
    for name, step in zip(names, (TRAIN_STEPS, half)):
      expect(page.locator(f'[data-testid="step"][data-model="{name}"]')
             ).to_have_text(str(step))
      expect(page.locator(f'[data-model="{name}"] .name')).to_have_text(name)
      expect(page.locator(f'[data-model="{name}"] .arch')).to_have_text('keras_cnn')
    _draw_with_mouse(page, 7)
    for name in names:
      expect(_digit(page, name)).to_have_text(re.compile(r'^\d$'))
    page.screenshot(path=str(tmp_path / 'page.png'))
    serving.add_checkpoint(keras_workdir, early, TRAIN_STEPS)
    expect(page.locator('[data-testid="step"][data-model="early"]')
           ).to_have_text(str(TRAIN_STEPS))
    # Read again with the newer checkpoint: the panels now agree exactly.
    full = _probabilities(page, names[0])
    for digit, value in full.items():
      expect(page.locator(f'[data-testid="probability"][data-model="early"]'
                          f'[data-digit="{digit}"]')).to_have_attribute(
                              'data-value', f'{value:.6f}')
    assert page.errors == []
    page.context.close()
  assert (tmp_path / 'page.png').read_bytes().startswith(b'\x89PNG')
