"""Sparse fine-tuning diffs and tuned-vs-pretrained distances (Radiya-Dixit & Wang 2020).

* :func:`param_distances` / :func:`per_layer`: L2, relative L2 and angle between tuned and
  pre-trained weights, per parameter and per layer (block).
* :func:`sparsify` keeps, in every tuned matrix, the fraction of entries whose change is largest
  in magnitude and stores only those (flat indices + values); :func:`apply_diff` rebuilds the
  tuned weights from the pre-trained ones. ``save_diff`` / ``load_diff`` write it as ``.npz``.
"""
from __future__ import annotations

import os
import re

import jax
import numpy as np


def _flat(tree) -> dict[str, np.ndarray]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    keys = [k for k in keys if k != "value"]
    out[".".join(keys)] = np.asarray(leaf, np.float32)
  return out


def param_distances(pretrained, tuned) -> list[dict]:
  """One row per tuned parameter (paths present in both trees)."""
  pre, tun = _flat(pretrained), _flat(tuned)
  rows = []
  for path in sorted(set(pre) & set(tun)):
    a, b = pre[path].ravel().astype(np.float64), tun[path].ravel().astype(np.float64)
    if a.shape != b.shape:
      raise ValueError(f"{path}: shapes differ {pre[path].shape} vs {tun[path].shape}")
    diff = np.linalg.norm(b - a)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else 1.0
    rows.append({"path": path, "l2": float(diff), "rel_l2": float(diff / na) if na > 0 else 0.0,
                 "angle_deg": float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))),
                 "numel": int(a.size), "norm_pre": float(na), "norm_tuned": float(nb)})
  if not rows:
    raise ValueError("the two parameter trees share no parameter paths")
  return rows


def layer_of(path: str) -> str:
  m = re.match(r"((?:encoder\.|decoder\.)?(?:blocks|layers)\.\d+)\.", path)
  return m.group(1) if m else path.split(".")[0]


def per_layer(rows: list[dict]) -> dict[str, dict]:
  """Aggregates rows by layer: L2 of the concatenated change, relative to the layer's norm, and
  the angle between the layer's concatenated pre-trained and tuned weights."""
  out: dict[str, dict] = {}
  for r in rows:
    g = out.setdefault(layer_of(r["path"]), {"sq_diff": 0.0, "sq_pre": 0.0, "sq_tuned": 0.0,
                                             "dot": 0.0, "numel": 0})
    na = r.get("norm_pre", r["l2"] / r["rel_l2"] if r["rel_l2"] > 0 else 0.0)
    nb = r.get("norm_tuned", na)
    g["sq_diff"] += r["l2"] ** 2
    g["sq_pre"] += na ** 2
    g["sq_tuned"] += nb ** 2
    g["dot"] += na * nb * np.cos(np.radians(r["angle_deg"]))
    g["numel"] += r["numel"]
  res = {}
  for k, v in out.items():
    norms = (v["sq_pre"] * v["sq_tuned"]) ** 0.5
    cos = v["dot"] / norms if norms > 0 else 1.0
    res[k] = {"l2": v["sq_diff"] ** 0.5,
              "rel_l2": (v["sq_diff"] / v["sq_pre"]) ** 0.5 if v["sq_pre"] > 0 else 0.0,
              "angle_deg": float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))),
              "numel": v["numel"]}
  return res


def sparsify(pretrained, tuned, fraction: float) -> dict[str, tuple]:
  """{path: (flat_indices int64, values float32, shape)} keeping ``fraction`` of each matrix's
  entries with the largest |tuned - pretrained| (ties broken by index order)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  pre, tun = _flat(pretrained), _flat(tuned)
  out = {}
  for path in sorted(set(pre) & set(tun)):
    delta = (tun[path] - pre[path]).ravel()
    k = max(1, int(round(fraction * delta.size)))
    idx = np.sort(np.argsort(-np.abs(delta), kind="stable")[:k])
    out[path] = (idx.astype(np.int64), delta[idx].astype(np.float32), pre[path].shape)
  return out


def apply_diff(pretrained, diff: dict[str, tuple]):
  """Pre-trained tree + sparse diff -> tuned tree (same structure as ``pretrained``)."""
  paths = list(_flat(pretrained))
  leaves, treedef = jax.tree_util.tree_flatten(pretrained)
  new = []
  for path, leaf in zip(paths, leaves):
    arr = np.array(leaf, np.float32)
    if path in diff:
      idx, vals, shape = diff[path]
      if tuple(shape) != arr.shape:
        raise ValueError(f"{path}: diff shape {tuple(shape)} != parameter shape {arr.shape}")
      flat = arr.ravel()
      flat[idx] += vals
      arr = flat.reshape(arr.shape)
    new.append(arr.astype(np.asarray(leaf).dtype))
  return jax.tree_util.tree_unflatten(treedef, new)


def save_diff(path: str, diff: dict[str, tuple]):
  arrays = {}
  for p, (idx, vals, shape) in diff.items():
    arrays[f"{p}|idx"], arrays[f"{p}|val"] = idx, vals
    arrays[f"{p}|shape"] = np.asarray(shape, np.int64)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def load_diff(path: str) -> dict[str, tuple]:
  z = np.load(path)
  names = {k.rsplit("|", 1)[0] for k in z.files}
  return {n: (z[f"{n}|idx"], z[f"{n}|val"], tuple(z[f"{n}|shape"])) for n in names}


def sparsify_run(config, fraction: float, step: int | None = None) -> dict:
  """For a finished run (``config.output_dir``): per-layer distances to the pre-trained weights
  (``distances.json``), the sparse diff keeping ``fraction`` of each matrix's entries
  (``sparse_diff.npz``, the only artifact needed besides the frozen model), and dev metrics of
  the dense and the sparsified model."""
  import json
  from prompt_tuning import checkpoint as ckpt_lib
  from prompt_tuning.run import build, evaluate
  exp = build.build(config)
  template = exp.trainer.init_state()
  pre = jax.tree.map(np.asarray, template.params)  # the tuned variables' starting values
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"))
  state, _ = ckpt.restore(template, step)
  ckpt.close()
  rows = param_distances(pre, state.params)
  diff = sparsify(pre, state.params, fraction)
  out = config.output_dir
  save_diff(os.path.join(out, "sparse_diff.npz"), diff)
  sparse_params = apply_diff(pre, diff)
  report = {
      "fraction": fraction, "step": int(state.step),
      "kept_entries": int(sum(len(v[0]) for v in diff.values())),
      "total_entries": int(sum(r["numel"] for r in rows)),
      "per_layer": per_layer(rows), "per_parameter": rows,
      "eval_dense": evaluate.evaluate_all(exp, state.params),
      "eval_sparse": evaluate.evaluate_all(exp, sparse_params),
  }
  with open(os.path.join(out, "distances.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def main(argv=None):
  """python -m prompt_tuning.analysis.sparse --config CFG --config.output_dir RUN --fraction F"""
  import json
  import sys
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", os.path.join(os.path.dirname(__file__), "..",
                                                         "default_config.py"),
                                  "the run's config", flag_values=fv, lock_config=True)
  flags.DEFINE_float("fraction", 0.1, "fraction of each matrix's entries to keep", flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: latest)", flag_values=fv)
  fv(list(sys.argv if argv is None else argv))
  rep = sparsify_run(fv.config, fv.fraction, fv.step)
  print(json.dumps({k: rep[k] for k in ("fraction", "step", "kept_entries", "total_entries",
                                        "per_layer", "eval_dense", "eval_sparse")}, indent=1))


if __name__ == "__main__":
  main()
