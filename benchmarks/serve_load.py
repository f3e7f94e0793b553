"""`flax-mnist serve` under load: requests/s and latency, batching on and off.

    python benchmarks/serve_load.py --workdir runs/keras

Starts the server on 127.0.0.1 (a free port) twice, with batching
(`--max-batch 64`) and without (`--max-batch 1`), and runs CLIENTS concurrent
clients against each for SECONDS: every client posts a drawn digit (a
280x280 PNG, as the page sends) and waits for the answer, over and over.
Reports requests/s, p50 and p99 latency, and errors, which must be zero: the
script exits 1 otherwise. Without --workdir it trains the keras preset for
300 steps first. The clients share the machine's cores with the server.
"""

import asyncio
import dataclasses
import io
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
from PIL import Image

import common

sys.path.insert(0, str(common.REPO / 'tests'))
import digits  # noqa: E402


def drawn_digits() -> list[bytes]:
  """A drawn-looking PNG of each digit: black strokes on white, 280x280."""
  pictures = []
  for label in range(10):
    coverage = digits.hand_coverage(np.random.default_rng(label), label, 200, 18,
                                    (280, 280))
    buffer = io.BytesIO()
    Image.fromarray(np.rint(255 * (1 - coverage)).astype(np.uint8)).save(buffer, 'PNG')
    pictures.append(buffer.getvalue())
  return pictures


def train_keras(folder: str, data_dir: str, smoke: bool) -> str:
  from flax_mnist import configs, train
  steps = 10 if smoke else 300
  config = dataclasses.replace(configs.get_preset('keras'), epochs=None,
                               steps=steps, log_every=steps, data_dir=data_dir)
  workdir = os.path.join(folder, 'keras')
  train.train_and_evaluate(config, workdir, common.mnist(data_dir, smoke))
  return workdir


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


async def load(url: str, pictures: list[bytes], clients: int, seconds: float
               ) -> dict:
  latencies, errors = [], []

  async def client(index: int, http: httpx.AsyncClient, stop_at: float):
    i = index
    while time.perf_counter() < stop_at:
      start = time.perf_counter()
      try:
        response = await http.post('/api/predict', content=pictures[i % len(pictures)],
                                   headers={'Content-Type': 'image/png'})
        if response.status_code == 200:
          latencies.append(time.perf_counter() - start)
        else:
          errors.append(f'{response.status_code}: {response.text[:200]}')
      except httpx.HTTPError as e:
        errors.append(repr(e))
      i += 1

  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
    for picture in pictures:  # Warm: connections, caches.
      (await http.post('/api/predict', content=picture)).raise_for_status()
    start = time.perf_counter()
    await asyncio.gather(*[client(i, http, start + seconds) for i in range(clients)])
    elapsed = time.perf_counter() - start
  p50, p99 = (np.percentile(latencies, [50, 99]) * 1000 if latencies
              else (float('nan'),) * 2)
  return {'requests': len(latencies), 'errors': len(errors),
          'requests_per_s': len(latencies) / elapsed,
          'p50_ms': float(p50), 'p99_ms': float(p99),
          'first_error': errors[0] if errors else None}


def run_server(workdir: str, max_batch: int, pictures, clients, seconds,
               log_path: str) -> dict:
  port = free_port()
  url = f'http://127.0.0.1:{port}'
  with open(log_path, 'w') as log:
    server = subprocess.Popen(
        [sys.executable, '-m', 'flax_mnist', 'serve', '--workdir', workdir,
         '--port', str(port), '--max-batch', str(max_batch)],
        stdout=log, stderr=subprocess.STDOUT)
  try:
    while True:
      if server.poll() is not None:
        raise SystemExit(f'the server exited: {pathlib.Path(log_path).read_text()}')
      try:
        if httpx.get(f'{url}/healthz').status_code == 200:
          break
      except httpx.TransportError:
        time.sleep(0.2)
    return asyncio.run(load(url, pictures, clients, seconds))
  finally:
    server.terminate()
    server.wait(30)


def main():
  parser = common.arguments(__doc__)
  parser.add_argument('--workdir', help='a trained keras run (default: train one)')
  parser.add_argument('--data-dir', default=common.DEFAULT_DATA_DIR,
                      help='MNIST, to train on when no --workdir is given')
  parser.add_argument('--clients', type=int, default=64)
  parser.add_argument('--seconds', type=float, default=20)
  args = parser.parse_args()
  clients, seconds = (4, 2) if args.smoke else (args.clients, args.seconds)
  pictures = drawn_digits()
  with tempfile.TemporaryDirectory() as folder:
    workdir = args.workdir or train_keras(folder, args.data_dir, args.smoke)
    rows = []
    for batching, max_batch in (('on', 64), ('off', 1)):
      result = run_server(workdir, max_batch, pictures, clients, seconds,
                          os.path.join(folder, f'serve-{max_batch}.log'))
      rows.append({'batching': batching, 'max_batch': max_batch,
                   'clients': clients, 'seconds': seconds, **result})
  common.report('serve_load', rows, ['batching', 'max_batch', 'clients', 'seconds',
                                     'requests', 'errors', 'requests_per_s',
                                     'p50_ms', 'p99_ms'], args.out,
                workdir=str(pathlib.Path(workdir).name))
  failed = [row for row in rows if row['errors']]
  for row in failed:
    print(f'batching {row["batching"]}: {row["errors"]} errors, first: '
          f'{row["first_error"]}', file=sys.stderr)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
