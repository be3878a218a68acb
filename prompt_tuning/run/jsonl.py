"""Append-only JSON-lines logs (``metrics.jsonl``, a sweep's ``results.jsonl``) that survive
crashes and resumes.

A record is written with one ``write`` in append mode, so a crash leaves at most one partial last
line. Before appending, a file whose last byte is not a newline has that partial line moved to
``<file>.partial`` (one warning line), so a new record never merges with it. A resumed run keeps
only the records up to its checkpoint's step (:func:`keep_through`): the steps it trains again
are logged once.
"""
from __future__ import annotations

import json
import os

from prompt_tuning.events import warn as _warn


def _set_aside(path: str, lines: list[bytes], why: str):
  with open(path + ".partial", "ab") as f:
    f.write(b"".join(l.rstrip(b"\n") + b"\n" for l in lines))
  _warn(f"{path}: {why} moved to {os.path.basename(path)}.partial")


def _repair_tail(f, path: str):
  """Cuts a partial last line (no newline: a write cut short) off the open file ``f``."""
  size = f.seek(0, os.SEEK_END)
  if size == 0:
    return
  f.seek(size - 1)
  if f.read(1) == b"\n":
    return
  f.seek(0)
  data = f.read()
  cut = data.rfind(b"\n") + 1
  _set_aside(path, [data[cut:]], f"a partial last line ({size - cut} bytes) was")
  f.truncate(cut)
  f.seek(0, os.SEEK_END)


def append(path: str, record: dict):
  line = (json.dumps(record) + "\n").encode()
  with open(path, "a+b") as f:
    _repair_tail(f, path)
    f.write(line)


def keep_through(path: str, step: int, drop_eval_at_step: bool = False):
  """Drops the records of steps after ``step`` (and with ``drop_eval_at_step`` the evaluation
  record of ``step`` itself, which the resumed run writes again); lines that are not JSON
  records are set aside. Rewritten atomically, and only when something changes."""
  try:
    with open(path, "rb") as f:
      lines = f.read().splitlines(keepends=True)
  except FileNotFoundError:
    return
  keep, bad, dropped = [], [], 0
  for line in lines:
    try:
      rec = json.loads(line)
      s = rec["step"]
      if not isinstance(s, int):
        raise TypeError(s)
    except (ValueError, TypeError, KeyError):
      bad.append(line)
      continue
    if s > step or (drop_eval_at_step and s == step and "eval" in rec):
      dropped += 1
    else:
      keep.append(line if line.endswith(b"\n") else line + b"\n")
  if not bad and not dropped:
    return
  if bad:
    _set_aside(path, bad, f"{len(bad)} line(s) that are not complete records")
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(b"".join(keep))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
