"""Soft prompts as plain files.

Layout: one float32 array ``[length, d_model]``, row i the i-th virtual token (the first row
sits first in front of the input), written twice:

* ``prompt.npy`` (numpy), and
* ``prompt.safetensors``: one tensor named ``prompt`` (its ``__metadata__`` repeats the sidecar),

next to ``prompt.json``, the sidecar: ``{"format": "prompt-tuning-jax/soft-prompt", "version": 1,
"length", "d_model", "dtype": "float32", "base_model": {"hf_checkpoint": ...} or {"preset",
"init_seed"}, "family", "model_type", "architecture", "step", "method": {...}}``.

``load_prompt`` reads any of them: a directory holding them, a ``.npy``, or a ``.safetensors``
file with a ``prompt`` tensor (or a single tensor).
"""
from __future__ import annotations

import json
import os

import numpy as np

FORMAT = "prompt-tuning-jax/soft-prompt"
VERSION = 1


def save_prompt(prompt, out_dir: str, info: dict | None = None) -> list[str]:
  """Writes prompt.npy, prompt.safetensors and prompt.json into ``out_dir``; returns the paths."""
  from safetensors.numpy import save_file
  prompt = np.ascontiguousarray(np.asarray(prompt, np.float32))
  if prompt.ndim != 2:
    raise ValueError(f"a soft prompt is [length, d_model]; got shape {prompt.shape}")
  os.makedirs(out_dir, exist_ok=True)
  meta = dict(info or {}, format=FORMAT, version=VERSION, length=int(prompt.shape[0]),
              d_model=int(prompt.shape[1]), dtype="float32")
  paths = [os.path.join(out_dir, n) for n in ("prompt.npy", "prompt.safetensors", "prompt.json")]
  _atomic(paths[0], lambda p: np.save(p, prompt))
  _atomic(paths[1], lambda p: save_file({"prompt": prompt}, p, metadata={
      k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}))
  _atomic(paths[2], lambda p: open(p, "w").write(json.dumps(meta, indent=1, sort_keys=True)))
  return paths


def _atomic(path: str, write):
  tmp = f"{path}.tmp{os.getpid()}"
  if path.endswith(".npy"):
    tmp += ".npy"   # np.save appends .npy to names without it
  write(tmp)
  os.replace(tmp, path)


def load_prompt(path: str) -> tuple[np.ndarray, dict]:
  """(prompt [length, d_model] float32, sidecar info or {})."""
  info: dict = {}
  if os.path.isdir(path):
    sidecar = os.path.join(path, "prompt.json")
    if os.path.exists(sidecar):
      with open(sidecar) as f:
        info = json.load(f)
    for name in ("prompt.safetensors", "prompt.npy"):
      if os.path.exists(os.path.join(path, name)):
        path = os.path.join(path, name)
        break
    else:
      raise FileNotFoundError(f"{path!r} holds no prompt.safetensors or prompt.npy")
  elif not os.path.exists(path):
    raise FileNotFoundError(f"prompt file {path!r} does not exist")
  if path.endswith(".npy"):
    try:
      value = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f"{path}: not a readable .npy file ({e})") from e
  elif path.endswith(".safetensors"):
    from safetensors import SafetensorError, safe_open
    try:
      with safe_open(path, framework="numpy") as f:
        keys = list(f.keys())
        if "prompt" in keys:
          key = "prompt"
        elif len(keys) == 1:
          key = keys[0]
        else:
          raise ValueError(f"{path}: no 'prompt' tensor among {keys}")
        value = f.get_tensor(key)
        meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
      raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if not info and meta.get("format") == FORMAT:
      info = {k: _maybe_json(v) for k, v in meta.items()}
  else:
    raise ValueError(f"{path!r}: a prompt file is .npy or .safetensors (or a directory of them)")
  if value.ndim != 2 or not np.issubdtype(value.dtype, np.floating):
    raise ValueError(f"{path}: a soft prompt is a float [length, d_model] array; got "
                     f"{value.dtype} {value.shape}")
  return value.astype(np.float32), info


def _maybe_json(v: str):
  try:
    return json.loads(v)
  except (json.JSONDecodeError, TypeError):
    return v
