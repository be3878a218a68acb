"""One writer per run directory: ``<output_dir>/run.lock``.

  with runlock.RunLock(config.output_dir):
    ...  # train: checkpoints, metrics, tensorboard

A second process that tries to write the same output_dir is refused with one line naming the
holder (pid, host, start time, command). The lock is an ``fcntl.flock`` on ``run.lock``, which
also records who holds it. The kernel drops a flock when its holder dies, however it dies
(SIGKILL, OOM), so a lock left behind by a dead process on this host is reclaimed, with one
warning line naming the dead holder. The file is removed on release (normal exit or exception).

Multi-process (multi-host) runs: only process 0 takes the lock, for the whole run; the other
processes of the run never touch it, so they cannot be refused by their own run. Process 0's
outcome is broadcast, so when it is refused every process raises the same error instead of
waiting forever for process 0.

Network filesystems. On NFS (Linux client, NFSv4 or v3 with lockd) flock is emulated with
POSIX locks and works across hosts. Some mounts (``local_lock=flock``, ``nolock``, many FUSE
filesystems) only lock locally, where a lock held on *another* host is invisible; so a lock file
naming another host is never reclaimed automatically, even when flock succeeds: the error says
to delete the file if that run is dead. Where flock is not supported at all (ENOLCK,
EOPNOTSUPP) the recorded pid is checked instead; two runs starting in the same instant could
then both pass. Filesystems without atomic rename/flock semantics (object-store FUSE mounts) are
not protected.
"""
from __future__ import annotations

import datetime
import errno as errno_lib
import json
import os
import shlex
import socket
import sys
import uuid

from prompt_tuning.events import warn as _warn

try:
  import fcntl
except ImportError:  # not POSIX: the recorded-pid check only
  fcntl = None

LOCK_NAME = "run.lock"


class RunLockError(ValueError):
  """The run directory is held by another live run. One line of text."""


def _proc_start(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (tells a reused pid apart)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def pid_alive(pid: int, proc_start: str | None = None) -> bool:
  """Whether ``pid`` runs on this host (and, when known, is the same process as recorded)."""
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  if proc_start is not None:
    now = _proc_start(pid)
    if now is not None and now != proc_start:
      return False  # the pid was reused by another process
  return True


def describe(info: dict) -> str:
  cmd = info.get("command") or "?"
  cmd = cmd if len(cmd) <= 160 else cmd[:157] + "..."
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started "
          f"{info.get('start_time', '?')}, command: {cmd}")


def read_holder(path: str) -> dict | None:
  """The holder recorded in a lock file (None: no file, empty, or not a record)."""
  try:
    with open(path, "rb") as f:
      info = json.loads(f.read().decode("utf-8") or "null")
  except (OSError, ValueError):
    return None
  return info if isinstance(info, dict) and "pid" in info else None


class RunLock:
  """Exclusive lock on a run directory; a context manager (released on exit and on error).

  ``process_index`` / ``process_count`` default to jax's when jax is already imported (else
  0 / 1); only process 0 locks. ``command`` is what is recorded (default: this process's
  argv)."""

  def __init__(self, directory: str, *, process_index: int | None = None,
               process_count: int | None = None, command: str | None = None,
               name: str = LOCK_NAME):
    self.directory = os.path.abspath(directory)
    self.path = os.path.join(self.directory, name)
    jax = sys.modules.get("jax")
    self.process_index = (jax.process_index() if jax else 0) if process_index is None \
        else process_index
    self.process_count = (jax.process_count() if jax else 1) if process_count is None \
        else process_count
    self.command = command if command is not None else \
        " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv)
    self.run_id = uuid.uuid4().hex
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  # ---------------------------------------------------------------------------- public
  def acquire(self) -> "RunLock":
    if self.process_index == 0:
      try:
        self._acquire()
      except Exception:  # refused, or cannot even create the directory: no process goes on
        self._broadcast(False)
        raise
      self._broadcast(True)
    elif not self._broadcast(None):
      info = read_holder(self.path)
      raise RunLockError(f"{self.directory} is in use by another run"
                         + (f" ({describe(info)})" if info else "")
                         + "; process 0 of this run was refused the lock")
    return self

  def release(self):
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      # Remove the file only while it is still ours (we hold the flock on this inode).
      if _same_file(fd, self.path):
        os.unlink(self.path)
    except OSError:
      pass
    finally:
      os.close(fd)  # drops the flock

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False

  # ---------------------------------------------------------------------------- internals
  def _record(self) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "start_time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "proc_start": _proc_start(os.getpid()), "command": self.command,
            "run_id": self.run_id, "process_count": self.process_count}

  def _refuse(self, info: dict | None, extra: str = ""):
    who = describe(info) if info else "a process that has not recorded itself yet"
    raise RunLockError(f"{self.directory} is in use by another run ({who}); wait for it to "
                       f"finish or use another output_dir{extra}")

  def _acquire(self):
    if self._fd is not None:
      raise RunLockError(f"{self.directory}: this RunLock is already held")
    os.makedirs(self.directory, exist_ok=True)
    host = socket.gethostname()
    for _ in range(20):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        flocked = self._flock(fd)
        if flocked is None:  # busy: a live holder
          self._refuse(read_holder(self.path))
        if not _same_file(fd, self.path):
          # The holder released (unlinked) between our open and our flock: retry on the new file.
          os.close(fd)
          fd = None
          continue
        info = read_holder(self.path)
        if info and info.get("run_id") != self.run_id:
          same_host = info.get("host") == host
          if not same_host:
            self._refuse(info, f"; it ran on another host, so whether it still runs cannot be "
                               f"checked from here: if it does not, delete {self.path}")
          if not flocked and pid_alive(int(info.get("pid", -1)), info.get("proc_start")):
            self._refuse(info)
          if int(info.get("pid", -1)) != os.getpid():
            _warn(f"reclaimed the lock on {self.directory} left by a run that is no longer "
                  f"running ({describe(info)})")
        data = json.dumps(self._record()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._fd, fd = fd, None
        return
      finally:
        if fd is not None:
          os.close(fd)
    raise RunLockError(f"could not take the lock {self.path}: it keeps being replaced")

  @staticmethod
  def _flock(fd: int) -> bool | None:
    """True: locked; None: held by someone else; False: flock unsupported here."""
    if fcntl is None:
      return False
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      return None
    except OSError as e:
      if e.errno in (errno_lib.EWOULDBLOCK, errno_lib.EAGAIN, errno_lib.EACCES):
        return None
      if e.errno in (errno_lib.ENOLCK, errno_lib.EOPNOTSUPP, errno_lib.ENOSYS,
                     errno_lib.EINVAL):
        return False
      raise

  def _broadcast(self, ok: bool | None) -> bool:
    """Process 0's outcome to every process of a multi-process run (identity otherwise)."""
    jax = sys.modules.get("jax")
    if jax is None or jax.process_count() == 1:
      return True if ok is None else ok
    import numpy as np
    from jax.experimental import multihost_utils
    value = np.asarray(int(bool(ok)), np.int32)
    return bool(multihost_utils.broadcast_one_to_all(value))


def _same_file(fd: int, path: str) -> bool:
  try:
    a, b = os.fstat(fd), os.stat(path)
  except OSError:
    return False
  return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
