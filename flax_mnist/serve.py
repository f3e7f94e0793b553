"""`flax-mnist serve`: a page to draw digits on, and a JSON API, over workdirs.

Each workdir's latest checkpoint is restored and its forward pass compiled at
start for every size in `BATCH_SIZES`. Requests that arrive within
`BATCH_WINDOW` seconds of each other, or while the model is busy, share one
call, so throughput grows with the number of clients. Pictures are read by
`pictures` and prepared by `preprocess`, as for `predict`. With `watch`, a
newer checkpoint is restored beside the one in use and takes over between two
calls: no request is dropped. Needs the `serve` extra (Starlette and uvicorn).

The module runs a little over 300 lines: the routes, the batcher and the
watcher share the served models and their one device thread.
"""

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import importlib.resources
import io
import logging
import os
import threading

import numpy as np
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flax_mnist import checkpoint, pictures, predict, preprocess
from flax_mnist.errors import DataError, FlaxMnistError

logger = logging.getLogger(__name__)

# Every batch is padded to one of these; each is compiled at start.
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
BATCH_WINDOW = 0.002
# A phone's photo is a few MB; anything much larger is not one.
MAX_BODY = 16 * 2**20
WATCH_INTERVAL = 1.0
# Requests in flight get this long after SIGTERM or Ctrl-C; then the rest is
# cancelled, so the server is gone within 5 s.
SHUTDOWN_TIMEOUT = 3
# The page may use only what the package serves: nothing from elsewhere.
_POLICY = ("default-src 'self'; img-src 'self' data: blob:; "
           "style-src 'self'; script-src 'self'")


@dataclasses.dataclass
class Model:
  """A served workdir: the name it goes by, and the checkpoint in use."""

  name: str
  workdir: str
  predictor: predict.Predictor

  def describe(self) -> dict:
    return {'name': self.name, 'model': self.predictor.model,
            'step': self.predictor.step}


class Batcher:
  """Runs a model on the inputs queued together, `max_batch` at most at once.

  Calls go to one device thread, one at a time; whichever predictor the
  model has when a batch starts computes all of it.
  """

  def __init__(self, model: Model, device: concurrent.futures.Executor,
               max_batch: int, window: float = BATCH_WINDOW):
    self.model = model
    self._device = device
    self._max_batch = max_batch
    self._window = window
    self._queue: asyncio.Queue = asyncio.Queue()

  async def predict(self, image_HW: np.ndarray) -> tuple[np.ndarray, int]:
    """(probabilities (10,), the checkpoint step that gave them)."""
    future = asyncio.get_running_loop().create_future()
    self._queue.put_nowait((image_HW, future))
    return await future

  async def run(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      items = [await self._queue.get()]
      deadline = loop.time() + self._window
      while len(items) < self._max_batch:
        if not self._queue.empty():
          items.append(self._queue.get_nowait())
          continue
        remaining = deadline - loop.time()
        if remaining <= 0:
          break
        try:
          items.append(await asyncio.wait_for(self._queue.get(), remaining))
        except TimeoutError:
          break
      predictor = self.model.predictor
      images = np.stack([image for image, _ in items])
      try:
        probabilities = await loop.run_in_executor(
            self._device, predictor.probabilities_of_inputs, images)
      except Exception as e:  # pylint: disable=broad-except
        for _, future in items:
          if not future.done():
            future.set_exception(e)
        continue
      for (_, future), row in zip(items, probabilities):
        if not future.done():  # Its client may have gone.
          future.set_result((row, predictor.step))


def load_models(workdirs: list[str]) -> list[Model]:
  """Each workdir restored and compiled, named by its folder's name."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise FlaxMnistError(f'two workdirs are named {repeated[0]!r}: serve '
                         'workdirs whose folders have different names')
  models = []
  for name, workdir in zip(names, workdirs):
    predictor = predict.Predictor(workdir, BATCH_SIZES)
    predictor.compile()
    models.append(Model(name, workdir, predictor))
  return models


def latest_step(workdir: str) -> int | None:
  with checkpoint.Checkpointer(workdir, read_only=True) as ckpt:
    return ckpt.latest_step()


async def watch(model: Model, interval: float = WATCH_INTERVAL) -> None:
  """Switches `model` to each newer checkpoint its workdir gets."""
  failed = None  # The step that last failed to restore: said once.
  while True:
    await asyncio.sleep(interval)
    step = None
    try:
      step = await asyncio.to_thread(latest_step, model.workdir)
      if step is None or step <= model.predictor.step or step == failed:
        continue
      predictor = await asyncio.to_thread(_compiled, model.workdir)
    except FlaxMnistError as e:
      if step != failed:
        logger.warning('%s: keeping step %d: %s', model.name,
                       model.predictor.step, e)
      failed = step
      continue
    if predictor.step > model.predictor.step:
      logger.info('%s: now serving step %d', model.name, predictor.step)
      model.predictor = predictor


def _compiled(workdir: str) -> predict.Predictor:
  predictor = predict.Predictor(workdir, BATCH_SIZES)
  predictor.compile()
  return predictor


# PIL's decompression-bomb check works through the process-wide warning
# filters, so pictures are decoded one at a time; the rest runs in parallel.
_decoding = threading.Lock()


def model_input(data: bytes, dataset: str) -> np.ndarray:
  """The (28, 28) uint8 input of `dataset` made from an encoded picture, as
  `predict` makes it."""
  with _decoding:
    gray = pictures.load_gray(data)
  return preprocess.MAKERS[dataset](gray)


def png_base64(image_HW: np.ndarray) -> str:
  buffer = io.BytesIO()
  Image.fromarray(image_HW).save(buffer, 'PNG')
  return base64.b64encode(buffer.getvalue()).decode('ascii')


async def _body(request: Request, limit: int) -> bytes:
  """The request's body; a 413 as soon as it is known to be over `limit`."""
  too_large = HTTPException(413, f'the body is over the limit of {limit} bytes')
  length = request.headers.get('content-length', '')
  if length.isdigit() and int(length) > limit:
    raise too_large
  chunks, size = [], 0
  try:
    async for chunk in request.stream():
      size += len(chunk)
      if size > limit:
        raise too_large
      chunks.append(chunk)
  except asyncio.CancelledError:
    # Uvicorn cancels what is still uploading when the time to stop is up: a
    # stalled client, which hears why if it is still there.
    raise HTTPException(503, 'the server is stopping') from None
  except ClientDisconnect:
    raise HTTPException(400, 'the client went away during the upload') from None
  return b''.join(chunks)


async def _form_image(request: Request, body: bytes) -> bytes:
  """The multipart field `image` of a body already read."""
  async def replay():
    return {'type': 'http.request', 'body': body, 'more_body': False}
  try:
    form = await Request(request.scope, replay).form(max_files=1, max_fields=4)
  except HTTPException:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise HTTPException(400, f'cannot read the multipart form ({e})') from None
  field = form.get('image')
  if field is None or isinstance(field, str):
    raise HTTPException(400, 'the multipart form needs a file field named "image"')
  return await field.read()


def create_app(models: list[Model], *, watch_workdirs: bool = False,
               max_batch: int = BATCH_SIZES[-1], max_body: int = MAX_BODY
               ) -> Starlette:
  """The ASGI app: the page at /, its files under /static, the API under /api."""
  by_name = {model.name: model for model in models}
  batchers: dict[str, Batcher] = {}
  page = (importlib.resources.files('flax_mnist') / 'static' / 'index.html'
          ).read_text(encoding='utf-8')

  @contextlib.asynccontextmanager
  async def lifespan(app):
    with concurrent.futures.ThreadPoolExecutor(1, 'device') as device:
      for model in models:
        batchers[model.name] = Batcher(model, device, max_batch)
      tasks = [asyncio.create_task(b.run()) for b in batchers.values()]
      if watch_workdirs:
        tasks += [asyncio.create_task(watch(m)) for m in models]
      try:
        yield
      finally:
        for task in tasks:
          task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

  async def index(request):
    return HTMLResponse(page, headers={'Content-Security-Policy': _POLICY})

  async def list_models(request):
    return JSONResponse([model.describe() for model in models])

  async def health(request):
    return JSONResponse({'status': 'ok', 'models': len(models)})

  async def predict_image(request: Request):
    body = await _body(request, max_body)
    name = request.query_params.get('model', models[0].name)
    if name not in by_name:
      raise HTTPException(404, f'unknown model {name!r}; served: '
                               f'{", ".join(by_name)}')
    if request.headers.get('content-type', '').startswith('multipart/form-data'):
      body = await _form_image(request, body)
    if not body:
      raise HTTPException(400, 'empty body: send an image (PNG, JPEG, ...) as '
                               'the body or as the multipart field "image"')
    try:
      image = await asyncio.to_thread(model_input, body,
                                      by_name[name].predictor.dataset)
    except DataError as e:
      raise HTTPException(422, str(e)) from None
    probabilities, step = await batchers[name].predict(image)
    return JSONResponse({
        'model': name, 'step': step, 'digit': int(np.argmax(probabilities)),
        'probabilities': [float(p) for p in probabilities],
        'input': png_base64(image)})

  async def error(request, e: HTTPException):
    detail = e.detail
    # Starlette's routing says only 'Not Found' or 'Method Not Allowed'.
    if e.status_code == 404 and detail == 'Not Found':
      detail = f'nothing at {request.url.path}'
    elif e.status_code == 405 and detail == 'Method Not Allowed':
      detail = (f'{request.method} is not allowed on {request.url.path} (use '
                f'{e.headers.get("allow", "another method")})')
    return JSONResponse({'error': detail}, e.status_code, headers=e.headers)

  async def failure(request, e: Exception):
    logger.exception('while answering %s %s', request.method, request.url.path)
    return JSONResponse({'error': f'internal error ({type(e).__name__})'}, 500)

  return Starlette(
      routes=[Route('/', index), Route('/api/models', list_models),
              Route('/healthz', health),
              Route('/api/predict', predict_image, methods=['POST']),
              Mount('/static', StaticFiles(packages=[('flax_mnist', 'static')]))],
      exception_handlers={HTTPException: error, Exception: failure},
      lifespan=lifespan)


def serve(workdirs: list[str], host: str = '127.0.0.1', port: int = 8000, *,
          watch_workdirs: bool = False, max_batch: int = BATCH_SIZES[-1]) -> None:
  """Restores and compiles every workdir, then serves until SIGTERM or Ctrl-C."""
  if max_batch not in BATCH_SIZES:
    raise FlaxMnistError(f'--max-batch must be one of '
                         f'{", ".join(map(str, BATCH_SIZES))}, not {max_batch}')
  models = load_models(workdirs)
  app = create_app(models, watch_workdirs=watch_workdirs, max_batch=max_batch)
  for model in models:
    logger.info('%s: %s at step %d, from %s', model.name, model.predictor.model,
                model.predictor.step, model.workdir)
  server = uvicorn.Server(uvicorn.Config(
      app, host=host, port=port, access_log=False,
      timeout_graceful_shutdown=SHUTDOWN_TIMEOUT, log_level='info'))
  server.run()
