"""TensorBoard-compatible event files without TensorFlow or tensorboard.

Writes TFRecord-framed ``Event`` protos (scalars as ``simple_value``), hand-encoded; TensorBoard
and ``tf.compat.v1.train.summary_iterator`` read them.
"""
from __future__ import annotations

import os
import socket
import struct
import sys
import time


def _crc32c_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
  return _varint((num << 3) | wire) + payload


def _bytes_field(num: int, data: bytes) -> bytes:
  return _field(num, 2, _varint(len(data)) + data)


def encode_event(wall_time: float, step: int = 0, scalars: dict | None = None,
                 file_version: str | None = None) -> bytes:
  ev = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step)))
  if file_version is not None:
    ev += _bytes_field(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
        for tag, v in scalars.items())
    ev += _bytes_field(5, summary)
  return ev


class EventWriter:
  """Appends scalar summaries to ``logdir/events.out.tfevents.<time>.<host>``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
    self._f = open(self.path, "ab")
    self._write(encode_event(time.time(), 0, file_version="brain.Event:2"))

  def _write(self, rec: bytes):
    header = struct.pack("<Q", len(rec))
    self._f.write(header + struct.pack("<I", _masked(header)) + rec +
                  struct.pack("<I", _masked(rec)))
    self._f.flush()

  def scalars(self, step: int, values: dict):
    values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    if values:
      self._write(encode_event(time.time(), step, values))

  def close(self):
    self._f.close()


class Progress:
  """A one-line progress bar on terminals (loss, tokens/s); nothing when not a TTY."""

  def __init__(self, total: int, start: int = 0, stream=None, enabled: bool = True):
    self.total, self.start = total, start
    self.stream = stream or sys.stdout
    self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

  def update(self, step: int, **info):
    if not self.enabled:
      return
    frac = step / max(self.total, 1)
    bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
    extra = "  ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in info.items())
    self.stream.write(f"\r[{bar}] {step}/{self.total}  {extra}")
    self.stream.flush()

  def close(self):
    if self.enabled:
      self.stream.write("\n")
