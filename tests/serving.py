"""`flax-mnist serve` run as users run it: a process on a free port of 127.0.0.1."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx

from conftest import REPO

# How long a server may take to restore and compile (a guard against hangs,
# not a measurement: the machine's cores are shared).
START_TIMEOUT = 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Server:
  """A running server: its process, its URL and (after `stop`) its output."""

  def __init__(self, args: list[str], log_path: str):
    self.port = free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.log_path = log_path
    self._log = open(log_path, 'w')
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'flax_mnist', 'serve', '--port', str(self.port),
         *args], cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    deadline = time.monotonic() + START_TIMEOUT
    while True:
      if self.process.poll() is not None:
        raise RuntimeError(f'the server exited with {self.process.returncode}:\n'
                           f'{self.output()}')
      try:
        if httpx.get(f'{self.url}/healthz', timeout=5).status_code == 200:
          break
      except httpx.TransportError:
        pass
      if time.monotonic() > deadline:
        self.stop()
        raise RuntimeError(f'the server did not start:\n{self.output()}')
      time.sleep(0.2)

  def output(self) -> str:
    if not self._log.closed:
      self._log.flush()
    with open(self.log_path) as f:
      return f.read()

  def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if self.process.poll() is None:
      self.process.send_signal(sig)
      try:
        self.process.wait(timeout)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self._log.close()
    return self.process.returncode


@contextlib.contextmanager
def serving(tmp_path, *args: str):
  server = Server(list(args), str(tmp_path / f'serve-{free_port()}.log'))
  try:
    yield server
  finally:
    server.stop()


def copy_run(workdir: str, destination, keep_step: int) -> str:
  """A copy of `workdir` holding only the checkpoint of `keep_step`."""
  shutil.copytree(workdir, destination)
  folder = os.path.join(destination, 'checkpoints')
  for name in os.listdir(folder):
    if name != str(keep_step):
      shutil.rmtree(os.path.join(folder, name))
  return str(destination)


def add_checkpoint(source_workdir: str, workdir: str, step: int) -> None:
  """Puts `source_workdir`'s step into `workdir` the way orbax does: written
  under a temporary name, then renamed."""
  source = os.path.join(source_workdir, 'checkpoints', str(step))
  target = os.path.join(workdir, 'checkpoints', str(step))
  temporary = f'{target}.orbax-checkpoint-tmp-1'
  shutil.copytree(source, temporary)
  os.rename(temporary, target)
