"""orbax checkpoints of the trainable state only, verified on every read.

A checkpoint holds the trainable params, the optimizer state and the step (plus JSON metadata:
method, model reference, config), and optionally one data-iterator state blob per process. The
frozen model is *referenced* (by path or preset name in the metadata), never stored.

Layout of ``<directory>/<step>/`` (the orbax layout, so older readers still work)::

  state/                        orbax arrays (ocdbt): {"step", "params", "opt_state"}
  meta/metadata                 JSON: the caller's meta + "step" + "_integrity"
  data_state/process_I-of-N.bin one data-iterator state per process (only when given)

Integrity. ``_integrity`` in the meta records, for every array, its dtype, shape and a 96-bit
digest of its bits; the process count of the data states; the metrics; and a sha256 of the meta
itself (canonical JSON without that field). Each data-state file starts with a header carrying
its own size and sha256. Restore recomputes every digest from the restored arrays, so garbage
that orbax decodes without complaint (flipped bytes in the compressed chunks give finite values
up to 1e17) is caught, as are truncated, deleted or zeroed files (orbax then raises) and garbage
meta (not JSON, or a checksum mismatch).

The digest is computed on device by a jitted reduction over the bits of each (global, possibly
sharded) array: a plain 32-bit sum (any single changed element changes it) and two sums of
per-element hashes of (index, bits). Integer sums wrap exactly, so the digest does not depend on
the sharding, the mesh, the backend or the number of processes: a checkpoint written by 8 hosts
verifies on one CPU. It is not a cryptographic hash; it is meant to catch corruption.

Falling back. ``restore()`` without a step tries the newest step first and, when a step fails
verification, prints one ``warning:`` line (which step, why) and tries the next older one. It
raises :class:`CheckpointError` when no step is usable, and never trains from garbage. A template
that does not match the recorded structure (another model or method) raises ``ValueError`` at
once: that is not corruption and an older step would not help.

Provenance. With a ``run_id`` (prompt_tuning/provenance.py) a step whose meta records another
run is unusable, and each data-state header carries the step and run id it was saved for (its
sha256 covers them): an older step's state copied into a newer step, or another run's, fails
verification like a damaged file, and the next older step is used.

Step directories. Only ``<directory>/<digits>`` directories with a readable, verified meta count
as steps; orbax temporary directories and foreign names ("foo", "12.replaced-...") are ignored
silently, numeric directories without a usable meta (an empty "12") with one warning line. The
step list is ours, not orbax's CheckpointManager's: that one lists an empty "12" as the latest
step and then silently skips every save of a step <= 12.

Saving writes everything into a temporary directory that orbax renames only when complete, so a
failed save never leaves a checkpoint that looks valid; an OSError (disk full, quota, read-only)
becomes one :class:`CheckpointSaveError` line and the temporary directory is removed.

Multi-process runs: every process calls save/restore (as orbax requires). The meta is written by
process 0, each process writes and reads only its own data-state file, and the verdict on a step
(usable or not) is agreed across processes before falling back, so all processes restore the
same step (tests/multiprocess_checkpoint.py runs this with two real processes). Shared storage
is assumed, as orbax does. Not handled: a save that fails on some processes only (a full local
disk on one host) leaves the others waiting in orbax's barrier until its timeout. Checkpoints
from before these checks (no ``_integrity``) are restored unverified with one warning line.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno as errno_lib
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from prompt_tuning.events import warn as _warn

try:
  import fcntl
except ImportError:  # not POSIX: readers rely on retrying a step that vanished
  fcntl = None

FORMAT = 1
_INTEGRITY = "_integrity"
# Written into orbax's per-step _CHECKPOINT_METADATA too: a meta that lost its "_integrity" key
# (garbage) is then corruption, not a checkpoint from before integrity checks.
_MARKER = "prompt_tuning_integrity"
_DATA_MAGIC = b"PTDS1"
_DATA_MAGIC_BOUND = b"PTDS2"   # + the step and run id the state belongs to
_TMP_TAG = ".orbax-checkpoint-tmp"
_REPLACED_TAG = ".replaced-"
_DELETED_TAG = ".deleted-"     # a step being deleted: renamed first, so readers never see half
_LIST_AGAIN = 20               # a reader lists the steps again at most this often


class CheckpointError(ValueError):
  """A checkpoint is unusable (or none is), or saving one failed. One line of text."""


class CheckpointSaveError(CheckpointError):
  """Writing a checkpoint failed (disk full, quota, permissions); earlier ones are intact."""

  def __init__(self, message: str, errno: int | None = None):
    super().__init__(message)
    self.errno = errno


class _Corrupt(Exception):
  """Internal: this step fails verification (the reason is the message)."""


def _short(e: BaseException, limit: int = 240) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text[:limit] + (" ..." if len(text) > limit else "")


# ------------------------------------------------------------------------------ pytree helpers
def _key(k) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def to_nested(tree) -> dict:
  """Any pytree (nnx.State, optax states) -> nested dict of arrays keyed by path strings."""
  out: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    node = out
    keys = [_key(k) for k in path] or ["value"]
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = leaf
  return out


def from_nested(template, nested: dict, what: str = "checkpoint"):
  """Inverse of :func:`to_nested`, using ``template`` for the tree structure."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, tmpl in paths:
    node = nested
    keys = [_key(k) for k in path] or ["value"]
    for k in keys:
      if not isinstance(node, dict) or k not in node:
        raise ValueError(f"{what} has no entry for {'/'.join(keys)}: it was written for a "
                         f"different model or tuning method")
      node = node[k]
    if np.shape(node) != np.shape(tmpl):
      raise ValueError(f"{what}: shape mismatch at {'/'.join(keys)}: stored {np.shape(node)}, "
                       f"expected {np.shape(tmpl)}")
    leaves.append(node)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _flat(tree: dict) -> dict[str, Any]:
  """Nested dict -> {"params/a/b": leaf}."""
  return {"/".join(_key(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ------------------------------------------------------------------------------ digests
_C1, _C2, _GOLD, _K1, _K2 = 0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9, 0x7F4A7C15, 0x165667B1


def _fmix(xp, h):
  """murmur3's 32-bit finalizer (a bijection that mixes every input bit into every output bit)."""
  h = h ^ (h >> xp.uint32(16))
  h = h * xp.uint32(_C1)
  h = h ^ (h >> xp.uint32(13))
  h = h * xp.uint32(_C2)
  return h ^ (h >> xp.uint32(16))


def _lanes(xp, u, i):
  """Three wrapping uint32 sums over elements (bits ``u``, flat index ``i``)."""
  b = _fmix(xp, u ^ _fmix(xp, i * xp.uint32(_GOLD) + xp.uint32(_K1)))
  c = _fmix(xp, (u + _fmix(xp, i ^ xp.uint32(_K2))) * xp.uint32(_C1))
  return [xp.sum(v, dtype=xp.uint32) for v in (u, b, c)]


def _uint_for(dtype):
  size = np.dtype(dtype).itemsize
  if np.dtype(dtype) == np.bool_:
    return None
  if size not in (1, 2, 4, 8):
    raise TypeError(f"cannot checksum arrays of dtype {dtype}")
  return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[size]


def _digest_host(x) -> str:
  """Digest of a host (numpy) array; equal to :func:`_digest_device` of the same values."""
  x = np.ascontiguousarray(np.asarray(x))
  ut = _uint_for(x.dtype)
  u = (x.astype(np.uint32) if ut is None else x.view(ut)).reshape(-1).astype(np.uint32)
  i = (np.arange(u.size, dtype=np.uint64) % (1 << 32)).astype(np.uint32)
  with np.errstate(over="ignore"):
    return "".join(f"{int(v):08x}" for v in _lanes(np, u, i))


def _device_lanes(x):
  ut = _uint_for(x.dtype)
  u = x.astype(jnp.uint32) if ut is None else jax.lax.bitcast_convert_type(x, ut)
  u = u.astype(jnp.uint32)  # 8-byte types became [..., 2] uint32 above
  # Row-major flat index without a reshape (a reshape of a sharded array may move data).
  i, stride = jnp.zeros(u.shape, jnp.uint32), 1
  for d in reversed(range(u.ndim)):
    i = i + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d) * jnp.uint32(stride % (1 << 32))
    stride *= u.shape[d]
  return jnp.stack(_lanes(jnp, u, i))


_device_digests = jax.jit(lambda xs: [_device_lanes(x) for x in xs])


def digests(tree: dict) -> dict[str, str]:
  """{path: digest} of every leaf of a nested dict of (numpy or jax, possibly sharded) arrays.

  Jax arrays are digested on their devices in one jitted call (in a multi-process run every
  process must call this, like any computation on global arrays); numpy leaves on the host."""
  flat = _flat(tree)
  out = {k: _digest_host(v) for k, v in flat.items() if not isinstance(v, jax.Array)}
  dev = [k for k, v in flat.items() if isinstance(v, jax.Array)]
  if dev:
    lanes = _device_digests([flat[k] for k in dev])
    if jax.process_count() > 1:  # results of global arrays: gather (replicated, tiny)
      from jax.experimental import multihost_utils
      lanes = [multihost_utils.process_allgather(x, tiled=True) if not x.is_fully_addressable
               else x for x in lanes]
    for k, v in zip(dev, jax.device_get(lanes)):
      out[k] = "".join(f"{int(x):08x}" for x in np.asarray(v).reshape(-1)[:3])
  return out


def _canonical(obj) -> bytes:
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                    allow_nan=True).encode()


def _meta_sha(stored: dict) -> str:
  body = dict(stored)
  body[_INTEGRITY] = {k: v for k, v in stored[_INTEGRITY].items() if k != "meta_sha256"}
  return hashlib.sha256(_canonical(body)).hexdigest()


# ------------------------------------------------------------------------------ data states
def data_state_name(process_index: int, process_count: int) -> str:
  return f"process_{process_index}-of-{process_count}.bin"


def _bound(blob: bytes, step: int | None, run_id: str | None) -> str:
  """sha256 of a data state bound to its step and run (an older step's state copied into a
  newer step, or another run's, no longer verifies)."""
  prefix = b"" if step is None else b"%d %s\n" % (step, (run_id or "-").encode())
  return hashlib.sha256(prefix + blob).hexdigest()


def encode_data_state(blob: bytes, step: int | None = None, run_id: str | None = None) -> bytes:
  """Header line (magic, size, sha256; with ``step``: the step and run id it belongs to, which
  the sha256 covers) + blob: every file checks itself and says where it belongs."""
  blob = bytes(blob)
  if step is None:
    return b"%s %d %s\n" % (_DATA_MAGIC, len(blob), _bound(blob, None, None).encode()) + blob
  return b"%s %d %s %d %s\n" % (_DATA_MAGIC_BOUND, len(blob), _bound(blob, step, run_id).encode(),
                                 step, (run_id or "-").encode()) + blob


def decode_data_state(raw: bytes, what: str, step: int | None = None,
                      run_id: str | None = None) -> bytes:
  """The blob; _Corrupt when the file is damaged or (given ``step`` / ``run_id``) belongs to
  another step or run."""
  head, sep, blob = raw.partition(b"\n")
  parts = head.split(b" ")
  bound = parts[0] == _DATA_MAGIC_BOUND and len(parts) == 5 and parts[3].isdigit()
  if not sep or not (bound or (parts[0] == _DATA_MAGIC and len(parts) == 3)) \
      or not parts[1].isdigit():
    raise _Corrupt(f"{what}: no valid header")
  if len(blob) != int(parts[1]):
    raise _Corrupt(f"{what}: {len(blob)} bytes, expected {int(parts[1])}"
                   + (" (truncated)" if len(blob) < int(parts[1]) else ""))
  at, rid = (int(parts[3]), parts[4].decode("ascii", "replace")) if bound else (None, None)
  if _bound(blob, at, None if rid == "-" else rid).encode() != parts[2]:
    raise _Corrupt(f"{what}: checksum mismatch")
  if bound and step is not None and at != step:
    raise _Corrupt(f"{what}: holds the data-iterator state of step {at}, not of step {step}")
  if bound and run_id and rid not in ("-", run_id):
    raise _Corrupt(f"{what}: holds the data-iterator state of another run ({rid[:12]})")
  return blob


class DataStateHandler(ocp.CheckpointHandler):
  """orbax item handler: each process writes its own data-iterator state file into the item
  directory (inside orbax's temporary step directory, so it is committed with the step)."""

  def __init__(self, process_index: int, process_count: int):
    self.process_index, self.process_count = process_index, process_count

  def save(self, directory, args: "DataStateSave"):
    path = os.path.join(os.fspath(directory), data_state_name(self.process_index,
                                                              self.process_count))
    _write_file(path, encode_data_state(args.blob, args.step, args.run_id))

  def restore(self, directory, args: "DataStateRestore | None" = None) -> bytes:
    name = data_state_name(self.process_index, self.process_count)
    with open(os.path.join(os.fspath(directory), name), "rb") as f:
      return decode_data_state(f.read(), f"data_state/{name}", args and args.step,
                               args and args.run_id)


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  blob: bytes
  step: int | None = None       # the step and run the state belongs to (bound into its header)
  run_id: str | None = None


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  step: int | None = None       # expected step and run (None: not checked)
  run_id: str | None = None


def _write_file(path: str, data: bytes):
  # A module function so tests can simulate a full disk here.
  with open(path, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


# ------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def _orbax_logs_held():
  """Holds back orbax's absl log records while it works: a failed save or read logs a long
  traceback per background thread. Re-emitted on success; on failure our one line replaces
  them."""
  logger = logging.getLogger("absl")
  held: list[logging.LogRecord] = []

  class Hold(logging.Filter):
    def filter(self, record):
      held.append(record)
      return False

  f = Hold()
  logger.addFilter(f)
  _silence_failed_io_aftermath()  # before: the aftermath starts while orbax still unwinds
  ok = False
  try:
    yield
    ok = True
  finally:
    if not ok:
      gc.collect()  # orphaned tasks report "exception never retrieved" when collected: now
    logger.removeFilter(f)
    if ok:
      for r in held:
        logger.handle(r)


_silenced = False


def _silence_failed_io_aftermath():
  """After orbax's reads or writes fail, tensorstore completes the sibling operations later,
  into the event loop orbax has closed by then: each one prints "RuntimeError: Event loop is
  closed" through sys.unraisablehook (so do abandoned orbax coroutines when collected), and
  asyncio logs "Task exception was never retrieved" for every orphaned orbax task, long after
  our one-line report. Drops exactly these (installed once, when orbax is first used; all else
  passes through)."""
  global _silenced
  if _silenced:
    return
  _silenced = True
  previous = sys.unraisablehook

  def hook(u):
    if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
      return
    code = getattr(u.object, "cr_code", None)  # an abandoned orbax coroutine, closed by the GC
    if code is not None and "orbax" in code.co_filename:
      return
    previous(u)

  sys.unraisablehook = hook

  class Orphans(logging.Filter):
    def filter(self, record):
      msg = record.getMessage()
      return not ("exception was never retrieved" in msg
                  and ("orbax" in msg or "tensorstore" in msg))

  logging.getLogger("asyncio").addFilter(Orphans())


def _read_error(e: BaseException, step_dir: str) -> str:
  """The informative part of an orbax / tensorstore read error, on one short line."""
  chain = []
  while e is not None and len(chain) < 8:
    chain.append(e)
    e = e.__cause__ or e.__context__
  text = str(chain[-1]) or str(chain[0]) or type(chain[0]).__name__
  for cut in (" [tensorstore_spec=", "See full TensorStore details"):
    text = text.split(cut)[0]
  text = " ".join(text.replace(step_dir + "/", "").split()).rstrip(".")
  # tensorstore nests generic context around the cause; keep the names and the cause.
  text = re.sub(r'Error opening "zarr" driver: |Error reading Byte range \[[^)]*\) of ', "", text)
  text = re.sub(r' in OCDBT database at local file "[^"]*"', "", text)
  return text[:200] + (" ..." if len(text) > 200 else "")


_ERRNO_RE = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")


def _io_errno(e: BaseException) -> int | None:
  """The errno behind an OSError, or behind a tensorstore error that wraps one (tensorstore
  raises ValueError('... [os_error_code=28]'))."""
  while e is not None:
    if isinstance(e, OSError) and e.errno:
      return e.errno
    m = _ERRNO_RE.search(str(e))
    if m:
      return int(m.group(1) or m.group(2))
    e = e.__cause__ or e.__context__
  return None


def _failed_path(e: BaseException) -> str | None:
  """The file an OSError (or a tensorstore error wrapping one) was about."""
  while e is not None:
    if isinstance(e, OSError) and e.filename:
      return os.fspath(e.filename)
    paths = re.findall(r'"(/[^"]+)"', str(e))
    if paths:
      return paths[-1]
    e = e.__cause__ or e.__context__
  return None


def _agree(ok: bool) -> bool:
  """True only if ``ok`` on every process (a collective in multi-process runs)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
  return bool(np.min(flags))


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@dataclasses.dataclass
class _Meta:
  user: dict                  # what the caller saved, plus "step"
  integrity: dict | None      # None: written before integrity checks


@dataclasses.dataclass
class _Arrays:
  """A template state made of plain nested dicts (see :meth:`Checkpointer.read_params`)."""
  step: Any
  params: Any
  opt_state: Any


# ------------------------------------------------------------------------------ Checkpointer
class Checkpointer:
  """Saves / restores ``TrainState`` (trainable part only) under ``directory``.

  ``process_index`` / ``process_count`` default to jax's; they choose which data-state file
  this process writes and reads (tests pass them to simulate processes). ``run_id``: the run
  these checkpoints belong to (prompt_tuning/provenance.py): a step recording another run id is
  unusable, and saved data states are bound to it; None checks nothing.

  Readers and the writer. :meth:`restore` holds a shared flock on the checkpoint directory
  while it picks and reads a step, and the writer deletes old steps only under an exclusive one
  (non-blocking: while a reader reads, deleting waits for a later save). A step is deleted by
  renaming it first, so a reader sees a whole step or none; where flock is unavailable, a
  reader whose step vanished lists the steps again."""

  def __init__(self, directory: str, max_to_keep: int | None = 3, keep_best: bool = False,
               best_metric: str = "perplexity", *, process_index: int | None = None,
               process_count: int | None = None, run_id: str | None = None):
    self.directory = os.path.abspath(directory)
    self.run_id = run_id
    self.max_to_keep, self.keep_best, self.best_metric = max_to_keep, keep_best, best_metric
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if jax.process_index() == 0:
      os.makedirs(self.directory, exist_ok=True)
    _sync("prompt_tuning.checkpoint:init")
    self._handler = ocp.CompositeCheckpointHandler(
        state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler(),
        data_state=DataStateHandler(self.process_index, self.process_count))
    self._ckptr = ocp.Checkpointer(self._handler)
    self._bad: dict[int, str] = {}     # step -> reason (failed verification in this process)
    self._warned: set = set()
    self._meta_cache: dict[int, tuple[tuple, _Meta | str]] = {}

  def bind_run(self, run_id: str | None):
    """Checks the steps against ``run_id`` from now on (see ``run_id`` above)."""
    self.run_id = run_id
    self._meta_cache.clear()

  # ---------------------------------------------------------------------------- listing
  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _step_dirs(self) -> dict[int, str]:
    try:
      names = os.listdir(self.directory)
    except FileNotFoundError:
      return {}
    out = {}
    for n in names:
      # Only plain step numbers; orbax tmp dirs ("12.orbax-checkpoint-tmp") and foreign
      # names are not steps.
      if n.isascii() and n.isdigit() and os.path.isdir(os.path.join(self.directory, n)):
        out.setdefault(int(n), n)
    return out

  def _warn_once(self, key, message: str):
    if key not in self._warned:
      self._warned.add(key)
      _warn(message)

  def _meta_or_reason(self, step: int, name: str) -> _Meta | str:
    d = os.path.join(self.directory, name)
    p = os.path.join(d, "meta", "metadata")
    try:
      st = os.stat(p)
      key = (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
      key = None
    cached = self._meta_cache.get(step)
    if key is not None and cached and cached[0] == key:
      return cached[1]
    try:
      result = self._load_meta(d, p, step)
    except _Corrupt as e:
      result = str(e)
    if key is not None:
      self._meta_cache[step] = (key, result)
    return result

  def _load_meta(self, d: str, p: str, step: int) -> _Meta:
    if not os.path.exists(p):
      try:
        empty = not os.listdir(d)
      except OSError:
        empty = False
      raise _Corrupt("empty directory, not a checkpoint" if empty else
                     "meta/metadata is missing (incomplete checkpoint)")
    try:
      with open(p, "rb") as f:
        stored = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
      raise _Corrupt(f"meta/metadata is unreadable or not JSON ({_short(e, 80)})")
    if not isinstance(stored, dict):
      raise _Corrupt("meta/metadata is not a JSON object")
    integ = stored.pop(_INTEGRITY, None)
    if integ is None:
      if self._has_marker(d) is not False:
        raise _Corrupt("meta/metadata has lost its checksums")
      return _Meta(stored, None)
    if not isinstance(integ, dict) or not isinstance(integ.get("arrays"), dict):
      raise _Corrupt("meta/metadata: malformed integrity record")
    if _meta_sha(dict(stored, **{_INTEGRITY: integ})) != integ.get("meta_sha256"):
      raise _Corrupt("meta/metadata checksum mismatch")
    if not isinstance(integ.get("format"), int) or integ["format"] > FORMAT:
      raise _Corrupt(f"written in checkpoint format {integ.get('format')!r}, newer than this "
                     f"version reads ({FORMAT})")
    if stored.get("step") != step:
      raise _Corrupt(f"meta/metadata is for step {stored.get('step')}")
    theirs = stored.get("run_id")
    if self.run_id and theirs is not None and theirs != self.run_id:
      raise _Corrupt(f"it belongs to another run (run id {str(theirs)[:12]}; this run's is "
                     f"{self.run_id[:12]})")
    return _Meta(stored, integ)

  @staticmethod
  def _has_marker(d: str) -> bool | None:
    """Whether orbax's _CHECKPOINT_METADATA carries our format marker (None: unreadable)."""
    try:
      with open(os.path.join(d, "_CHECKPOINT_METADATA")) as f:
        m = json.load(f)
      return bool((m.get("custom_metadata") or {}).get(_MARKER))
    except (OSError, ValueError, AttributeError):
      return None

  def _scan(self, warn: bool = True) -> dict[int, _Meta]:
    """Steps whose meta verifies (warning once about each numeric directory whose does not)."""
    good = {}
    for step, name in sorted(self._step_dirs().items()):
      r = self._meta_or_reason(step, name)
      if isinstance(r, str):
        if warn:
          self._warn_once(("meta", step, r), f"checkpoint step {step} in {self.directory} is "
                          f"unusable ({r}); ignored")
      elif step not in self._bad:
        good[step] = r
    return good

  def stored_steps(self) -> list[int]:
    """Every step directory with something in it, usable or not: what starting the run over
    would overwrite (training refuses to while there are any)."""
    out = []
    for step, name in sorted(self._step_dirs().items()):
      with contextlib.suppress(OSError):
        if os.listdir(os.path.join(self.directory, name)):
          out.append(step)
    return out

  def all_steps(self) -> list[int]:
    """Steps with a verified meta (ascending), minus steps whose arrays failed verification in
    this Checkpointer. Arrays are verified by :meth:`restore`."""
    return sorted(self._scan())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """The step with the lowest ``best_metric`` (``keep_best``), else the latest step."""
    if not self.keep_best:
      return self.latest_step()
    scored = [(m.integrity["metrics"][self.best_metric], s) for s, m in self._scan().items()
              if m.integrity and self.best_metric in (m.integrity.get("metrics") or {})]
    return min(scored)[1] if scored else None

  # ---------------------------------------------------------------------------- save
  def save(self, state, meta: dict | None = None, metrics: dict | None = None, force=False,
           data_state: bytes | None = None) -> bool:
    """Saves ``state`` as step ``state.step``; returns False (writing nothing) when that step
    already exists and is usable, unless ``force``. An existing step that is unusable, or any
    existing step with ``force``, is replaced only once the new one is complete.

    ``data_state``: this process's data-iterator state (every process passes its own, or all
    pass None). Raises :class:`CheckpointSaveError` when writing fails (disk full...)."""
    step = int(jax.device_get(state.step))
    tree = {"step": np.asarray(jax.device_get(state.step)),
            "params": to_nested(state.params), "opt_state": to_nested(state.opt_state)}
    flat = _flat(tree)
    sums = digests(tree)
    integ = {
        "format": FORMAT,
        # [dtype, shape, digest] per array (lists: LoRA on a large model has many arrays).
        "arrays": {k: [str(np.dtype(v.dtype)), list(np.shape(v)), sums[k]]
                   for k, v in flat.items()},
        "data_state": None if data_state is None else {"process_count": self.process_count},
        "metrics": None if metrics is None else {k: float(v) for k, v in metrics.items()},
    }
    stored = json.loads(json.dumps(dict(meta or {}, step=step)))  # the form read back
    stored[_INTEGRITY] = integ
    integ["meta_sha256"] = _meta_sha(stored)

    final = self._path(step)
    exists = os.path.lexists(final)
    if exists and not force and step in self.all_steps():
      return False
    primary = jax.process_index() == 0
    aside = None
    args = {"state": ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(stored)}
    if data_state is not None:
      args["data_state"] = DataStateSave(bytes(data_state), step, self.run_id)
    try:
      with _orbax_logs_held():
        if primary:
          self._remove_tmp(step)
          if exists:
            aside = f"{final}{_REPLACED_TAG}{uuid.uuid4().hex[:8]}"
            os.rename(final, aside)
        _sync(f"prompt_tuning.checkpoint:save_start:{step}")
        self._ckptr.save(final, args=ocp.args.Composite(**args),
                         custom_metadata={_MARKER: FORMAT})
    except Exception as e:
      err = _io_errno(e)
      if primary:
        self._remove_tmp(step, settle=0.3)
        if aside and not os.path.lexists(final):
          with contextlib.suppress(OSError):
            os.rename(aside, final)
      if err is None:
        raise
      raise self._save_error(step, err, e) from e
    self._bad.pop(step, None)
    self._meta_cache.pop(step, None)
    if primary and aside:
      shutil.rmtree(aside, ignore_errors=True)
    self._collect_garbage()
    return True

  def _save_error(self, step: int, err: int, e: BaseException) -> CheckpointSaveError:
    try:
      earlier = [s for s in self.all_steps() if s != step]
    except OSError:
      earlier = []
    where = _failed_path(e)
    if where and where.startswith(self.directory + "/"):
      where = re.sub(re.escape(_TMP_TAG) + r"[^/]*", "", where[len(self.directory) + 1:])
    kept = (f"earlier checkpoints are intact (latest: step {earlier[-1]})" if earlier else
            "there is no earlier checkpoint")
    return CheckpointSaveError(
        f"could not save checkpoint step {step} in {self.directory}: {os.strerror(err)} "
        f"(errno {err})" + (f" writing {where}" if where else "")
        + f"; nothing of step {step} was kept, {kept}", errno=err)

  def _remove_tmp(self, step: int, settle: float = 0.0):
    """Removes orbax's temporary directories of ``step``. After a failed save, tensorstore
    may still be finishing writes that orbax abandoned (and they recreate directories), so
    with ``settle`` this repeats until nothing has reappeared for that many seconds."""
    prefix = f"{step}{_TMP_TAG}"
    deadline, quiet_since = time.time() + 10 * max(settle, 0.1), time.time()
    while True:
      try:
        names = [n for n in os.listdir(self.directory) if n.startswith(prefix)]
      except OSError:
        return
      for n in names:
        shutil.rmtree(os.path.join(self.directory, n), ignore_errors=True)
      now = time.time()
      if names:
        quiet_since = now
      if now - quiet_since >= settle or now > deadline:
        return
      time.sleep(0.05)

  def _collect_garbage(self):
    """Keeps ``max_to_keep`` steps (the newest, or with ``keep_best`` the best plus the
    newest); only process 0 deletes, and only while no reader holds the readers' lock."""
    if jax.process_index() == 0:
      for n in os.listdir(self.directory):
        head = n.split(".")[0]
        if not head.isdigit():
          continue
        if _DELETED_TAG in n:    # a deletion interrupted by a crash
          shutil.rmtree(os.path.join(self.directory, n), ignore_errors=True)
        elif _REPLACED_TAG in n:  # a replacement interrupted by a crash: keep the old step
          if os.path.lexists(self._path(int(head))):   # ... unless the new one was completed
            shutil.rmtree(os.path.join(self.directory, n), ignore_errors=True)
          else:
            with contextlib.suppress(OSError):
              os.rename(os.path.join(self.directory, n), self._path(int(head)))
      if self.max_to_keep is not None:
        metas = self._scan()
        steps = sorted(metas)
        if self.keep_best:
          def score(s):
            m = (metas[s].integrity or {}).get("metrics") or {}
            return m.get(self.best_metric, float("inf"))
          keep = set(sorted(steps, key=score)[:self.max_to_keep]) | set(steps[-1:])
        else:
          keep = set(steps[-self.max_to_keep:]) if self.max_to_keep > 0 else set()
        doomed = [s for s in steps if s not in keep]
        fd = self._lock_readers(exclusive=True) if doomed else None
        if fd is not False:   # False: a reader is reading; these steps go at a later save
          try:
            for s in doomed:
              gone = f"{self._path(s)}{_DELETED_TAG}{uuid.uuid4().hex[:8]}"
              with contextlib.suppress(OSError):
                os.rename(self._path(s), gone)
                shutil.rmtree(gone, ignore_errors=True)
              self._meta_cache.pop(s, None)
          finally:
            if fd is not None:
              os.close(fd)
    _sync("prompt_tuning.checkpoint:gc")

  def _lock_readers(self, exclusive: bool):
    """flock on the checkpoint directory itself: the fd; None where that is unavailable (no
    flock, or a filesystem that cannot lock directories, e.g. NFS); False when ``exclusive`` and
    a reader holds it (never blocks)."""
    if fcntl is None:
      return None
    try:
      fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
      return None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
      return fd
    except OSError as e:
      os.close(fd)
      if e.errno in (errno_lib.EWOULDBLOCK, errno_lib.EAGAIN, errno_lib.EACCES):
        return False
      return None   # ENOLCK, EBADF, EOPNOTSUPP ...: the readers rely on listing again

  @contextlib.contextmanager
  def _reading(self):
    fd = self._lock_readers(exclusive=False)
    try:
      yield
    finally:
      if fd:
        os.close(fd)

  # ---------------------------------------------------------------------------- read
  def _meta_for(self, step: int) -> _Meta:
    """The verified meta of ``step``: FileNotFoundError when there is no such step directory,
    _Corrupt when its meta does not verify."""
    dirs = self._step_dirs()
    if step not in dirs:
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory!r}; "
                              f"available: {self.all_steps()}")
    r = self._meta_or_reason(step, dirs[step])
    if isinstance(r, str):
      raise _Corrupt(r)
    return r

  def _unusable(self, step: int, reason) -> CheckpointError:
    return CheckpointError(f"checkpoint step {step} in {self.directory} is unusable ({reason})")

  def _newest_first(self) -> list[int]:
    """Usable-looking steps, newest first; raises when there are none (one error naming each
    step and why, without a warning line per step first)."""
    if self._scan(warn=False):
      return self.all_steps()[::-1]
    reasons = dict(self._bad)
    for step, name in self._step_dirs().items():
      r = self._meta_or_reason(step, name)
      if isinstance(r, str):
        reasons[step] = r
    if not reasons:
      raise FileNotFoundError(f"no checkpoint found in {self.directory!r}")
    raise CheckpointError(f"no usable checkpoint in {self.directory}: " + "; ".join(
        f"step {s}: {r}" for s, r in sorted(reasons.items(), reverse=True)))

  def read_meta(self, step: int | None = None) -> dict:
    """The caller's meta (plus "step") of ``step`` (default: the newest step whose meta
    verifies). Only the meta is verified here; arrays are verified by :meth:`restore`."""
    for _ in range(_LIST_AGAIN):
      at = self._newest_first()[0] if step is None else step
      try:
        m = self._meta_for(at)
      except _Corrupt as e:
        raise self._unusable(at, e) from None
      except FileNotFoundError:
        if step is None:
          continue   # deleted by a writer since it was listed: list again
        raise
      self._warn_legacy(m)
      return copy.deepcopy(m.user)
    raise CheckpointError(f"could not read a checkpoint in {self.directory}: its steps were "
                          f"deleted while being read, {_LIST_AGAIN} times")

  def _warn_legacy(self, m: _Meta):
    if m.integrity is None:
      s = m.user.get("step")
      self._warn_once(("legacy", s), f"checkpoint step {s} in {self.directory} has no checksums "
                      f"(written before integrity checks); used unverified")

  def restore(self, template_state, step: int | None = None, *, with_data_state: bool = False):
    """Restores into the structure (and shardings) of ``template_state``.

    Returns (state, meta), or (state, meta, data_state) with ``with_data_state`` (this
    process's blob; None when the step has none). Without ``step``, the newest usable step is
    restored: each newer step that fails verification is reported in one warning line. With
    ``step``, that step or a :class:`CheckpointError`."""
    tmpl = {"step": np.asarray(0, np.int32), "params": to_nested(template_state.params),
            "opt_state": to_nested(template_state.opt_state)}
    with self._reading():
      for _ in range(_LIST_AGAIN):
        for s in self._newest_first() if step is None else [step]:
          try:
            m = self._meta_for(s)
            raw, blob = self._restore_verified(s, m, tmpl, with_data_state)
          except (_Corrupt, FileNotFoundError) as e:
            if not os.path.isdir(self._path(s)) and (step is None or isinstance(e, _Corrupt)):
              # Deleted while we read it (by the run writing here, where flock is unavailable).
              if step is not None:
                raise CheckpointError(f"checkpoint step {s} in {self.directory} was deleted "
                                      f"while being read (the run writing there keeps only its "
                                      f"newest steps); read a newer step") from None
              break   # list the steps again
            if isinstance(e, FileNotFoundError):
              raise
            self._bad[s] = str(e)
            if step is not None:
              raise self._unusable(s, e) from None
            rest = self.all_steps()
            _warn(f"checkpoint step {s} in {self.directory} is unusable ({e}); "
                  + (f"falling back to step {rest[-1]}" if rest else "no earlier checkpoint"))
            continue
          params = from_nested(template_state.params, raw["params"], f"checkpoint step {s}")
          opt_state = from_nested(template_state.opt_state, raw["opt_state"],
                                  f"checkpoint step {s}")
          state = type(template_state)(step=jnp.asarray(raw["step"], jnp.int32), params=params,
                                       opt_state=opt_state)
          meta = copy.deepcopy(m.user)
          return (state, meta, blob) if with_data_state else (state, meta)
        # Every listed step failed or one vanished: list again (a writer may have saved a newer
        # step meanwhile); _newest_first raises, naming each step and why, when none is left.
    raise CheckpointError(f"could not read a checkpoint in {self.directory}: its steps were "
                          f"deleted while being read, {_LIST_AGAIN} times")

  def read_params(self, step: int | None = None) -> dict:
    """The trainable params of ``step`` (default: the newest usable step, falling back as
    :meth:`restore` does) as a nested dict of numpy arrays, without a template: the structure,
    shapes and dtypes come from the step's integrity record. For reading another run's state
    (prompt transfer); checkpoints from before integrity records cannot be read this way."""
    at = self._newest_first()[0] if step is None else step
    try:
      rec = self._meta_for(at).integrity
    except _Corrupt as e:
      raise self._unusable(at, e) from None
    if rec is None:
      raise CheckpointError(f"{self.directory}: checkpoint without integrity records; restore "
                            f"it with a template state instead")
    tree: dict = {}
    for key, (dtype, shape, _) in rec["arrays"].items():
      node, parts = tree, key.split("/")
      for k in parts[:-1]:
        node = node.setdefault(k, {})
      node[parts[-1]] = np.zeros(shape, dtype)
    state, _ = self.restore(_Arrays(step=tree["step"], params=tree.get("params", {}),
                                    opt_state=tree.get("opt_state", {})), step)
    return jax.tree.map(np.asarray, state.params)

  def _restore_verified(self, step: int, m: _Meta, tmpl: dict, with_data_state: bool):
    d = self._path(step)
    what = f"checkpoint {d}"
    flat_t = _flat(tmpl)
    if m.integrity is None:
      self._warn_legacy(m)
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
          np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), tmpl)
      try:
        with _orbax_logs_held():
          raw = self._read_state(d, abstract)
      except (ValueError, KeyError) as e:  # without a record, a mismatch looks like this
        raise ValueError(f"{what} does not match this model, tuning method or optimizer: "
                         f"{_short(e, 300)}") from e
      except Exception as e:
        raise _Corrupt(f"arrays unreadable: {_read_error(e, d)}")
      return raw, None

    rec = m.integrity["arrays"]
    missing = sorted(set(flat_t) - set(rec))
    extra = sorted(set(rec) - set(flat_t))
    if missing or extra:
      detail = (f"it has no entry for {missing[0]}" if missing else
                f"it has an entry {extra[0]} this model lacks")
      raise ValueError(f"{what} does not match this model, tuning method or optimizer: {detail} "
                       f"(it was written for a different model or tuning method)")
    for k in sorted(flat_t, key=lambda k: (not k.startswith("params/"), k)):  # params first
      t = flat_t[k]
      if tuple(rec[k][1]) != tuple(np.shape(t)):
        raise ValueError(f"{what} does not match this model, tuning method or optimizer: shape "
                         f"mismatch at {k}: stored {tuple(rec[k][1])}, expected "
                         f"{tuple(np.shape(t))}")

    def abstract(path, x):
      k = "/".join(_key(p) for p in path)
      return jax.ShapeDtypeStruct(np.shape(x), np.dtype(rec[k][0]),
                                  sharding=getattr(x, "sharding", None))

    abstract_tree = jax.tree_util.tree_map_with_path(abstract, tmpl)
    raw, err = None, None
    try:
      with _orbax_logs_held():
        raw = self._read_state(d, abstract_tree)
    except Exception as e:  # corrupt, truncated, missing files: orbax / tensorstore errors
      err = f"arrays unreadable: {_read_error(e, d)}"
    if not _agree(err is None):
      raise _Corrupt(err or "arrays unreadable on another process")
    got = digests(raw)
    for k in sorted(rec):
      if got.get(k) != rec[k][2]:
        raise _Corrupt(f"array {k}: checksum mismatch")
    # Stored in another dtype than the template's (e.g. a bf16 template): cast after checking.
    raw = jax.tree.map(lambda x, t: x if x.dtype == t.dtype else x.astype(t.dtype), raw, tmpl)

    blob, err = None, None
    ds = m.integrity.get("data_state")
    if with_data_state and ds:
      if ds.get("process_count") != self.process_count:
        raise CheckpointError(
            f"{what} holds data-iterator states of {ds.get('process_count')} processes; this "
            f"run has {self.process_count}, so they cannot be restored")
      try:
        blob = self._handler_restore_data_state(d, step)
      except _Corrupt as e:
        err = str(e)
      except OSError as e:
        err = (f"data_state/{data_state_name(self.process_index, self.process_count)} is "
               f"missing or unreadable ({_short(e, 80)})")
      if not _agree(err is None):
        raise _Corrupt(err or "the data state of another process is unusable")
    return raw, blob

  def _read_state(self, d: str, abstract_tree):
    # The handler directly, not orbax's Checkpointer.restore: that one ends in a barrier that
    # a process whose read failed would never reach; we agree on the verdict instead.
    out = self._handler.restore(
        epath.Path(d), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree)))
    return out["state"]

  def _handler_restore_data_state(self, d: str, step: int) -> bytes:
    h = DataStateHandler(self.process_index, self.process_count)
    return h.restore(os.path.join(d, "data_state"), DataStateRestore(step, self.run_id))

  def close(self):
    self._ckptr.close()
