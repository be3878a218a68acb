"""(IA)^3 (Liu et al. 2022): learned vectors, initialised to ones, that rescale the keys and values
of every attention (self and cross) and the feed-forward intermediate activation. Attached through
the core's ``Dense.adapter`` hook and targeted by projection role: "q", "k", "v", "o" and "mlp_in"
rescale the projection's output (bias included, as PEFT), "mlp_out" rescales its input (the
feed-forward activation; PEFT's ``feedforward_modules``).

PEFT's default targets per family, as ``targets`` here (parity-tested on the same weights):
T5 ``k, v, wo`` = ("k", "v", "mlp_out") (the default); mT5 ``k, v, wi_1`` (output of the gated
branch) is the same product as ("k", "v", "mlp_out"); BART ``q_proj, v_proj, fc2`` =
("q", "v", "mlp_out"); GPT-2 ``c_attn, mlp.c_proj`` = ("q", "k", "v", "mlp_out"); Llama
``k_proj, v_proj, down_proj`` = the default. :func:`from_peft` reads PEFT's ``ia3_l`` weights.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.methods.base import Method, MethodConfig, register
from prompt_tuning.models import core


class IA3Param(nnx.Param):
  """An (IA)^3 rescaling vector."""


core.METHOD_PARAM_KINDS.append(IA3Param)

TARGETS = ("q", "k", "v", "o", "mlp_in", "mlp_out")
INPUT_SCALED = ("mlp_out",)


@dataclasses.dataclass(frozen=True)
class IA3Config(MethodConfig):
  targets: tuple[str, ...] = ("k", "v", "mlp_out")   # rescaled: q, k, v, o, mlp_in, mlp_out

  def validate(self):
    bad = sorted(set(self.targets) - set(TARGETS))
    if bad or not self.targets:
      raise ValueError(f"unknown ia3 targets {bad}; choose from {TARGETS}")


class IA3Adapter(nnx.Module):
  """``base(x) * l`` (output scaling) or ``base(x * l)`` (input scaling), l initialised to 1."""

  def __init__(self, dense: core.Dense, input_scaled: bool):
    self.input_scaled = input_scaled
    shape, axes = (dense.in_shape, dense.in_axes) if input_scaled else \
        (dense.out_shape, dense.out_axes)
    self.scale = IA3Param(jnp.ones(shape, jnp.float32), axes=axes)

  def __call__(self, dense: core.Dense, x):
    s = self.scale[...].astype(dense.dtype)
    if self.input_scaled:
      return dense.base(x.astype(dense.dtype) * s)
    return dense.base(x) * s


def targets(model, cfg: IA3Config):
  for path, mod in nnx.iter_modules(model):
    if isinstance(mod, core.Dense) and mod.role in cfg.targets:
      yield path, mod


class IA3(Method):
  name = "ia3"
  Config = IA3Config

  def attach(self, model, cfg, tokenize=None):
    n = 0
    for path, dense in targets(model, cfg):
      if dense.adapter is not None:
        raise ValueError(f"{'.'.join(map(str, path))} already has an adapter")
      dense.adapter = IA3Adapter(dense, dense.role in INPUT_SCALED)
      n += 1
    if n == 0:
      raise ValueError(f"no projection of this model matches ia3 targets {cfg.targets}")

  def trainable(self, model, cfg):
    return IA3Param

  def default_optimizer(self, cfg):
    # The paper trains (IA)^3 with Adafactor at 3e-3; PEFT's examples use AdamW at ~3e-3.
    return optim.OptimizerConfig(name="adamw", learning_rate=3e-3)


register(IA3())


# ----------------------------------------------------------------------------- PEFT weights
def _module(model, path):
  m = model
  for p in path:
    m = m[p] if isinstance(p, int) else getattr(m, p)
  return m


def from_peft(model, weights: dict):
  """Sets the adapters of ``model`` (ia3 attached) from PEFT's IA3 weights: ``{name: array}``
  with names such as ``base_model.model.<module>.ia3_l.default`` (or ``<module>.ia3_l``). HF
  module names are resolved through the family's weight map; fused GPT-2 ``c_attn`` vectors are
  split into q/k/v, and the output scale of a gated ``wi_1`` (mT5) moves to ``wo``'s input."""
  from prompt_tuning.models import families
  wm = families.FAMILIES[model.cfg.family].weights(model.cfg)
  by_name = {t.hf: t for t in wm.tensors}
  done = set()
  for name, value in weights.items():
    module = name.replace("base_model.model.", "", 1)
    module = module.split(".ia3_l")[0]
    t = by_name.get(module + ".weight") or by_name.get(wm.prefix + module + ".weight")
    if t is None:
      raise ValueError(f"PEFT IA3 weight {name!r}: no module {module!r} in this model")
    vec = np.asarray(value, np.float32).reshape(-1)
    parts = np.split(vec, len(t.ours)) if len(t.ours) > 1 else [vec]
    for kernel_path, part in zip(t.ours, parts):
      dense = _module(model, kernel_path[:-1])
      if dense.adapter is None and dense.role == "mlp_in" and kernel_path[-2] == "wi_1":
        dense = _module(model, kernel_path[:-2] + ("wo",))   # act(x W0) * (x W1) * l
      if not isinstance(dense.adapter, IA3Adapter):
        raise ValueError(f"PEFT IA3 weight {name!r} targets {'.'.join(map(str, kernel_path[:-1]))}"
                         f", which has no ia3 adapter here; attach ia3 with matching targets")
      dense.adapter.scale.set_value(jnp.asarray(part.reshape(dense.adapter.scale.shape)))
      done.add(id(dense))
  missing = [".".join(map(str, p)) for p, d in targets(model, model_targets(model))
             if id(d) not in done]
  if missing:
    raise ValueError(f"PEFT IA3 weights do not cover {missing[:3]} ({len(missing)} adapters)")


def model_targets(model) -> IA3Config:
  """The config whose targets are the roles that carry ia3 adapters in ``model``."""
  roles = {d.role for _, d in nnx.iter_modules(model)
           if isinstance(d, core.Dense) and isinstance(d.adapter, IA3Adapter)}
  return IA3Config(targets=tuple(sorted(roles)))
