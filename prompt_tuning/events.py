"""TensorBoard-compatible event files without TensorFlow or tensorboard.

Writes TFRecord-framed ``Event`` protos (scalars as ``simple_value``), hand-encoded; TensorBoard
and ``tf.compat.v1.train.summary_iterator`` read them.
"""
from __future__ import annotations

import math
import os
import socket
import struct
import sys
import time



def warn(message: str, process_index: int = 0):
  """One ``warning:`` line on stderr (by process 0 only, where every process would say it)."""
  if process_index == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


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


def duration(seconds: float) -> str:
  """``1:02:03`` / ``2:03``."""
  seconds = int(round(max(seconds, 0.0)))
  h, rest = divmod(seconds, 3600)
  return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
  """Progress of ``total`` units (``unit``: steps, batches, examples) with rate and ETA.

  On a terminal: one bar redrawn in place (at most every ``redraw`` seconds), with the info of
  the last :meth:`update`. Elsewhere (a log file, a pipe, a notebook): :meth:`log` prints plain
  lines with the position, rate and ETA appended, and :meth:`update` prints one only every
  ``interval`` seconds (never for ``interval=None``), and then one at the end. The rate counts
  from the first update: the first unit (which compiles) is not timed."""

  def __init__(self, total: int, start: int = 0, stream=None, enabled: bool = True,
               label: str = "", unit: str = "steps", interval: float | None = None,
               clock=time.monotonic, redraw: float = 0.2):
    self.total, self.start, self.label, self.unit = total, start, label, unit
    self.stream = stream or sys.stdout
    self.enabled = enabled
    self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
    self.interval, self.clock, self.redraw = interval, clock, redraw
    self.first = None    # (time, position) of the first update: the rate counts from there
    self.n, self.info = start, {}
    self.drawn, self.printed = False, False
    self.last_draw = -math.inf
    self.last_line = clock()   # short jobs print no plain progress lines

  def status(self) -> str:
    """``12/300 steps  4.1 steps/s  ETA 1:10``."""
    text = f"{self.n}/{self.total} {self.unit}"
    if self.first is not None and self.n > self.first[1]:
      rate = (self.n - self.first[1]) / max(self.clock() - self.first[0], 1e-9)
      text += f"  {rate:.3g} {self.unit}/s"
      if self.n < self.total:
        text += f"  ETA {duration((self.total - self.n) / rate)}"
    return text

  def update(self, n: int, **info):
    if not self.enabled:
      return
    self.n = n
    now = self.clock()
    if self.first is None:
      self.first = (now, n)
    if info:
      self.info = info
    if self.tty:
      if now - self.last_draw >= self.redraw or n >= self.total:
        self.last_draw = now
        self._draw()
    elif self.interval is not None and (now - self.last_line >= self.interval
                                         or (n >= self.total and self.printed)):
      self._line(self._extra(info))

  def log(self, text: str):
    """A line of its own (a training log, eval results): on a terminal above the bar."""
    if not self.enabled:
      return
    if self.tty:
      self._clear()
      self.stream.write(text + "\n")
      self._draw()
    else:
      self._line(text)

  def close(self):
    if self.tty and self.drawn:
      self._clear()
      self.stream.flush()

  @staticmethod
  def _extra(info) -> str:
    return "  ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in info.items())

  def _line(self, text: str):
    self.last_line, self.printed = self.clock(), True
    head = f"{self.label}: " if self.label else ""
    self.stream.write(f"{head}{text}{'  ' if text else ''}[{self.status()}]\n")
    self.stream.flush()

  def _draw(self):
    frac = min(self.n / max(self.total, 1), 1.0)
    bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
    head = f"{self.label} " if self.label else ""
    extra = self._extra(self.info)
    self.stream.write(f"\r\033[K{head}[{bar}] {self.status()}{'  ' if extra else ''}{extra}")
    self.stream.flush()
    self.drawn = True

  def _clear(self):
    if self.drawn:
      self.stream.write("\r\033[K")
      self.drawn = False
