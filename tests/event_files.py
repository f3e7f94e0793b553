"""Reads TensorBoard event files back, as TensorBoard shows them, without TensorFlow."""

import glob
import os
import struct

from tensorboardX.proto import event_pb2


def records(path: str) -> list[bytes]:
  """The payloads of a TFRecord file (length, CRC, data, CRC each)."""
  out = []
  with open(path, 'rb') as f:
    while header := f.read(12):
      (length,) = struct.unpack('<Q', header[:8])
      out.append(f.read(length))
      f.read(4)
  return out


def events(logdir: str) -> list[event_pb2.Event]:
  """The events of every file in `logdir`, files in name order; a session
  start at step S drops the earlier files' events from S on (TensorBoard's
  purge, which a resumed run relies on)."""
  kept = []
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    for record in records(path):
      event = event_pb2.Event.FromString(record)
      if event.session_log.status == event_pb2.SessionLog.START:
        kept = [e for e in kept if e.step < event.step]
      kept.append(event)
  return kept


def scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the scalar summaries."""
  out = {}
  for event in events(logdir):
    for value in event.summary.value:
      if value.WhichOneof('value') == 'simple_value':
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def values(logdir: str, tag: str) -> list[tuple[int, object]]:
  """[(step, summary value)] of every summary value tagged `tag`."""
  return [(event.step, value) for event in events(logdir)
          for value in event.summary.value if value.tag == tag]
