"""Where a checkpoint comes from: the run it belongs to and the frozen model it was trained on.

Run identity. A run gets a random id when it starts (``<output_dir>/run_identity.json``, kept
for every resume); every checkpoint step stores it in its verified metadata next to its step
number, and every data-iterator state is bound to its (run id, step). A step copied in from
another run, or a data state copied from another step, is then unusable like a corrupt one: the
newest step of this run is used instead, with one warning line (see prompt_tuning/checkpoint.py).
Checkpoints from before run ids are not checked; a run directory without an identity file
adopts its newest checkpoint's id when training resumes.

Frozen model. The tuning checkpoints reference the frozen model by path; its content is recorded
too: name, size and sha256 of every file the loader reads (weights, config and tokenizer files).
A file's hash is computed once and cached under ``$PROMPT_TUNING_CACHE/fingerprints``, keyed by
its real path, size and mtime (not next to the weights: model directories are often read-only,
the Hugging Face cache or an installed package). Resuming, ``eval``, ``infer`` and ``export``
refuse a frozen model whose files differ from the recorded ones, naming each file; a
deliberately changed base model is ``--allow_changed=model.hf_checkpoint``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import uuid

from prompt_tuning.events import warn as _warn

RUN_FILE = "run_identity.json"
# What the model loaders and tokenizers read from a checkpoint directory.
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt")


def _write_json_atomic(path: str, obj):
  d = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


# ------------------------------------------------------------------------------ run identity
def read_run_id(output_dir: str) -> str | None:
  """The run id recorded in ``output_dir`` (None: no identity file, a run from before them)."""
  try:
    with open(os.path.join(output_dir, RUN_FILE)) as f:
      rid = json.load(f).get("run_id")
  except FileNotFoundError:
    return None
  except (OSError, ValueError, AttributeError) as e:
    raise ValueError(f"{os.path.join(output_dir, RUN_FILE)} is unreadable ({e}); it records "
                     f"which run the checkpoints belong to: restore it, or delete it to let "
                     f"the run take the id of its newest checkpoint") from None
  if not isinstance(rid, str) or not rid:
    raise ValueError(f"{os.path.join(output_dir, RUN_FILE)} holds no run id")
  return rid


def ensure_run_id(output_dir: str, newest_meta) -> str:
  """This training run's id: the recorded one, else (identity file missing) the id in
  ``newest_meta()`` (the newest checkpoint's meta, or None), else a new one. Decided and
  recorded by process 0; the same on every process."""
  rid, error = "", None
  if _process_index() == 0:
    try:
      rid = read_run_id(output_dir)
      if rid is None:
        meta = newest_meta() or {}
        rid = meta.get("run_id")
        if rid:
          _warn(f"{os.path.join(output_dir, RUN_FILE)} is missing; this run takes the id of its "
                f"newest checkpoint (step {meta.get('step')})")
        else:
          rid = uuid.uuid4().hex
        os.makedirs(output_dir, exist_ok=True)
        _write_json_atomic(os.path.join(output_dir, RUN_FILE), {"run_id": rid})
    except (OSError, ValueError) as e:   # still broadcast: the other processes are waiting
      rid, error = "", e
  rid = _broadcast_text(rid)
  if error is not None:
    raise error
  if not rid:
    raise ValueError(f"process 0 could not read or record the run id in {output_dir} (its "
                     f"error is in process 0's output)")
  return rid


def _process_index() -> int:
  jax = sys.modules.get("jax")
  return jax.process_index() if jax else 0


def _broadcast_text(text: str) -> str:
  """Process 0's ``text`` on every process (identity in single-process runs)."""
  jax = sys.modules.get("jax")
  if jax is None or jax.process_count() == 1:
    return text
  import numpy as np
  from jax.experimental import multihost_utils
  buf = np.zeros(256, np.uint8)
  raw = text.encode()[:256]
  buf[:len(raw)] = np.frombuffer(raw, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8)
  return bytes(out).rstrip(b"\0").decode()


# ------------------------------------------------------------------------------ frozen model
def _cache_path(directory: str) -> str:
  from prompt_tuning.data.vocab import default_cache_dir
  key = hashlib.sha1(os.path.realpath(directory).encode()).hexdigest()[:20]
  return os.path.join(default_cache_dir(), "fingerprints", f"{key}.json")


def _sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def fingerprint_dir(directory: str) -> dict:
  """{"files": {name: {"size", "sha256"}}} of the model files in ``directory`` (hashes from
  the cache when a file's real path, size and mtime are unchanged)."""
  cache_file = _cache_path(directory)
  try:
    with open(cache_file) as f:
      cache = json.load(f)
  except (OSError, ValueError):
    cache = {}
  if not isinstance(cache, dict):   # valid JSON of another shape: a cache to rebuild
    cache = {}
  files, fresh = {}, {}
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.startswith(".") or not name.endswith(MODEL_SUFFIXES) or not os.path.isfile(path):
      continue
    st = os.stat(path)
    real = os.path.realpath(path)
    hit = cache.get(real)
    digest = hit[2] if isinstance(hit, list) and len(hit) == 3 and \
        hit[:2] == [st.st_size, st.st_mtime_ns] else _sha256_file(path)
    fresh[real] = [st.st_size, st.st_mtime_ns, digest]
    files[name] = {"size": st.st_size, "sha256": digest}
  if fresh != cache:
    try:
      os.makedirs(os.path.dirname(cache_file), exist_ok=True)
      _write_json_atomic(cache_file, fresh)
    except OSError:
      pass  # a read-only cache only costs hashing again next time
  return {"files": files}


def model_fingerprint(config) -> dict | None:
  """The frozen model's files by content, or None when there are none (a random-init preset or
  ``model.random_init``: the weights come from the seed, which the config records)."""
  m = config.model
  if not m.hf_checkpoint or m.random_init:
    return None
  from prompt_tuning.interop import hub
  return fingerprint_dir(hub.resolve(m.hf_checkpoint))


def model_changes(stored: dict, current: dict) -> list[str]:
  """What differs between two fingerprints, one phrase per file."""
  a, b = stored.get("files", {}), current.get("files", {})
  out = []
  for name in sorted(set(a) | set(b)):
    if name not in b:
      out.append(f"{name} is gone")
    elif name not in a:
      out.append(f"{name} is new")
    elif a[name] != b[name]:
      size = ("" if a[name]["size"] == b[name]["size"] else
              f", size {a[name]['size']:,} -> {b[name]['size']:,} bytes")
      out.append(f"{name} changed (sha256 {a[name]['sha256'][:12]} -> "
                 f"{b[name]['sha256'][:12]}{size})")
  return out


def check_model(meta: dict, config, allow_changed=(), what: str = "resume"):
  """Refuses to ``what`` when the frozen model's files are not those the checkpoint was trained
  on (skipped for checkpoints from before fingerprints, and when the base model is changed on
  purpose: ``allow_changed`` has model.hf_checkpoint or all)."""
  stored = meta.get("model_files")
  if not stored or {"all", "model.hf_checkpoint"} & set(allow_changed):
    return
  current = model_fingerprint(config)
  changes = model_changes(stored, current or {"files": {}})
  if changes:
    raise ValueError(f"cannot {what}: the frozen model {config.model.hf_checkpoint} is not the "
                     f"one the run in {config.output_dir} was trained on: " + "; ".join(changes)
                     + ". Restore the original files, or pass --allow_changed=model.hf_checkpoint "
                       "if the new base model is deliberate")
