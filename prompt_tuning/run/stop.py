"""Stopping on SIGTERM / SIGINT (preemption, Ctrl-C) without losing work or printing tracebacks.

``train`` (and each run of a ``sweep``) finishes the step it is in, saves a checkpoint with the
data-iterator state, flushes its logs, prints one line saying where it stopped and how to go on,
and the command exits with :data:`EXIT_PREEMPTED` (75, EX_TEMPFAIL in sysexits.h: "temporary
failure, try again"). A distinct status lets a scheduler or wrapper script tell "stopped with a
checkpoint: run the same command again" from success (0), a crash (1), a user error (2) and a
process killed by a signal before it could save (128 + N in a shell, -N from Popen). A second
Ctrl-C (SIGINT; a second SIGTERM is ignored) ends the process at once from the CLI (the default
action of SIGINT, no traceback; the run lock and any half-written checkpoint are handled as after
SIGKILL); in a notebook or interactive session it raises KeyboardInterrupt, as Python does.

Multi-host: a signal usually reaches one host first (or each at a different step); every
process all-gathers its flag after every step and all stop after the same step. This is a
one-element all-gather per step, which waits for the step to finish (JAX's
``reached_preemption_sync_point`` does the same through the coordination service, for SIGTERM
only).

``eval``, ``infer`` and ``export`` have nothing to save: :func:`exit_on_signal` prints one line
and ends the process with ``os._exit`` (128 + N) without unwinding through XLA, whose
interpreter-exit teardown crashed (SIGSEGV) after a KeyboardInterrupt raised inside it.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on a signal after saving a checkpoint. The message is the one line."""


def _say(line: str):
  """One line on stderr from a signal handler: unbuffered (the handler may interrupt the main
  thread inside a buffered write to stderr, which must not be re-entered)."""
  try:
    os.write(2, (line + "\n").encode())
  except OSError:
    pass


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


class StopSignals:
  """Context manager for a training run: SIGTERM and SIGINT set a flag that :meth:`requested`
  reads (after every step); the previous handlers are restored on exit."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict = {}

  def __enter__(self) -> "StopSignals":
    if _main_thread():  # Python only lets the main thread install handlers
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, h in self._previous.items():   # None: a handler not set from Python (JAX's C++
      signal.signal(s, signal.SIG_DFL if h is None else h)   # preemption notifier)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    if self.signum is None:
      self.signum = signum
      _say(f"{self.name} received: finishing this step and saving a checkpoint "
           f"(Ctrl-C again aborts at once)")
    # The second Ctrl-C aborts: from the CLI, SIGINT's default action (no traceback); where
    # Python's own handler was in place (a notebook kernel, an interactive session), a
    # KeyboardInterrupt as usual, so the kernel survives.
    prev = self._previous.get(signal.SIGINT)
    signal.signal(signal.SIGINT, prev if prev is signal.default_int_handler else signal.SIG_DFL)

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else "a stop request"

  def requested(self) -> bool:
    """Whether any process received a stop signal; in a multi-process run a collective that
    every process calls after the same step, so all agree on where to stop."""
    import jax
    if jax.process_count() == 1:
      return self.signum is not None
    import numpy as np
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(
        np.asarray([self.signum or 0], np.int32))
    got = [int(f) for f in np.asarray(flags).reshape(-1) if f]
    if got and self.signum is None:
      self.signum = got[0]   # to name the signal another host received
    return bool(got)


def exit_on_signal(verb: str):
  """For commands that write nothing resumable: a signal prints one line and ends the process
  at once with status 128 + N."""
  if not _main_thread():
    return

  def handle(signum, frame):
    name = signal.Signals(signum).name
    note = " (the files written so far are incomplete)" if verb == "export" else ""
    try:
      sys.stdout.flush()
    except (RuntimeError, OSError, ValueError):  # interrupted inside a write to stdout
      pass
    _say(f"{name} received: {verb} stopped{note}")
    os._exit(128 + signum)

  for s in SIGNALS:
    signal.signal(s, handle)
