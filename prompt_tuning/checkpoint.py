"""orbax checkpoints of the trainable state only.

A checkpoint holds the trainable params, the optimizer state and the step (plus JSON metadata:
method, model reference, config). The frozen model is *referenced* (by path or preset name in
the metadata), never stored. orbax writes each step into a temporary directory and renames it
when complete, so an interrupted save never leaves a checkpoint that looks valid.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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


class Checkpointer:
  """Saves / restores ``TrainState`` (trainable part only) under ``directory``."""

  def __init__(self, directory: str, max_to_keep: int | None = 3, keep_best: bool = False,
               best_metric: str = "perplexity"):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        best_fn=(lambda m: m[best_metric]) if keep_best else None,
        best_mode="min", keep_checkpoints_without_metrics=not keep_best)
    self.manager = ocp.CheckpointManager(self.directory, options=opts,
                                         item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, state, meta: dict | None = None, metrics: dict | None = None, force=False):
    step = int(jax.device_get(state.step))
    tree = {"step": np.asarray(jax.device_get(state.step)),
            "params": to_nested(state.params), "opt_state": to_nested(state.opt_state)}
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(dict(meta or {}, step=step))),
        metrics=metrics, force=force)
    self.manager.wait_until_finished()
    return saved

  def read_meta(self, step: int | None = None) -> dict:
    step = self._resolve(step)
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def _resolve(self, step):
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint found in {self.directory!r}")
    if step not in self.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory!r}; "
                              f"available: {self.all_steps()}")
    return step

  def restore(self, template_state, step: int | None = None):
    """Restores into the structure (and shardings) of ``template_state``; returns
    (state, meta)."""
    step = self._resolve(step)
    tmpl = {"step": np.asarray(0, np.int32), "params": to_nested(template_state.params),
            "opt_state": to_nested(template_state.opt_state)}

    def abstract(x):
      sh = getattr(x, "sharding", None)
      return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh)

    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(jax.tree.map(abstract, tmpl)),
          meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError) as e:
      detail = " ".join(str(e).split())
      detail = detail[:300] + (" ..." if len(detail) > 300 else "")
      raise ValueError(f"checkpoint {self.directory}/{step} does not match this model, tuning "
                       f"method or optimizer: {detail}") from e
    raw = out["state"]
    params = from_nested(template_state.params, raw["params"], f"checkpoint step {step}")
    opt_state = from_nested(template_state.opt_state, raw["opt_state"], f"checkpoint step {step}")
    state = type(template_state)(step=jax.numpy.asarray(raw["step"], jax.numpy.int32),
                                 params=params, opt_state=opt_state)
    return state, out["meta"]

  def close(self):
    self.manager.close()
