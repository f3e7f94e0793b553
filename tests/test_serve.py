"""`flax-mnist serve`'s JSON API, through an HTTP client, against a real server;
the request batcher and the command's errors on a small run."""

import asyncio
import base64
import concurrent.futures
import io
import os
import signal
import socket
import struct
import threading
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

import digits
import flax_mnist
import serving
from conftest import TRAIN_STEPS
from flax_mnist import cli, predict, preprocess, serve

# The tests of a server have a model trained for hundreds of steps: slow
# tier. The batcher's and the command's own tests need only a few steps.
TINY_STEPS = 5


def _picture(label: int, seed: int = 0, fmt: str = 'PNG') -> bytes:
  """A handwritten `label`, dark on light paper, as an encoded file."""
  coverage = digits.hand_coverage(np.random.default_rng(seed), label, 150, 12,
                                  (200, 220))
  buffer = io.BytesIO()
  Image.fromarray(np.rint(255 * (0.9 - 0.8 * coverage)).astype(np.uint8)).save(
      buffer, fmt)
  return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
  """A PNG that declares `width` x `height` (1-bit gray) and holds no pixels."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
          chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))


@pytest.fixture(scope='module')
def tiny_workdir(tiny_mnist, tmp_path_factory) -> str:
  """Softmax regression trained `TINY_STEPS` steps on small data, saved."""
  workdir = str(tmp_path_factory.mktemp('tiny') / 'tiny')
  config = flax_mnist.Config(steps=TINY_STEPS, checkpoint_every=TINY_STEPS)
  flax_mnist.train_and_evaluate(config, workdir, tiny_mnist)
  return workdir


@pytest.fixture(scope='module')
def predictor(keras_workdir) -> predict.Predictor:
  return predict.Predictor(keras_workdir)


@pytest.mark.slow
def test_predicts_raw_bytes_as_predict_does(keras_server, keras_workdir, predictor):
  for label, fmt, kind in ((7, 'PNG', 'image/png'), (3, 'JPEG', 'image/jpeg')):
    data = _picture(label, fmt=fmt)
    response = httpx.post(f'{keras_server.url}/api/predict', content=data,
                          headers={'Content-Type': kind})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {'model', 'step', 'digit', 'probabilities', 'input'}
    assert answer['model'] == os.path.basename(keras_workdir)
    assert answer['step'] == TRAIN_STEPS and answer['digit'] == label
    prepared = preprocess.prepare(data).image
    with Image.open(io.BytesIO(base64.b64decode(answer['input']))) as image:
      assert image.format == 'PNG' and image.size == (28, 28)
      np.testing.assert_array_equal(np.asarray(image), prepared)
    np.testing.assert_allclose(answer['probabilities'],
                               predictor.probabilities_of_inputs(prepared[None])[0],
                               atol=1e-6)


@pytest.mark.slow
def test_multipart_field_and_model_parameter(keras_server):
  data = _picture(7)
  raw = httpx.post(f'{keras_server.url}/api/predict', content=data).json()
  name = raw['model']
  form = httpx.post(f'{keras_server.url}/api/predict', params={'model': name},
                    files={'image': ('seven.png', data, 'image/png')})
  assert form.status_code == 200, form.text
  assert form.json() == raw


@pytest.mark.slow
def test_models_and_health(keras_server, keras_workdir):
  models = httpx.get(f'{keras_server.url}/api/models').json()
  assert models == [{'name': os.path.basename(keras_workdir), 'model': 'keras_cnn',
                     'step': TRAIN_STEPS}]
  assert httpx.get(f'{keras_server.url}/healthz').json() == {'status': 'ok',
                                                             'models': 1}
  # The server was started without --host.
  assert f'Uvicorn running on http://127.0.0.1:{keras_server.port}' in \
      keras_server.output()


def _bad_requests(url: str) -> dict[str, tuple[httpx.Request, int, str]]:
  """Each bad input: (request, status, words its error must contain)."""
  buffer = io.BytesIO()
  Image.effect_noise((200, 200), 40).save(buffer, 'JPEG')
  cut_jpeg = buffer.getvalue()[:2000]
  cut_png = _picture(7)[:300]
  blank = io.BytesIO()
  Image.new('L', (200, 150), 250).save(blank, 'PNG')

  def chunked():  # No Content-Length: the limit is found while reading.
    for _ in range(serve.MAX_BODY // 2**20 + 1):
      yield b'\0' * 2**20

  predict_url = f'{url}/api/predict'
  build = httpx.Request
  return {
      'empty body': (build('POST', predict_url), 400, 'empty body'),
      'empty multipart field': (build('POST', predict_url, files={
          'image': ('a.png', b'', 'image/png')}), 400, 'empty body'),
      'no image field': (build('POST', predict_url, files={
          'photo': ('a.png', _picture(7), 'image/png')}), 400, 'field named "image"'),
      'not an image': (build('POST', predict_url, content=b'Dear Sir, ...'), 422,
                       'not a PNG, JPEG'),
      'truncated JPEG': (build('POST', predict_url, content=cut_jpeg), 422,
                         'truncated or damaged'),
      'truncated PNG': (build('POST', predict_url, content=cut_png), 422,
                        'truncated or damaged'),
      'decompression bomb': (build('POST', predict_url, content=_png_header_only(
          20_000, 20_000)), 422, 'decompression bomb'),
      # Between PIL's limit and twice it, where PIL only warns.
      'decompression bomb, warned': (build('POST', predict_url, content=_png_header_only(
          10_000, 10_000)), 422, 'decompression bomb'),
      'no digit': (build('POST', predict_url, content=blank.getvalue()), 422,
                   'no digit found'),
      'unknown model': (build('POST', predict_url, params={'model': 'nine'},
                              content=_picture(7)), 404, "unknown model 'nine'"),
      'over the size limit': (build('POST', predict_url,
                                    content=b'\0' * (serve.MAX_BODY + 1)), 413,
                              'over the limit'),
      'over the size limit, chunked': (build('POST', predict_url, content=chunked()),
                                       413, 'over the limit'),
      'wrong method': (build('GET', predict_url), 405, 'GET is not allowed'),
      'wrong method on models': (build('DELETE', f'{url}/api/models'), 405,
                                 'DELETE is not allowed'),
      'wrong path': (build('GET', f'{url}/api/predictions'), 404,
                     'nothing at /api/predictions'),
  }


@pytest.mark.slow
def test_every_bad_input_gets_a_clear_json_error(keras_server):
  with httpx.Client(timeout=60) as client:
    for name, (request, status, words) in _bad_requests(keras_server.url).items():
      response = client.send(request)
      assert response.status_code == status, (name, response.text)
      assert response.headers['content-type'] == 'application/json', name
      assert words in response.json()['error'], (name, response.json())
    # And it still serves.
    assert client.post(f'{keras_server.url}/api/predict',
                       content=_picture(7)).json()['digit'] == 7
  assert 'Traceback' not in keras_server.output()


@pytest.mark.slow
@pytest.mark.parametrize('path', ['/static/../serve.py', '/static/%2e%2e/serve.py',
                                  '/static/..%2fserve.py', '/static//etc/passwd',
                                  '/static/%2fetc%2fpasswd', '/../pyproject.toml',
                                  '/static/static/../../cli.py'])
def test_static_files_only_from_the_package(keras_server, path):
  with socket.create_connection(('127.0.0.1', keras_server.port)) as connection:
    # Raw, so that no client tidies the path first.
    connection.sendall(f'GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
                       .encode())
    reply = b''
    while chunk := connection.recv(65536):
      reply += chunk
  assert reply.startswith(b'HTTP/1.1 404'), reply[:200]
  assert b'import' not in reply and b'root:' not in reply


@pytest.mark.slow
def test_page_and_its_files(keras_server):
  page = httpx.get(keras_server.url)
  assert page.status_code == 200 and '<canvas id="pad"' in page.text
  assert "default-src 'self'" in page.headers['content-security-policy']
  for name, kind in (('app.js', 'javascript'), ('style.css', 'text/css')):
    response = httpx.get(f'{keras_server.url}/static/{name}')
    assert response.status_code == 200 and kind in response.headers['content-type']
  # Nothing from elsewhere: every file the page names is the server's.
  script = httpx.get(f'{keras_server.url}/static/app.js').text
  assert 'http' not in page.text and 'http' not in script


@pytest.mark.slow
def test_concurrent_requests_get_their_own_answers(keras_server):
  pictures = [_picture(label, seed) for seed in range(4) for label in range(10)]

  async def post_all():
    async with httpx.AsyncClient(base_url=keras_server.url, timeout=120) as client:
      return await asyncio.gather(*[client.post('/api/predict', content=p)
                                    for p in pictures])

  together = asyncio.run(post_all())
  with httpx.Client(base_url=keras_server.url, timeout=60) as client:
    alone = [client.post('/api/predict', content=p) for p in pictures[:10]]
  assert [r.status_code for r in together] == [200] * len(pictures)
  for batched, single in zip(together, alone):
    np.testing.assert_allclose(batched.json()['probabilities'],
                               single.json()['probabilities'], atol=1e-6)
    assert batched.json()['input'] == single.json()['input']


def test_requests_that_arrive_together_share_a_call(tiny_workdir):
  model = serve.Model('tiny', tiny_workdir,
                      predict.Predictor(tiny_workdir, serve.BATCH_SIZES))
  sizes = []
  compute = model.predictor.probabilities_of_inputs

  def recording(images):
    sizes.append(len(images))
    return compute(images)

  model.predictor.probabilities_of_inputs = recording
  images = [preprocess.prepare(_picture(label)).image for label in range(10)]

  async def run(max_batch):
    with concurrent.futures.ThreadPoolExecutor(1) as device:
      batcher = serve.Batcher(model, device, max_batch)
      task = asyncio.create_task(batcher.run())
      results = await asyncio.gather(*[batcher.predict(i) for i in images * 3])
      task.cancel()
      return results

  batched = asyncio.run(run(64))
  assert sizes == [30]
  sizes.clear()
  unbatched = asyncio.run(run(1))
  assert sizes == [1] * 30
  for (a, step_a), (b, step_b) in zip(batched, unbatched):
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert step_a == step_b == TINY_STEPS


@pytest.mark.slow
def test_a_stalled_client_does_not_block_the_others(keras_server):
  stalled = []
  data = _picture(7)
  for request in (b'POST /api/pre',  # Half a request line.
                  b'POST /api/predict HTTP/1.1\r\nHost: x\r\n'  # Half the body.
                  b'Content-Length: %d\r\n\r\n' % len(data) + data[:len(data) // 2]):
    connection = socket.create_connection(('127.0.0.1', keras_server.port))
    connection.sendall(request)
    stalled.append(connection)
  try:
    with httpx.Client(base_url=keras_server.url, timeout=60) as client:
      for _ in range(5):
        assert client.post('/api/predict', content=data).json()['digit'] == 7
  finally:
    for connection in stalled:
      connection.close()


@pytest.mark.slow
def test_watch_switches_to_a_newer_checkpoint_while_requests_run(
    keras_workdir, tmp_path):
  half = TRAIN_STEPS // 2
  workdir = serving.copy_run(keras_workdir, tmp_path / 'growing', half)
  data = _picture(7)
  answers, problems = [], []
  with serving.serving(tmp_path, '--workdir', workdir, '--watch') as server:
    assert httpx.get(f'{server.url}/api/models').json()[0]['step'] == half
    stop = threading.Event()

    def keep_asking():
      with httpx.Client(base_url=server.url, timeout=60) as client:
        while not stop.is_set():
          response = client.post('/api/predict', content=data)
          if response.status_code == 200:
            answers.append(response.json()['step'])
          else:
            problems.append(response.text)

    clients = [threading.Thread(target=keep_asking) for _ in range(4)]
    for client in clients:
      client.start()
    try:
      while len(answers) < 20:
        stop.wait(0.05)
      serving.add_checkpoint(keras_workdir, workdir, TRAIN_STEPS)
      seen = len(answers)
      while (httpx.get(f'{server.url}/api/models').json()[0]['step'] != TRAIN_STEPS
             or len(answers) < seen + 20) and server.process.poll() is None:
        stop.wait(0.1)
    finally:
      stop.set()
      for client in clients:
        client.join()
    assert server.process.poll() is None, server.output()
  assert problems == []
  assert answers[:20] == [half] * 20 and answers[-1] == TRAIN_STEPS
  assert set(answers) == {half, TRAIN_STEPS}
  assert f'now serving step {TRAIN_STEPS}' in server.output()


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_stops_gracefully(keras_workdir, tmp_path, sig):
  """Requests in flight are answered; a stalled client does not hold it up."""
  data = _picture(7)
  with serving.serving(tmp_path, '--workdir', keras_workdir) as server:
    stalled = socket.create_connection(('127.0.0.1', server.port))
    stalled.sendall(b'POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n')

    async def in_flight():
      async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        requests = [asyncio.create_task(client.post('/api/predict', content=data))
                    for _ in range(16)]
        await asyncio.sleep(0.05)
        server.process.send_signal(sig)
        return await asyncio.gather(*requests, return_exceptions=True)

    answers = asyncio.run(in_flight())
    # Once only: a second Ctrl-C is uvicorn's way to force quit.
    code = server.process.wait(serving.START_TIMEOUT)
    stalled.close()
  answered = [a for a in answers if isinstance(a, httpx.Response)]
  # Each request was answered in full, or turned away before it was read.
  assert answered and all(a.status_code == 200 for a in answered), answered
  assert all(isinstance(a, httpx.TransportError) for a in answers
             if not isinstance(a, httpx.Response)), answers
  expected = {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130}[sig]
  assert code == expected, server.output()
  assert 'Traceback' not in server.output()


def test_cli_errors(tiny_workdir, tmp_path, capsys):
  assert cli.main(['serve', '--workdir', str(tmp_path)]) == 2
  assert 'no checkpoints here' in capsys.readouterr().err
  assert cli.main(['serve', '--workdir', tiny_workdir, '--max-batch', '3']) == 2
  assert '--max-batch must be one of 1, 2, 4' in capsys.readouterr().err
  twin = serving.copy_run(tiny_workdir, tmp_path / 'a' / 'keras', TINY_STEPS)
  (tmp_path / 'b').mkdir()
  other = serving.copy_run(tiny_workdir, tmp_path / 'b' / 'keras', TINY_STEPS)
  assert cli.main(['serve', '--workdir', twin, '--workdir', other]) == 2
  assert "two workdirs are named 'keras'" in capsys.readouterr().err
