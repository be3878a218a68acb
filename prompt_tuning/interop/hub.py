"""Hugging Face Hub model ids (``google/t5-v1_1-base``, ``gpt2``, ``org/name@revision``) resolved
through the local Hugging Face cache only: this library never downloads.

The cache is ``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``, read at call time (so a test or a job can point it elsewhere after
``huggingface_hub`` was imported). Its layout is huggingface_hub's:
``models--org--name/refs/<branch>`` holds a commit hash, ``models--org--name/snapshots/<hash>/``
the files. ``huggingface_hub.snapshot_download(..., local_files_only=True)`` resolves it when
installed; otherwise the same lookup is done here.
"""
from __future__ import annotations

import os
import re

# An id as the Hub spells it: "name" or "org/name", optionally "@revision". Paths that start with
# "/", "." or "~", or have more than one "/", are never ids.
_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?)"
                 r"(?:@(?P<rev>[A-Za-z0-9][\w./-]*))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


def cache_dir() -> str:
  env = os.environ
  for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    if env.get(key):
      return os.path.expanduser(env[key])
  home = env.get("HF_HOME") or os.path.join(
      env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
  return os.path.join(os.path.expanduser(home), "hub")


def is_hub_id(path: str) -> bool:
  """True for a string that is no existing path and reads as a Hub model id."""
  return bool(path) and not os.path.exists(path) and _ID.match(path) is not None


def _split(model_id: str) -> tuple[str, str | None]:
  m = _ID.match(model_id)
  return m.group("repo"), m.group("rev")


def _lookup(repo: str, revision: str | None, cache: str) -> str | None:
  """The snapshot directory of ``repo`` at ``revision`` (branch, tag or commit) in ``cache``."""
  base = os.path.join(cache, "models--" + repo.replace("/", "--"))
  rev = revision or "main"
  if _SHA.match(rev):
    commit = rev
  else:
    ref = os.path.join(base, "refs", rev)
    if not os.path.isfile(ref):
      return None
    with open(ref) as f:
      commit = f.read().strip()
  snap = os.path.join(base, "snapshots", commit)
  return snap if os.path.isdir(snap) else None


def _snapshot_download(repo: str, revision: str | None, cache: str) -> str | None:
  try:
    import huggingface_hub
  except ImportError:
    return _lookup(repo, revision, cache)
  try:
    return huggingface_hub.snapshot_download(repo, revision=revision, cache_dir=cache,
                                             local_files_only=True)
  except Exception:  # LocalEntryNotFoundError, a revision that is not cached, a bad id ...
    return None


def resolve(path: str) -> str:
  """A local checkpoint directory for ``path``: the path itself when it exists or is no Hub id,
  else the cached snapshot of that model id. A missing snapshot is one clear error naming the id
  and the cache directory."""
  if not is_hub_id(path):
    return path
  repo, revision = _split(path)
  cache = cache_dir()
  snap = _snapshot_download(repo, revision, cache)
  if snap is None:
    at = f" at revision {revision!r}" if revision else ""
    raise FileNotFoundError(
        f"checkpoint {path!r} is not a directory, and model id {repo!r}{at} is not in the local "
        f"Hugging Face cache {cache} (set by HF_HUB_CACHE / HF_HOME); this library never "
        f"downloads: fetch it first, e.g. `hf download {repo}"
        f"{f' --revision {revision}' if revision else ''}` (huggingface_hub's CLI)")
  return snap


def reference(path: str) -> str:
  """How a run records its frozen model: the id as given for Hub ids, else the absolute path."""
  return path if is_hub_id(path) else os.path.abspath(path)
