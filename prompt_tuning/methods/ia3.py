"""(IA)^3 (Liu et al. 2022): learned vectors, initialised to ones, that rescale the keys and values
of every attention (self and cross) and the feed-forward intermediate activation. Attached through
the core's ``Dense.adapter`` hook and targeted by projection role: "q", "k", "v", "o" and "mlp_in"
rescale the projection's output (bias included, as PEFT), "mlp_out" rescales its input (the
feed-forward activation; PEFT's ``feedforward_modules``).

PEFT's default targets per family, as ``targets`` here (parity-tested on the same weights):
T5 ``k, v, wo`` = ("k", "v", "mlp_out") (the default); mT5 ``k, v, wi_1`` (output of the gated
branch) is the same product as ("k", "v", "mlp_out"); BART ``q_proj, v_proj, fc2`` =
("q", "v", "mlp_out"); GPT-2 ``c_attn, mlp.c_proj`` = ("q", "k", "v", "mlp_out"); Llama
``k_proj, v_proj, down_proj`` = the default.

PEFT's IA3 adapter (``to_peft`` / ``from_peft``): one ``base_model.model.<module>.ia3_l`` per HF
module, [out, 1] for output scaling and [1, in] for the ``feedforward_modules`` (input scaling);
GPT-2's fused ``c_attn`` vector is q, k, v concatenated (ones for an untargeted part). On reading,
the output scale of a gated ``wi_1`` (mT5) moves to ``wo``'s input: act(x W0) * (x W1 l) W =
(act(x W0) * (x W1) * l) W.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.interop import peft_format as pf
from prompt_tuning.methods.base import AdapterConfig, AdapterMethod, register
from prompt_tuning.models import core


class IA3Param(core.MethodParam):
  """An (IA)^3 rescaling vector."""


INPUT_SCALED = ("mlp_out",)


@dataclasses.dataclass(frozen=True)
class IA3Config(AdapterConfig):
  TARGETS = ("q", "k", "v", "o", "mlp_in", "mlp_out")
  targets: tuple[str, ...] = ("k", "v", "mlp_out")   # rescaled: q, k, v, o, mlp_in, mlp_out


class IA3Adapter(nnx.Module):
  """``base(x) * l`` (output scaling) or ``base(x * l)`` (input scaling), l initialised to 1."""

  def __init__(self, dense: core.Dense, cfg: IA3Config, rngs=None):
    self.input_scaled = dense.role in INPUT_SCALED
    shape, axes = (dense.in_shape, dense.in_axes) if self.input_scaled else \
        (dense.out_shape, dense.out_axes)
    self.scale = IA3Param(jnp.ones(shape, jnp.float32), axes=axes)

  def __call__(self, dense: core.Dense, x):
    s = self.scale[...].astype(dense.dtype)
    if self.input_scaled:
      return dense.base(x.astype(dense.dtype) * s)
    return dense.base(x) * s


class IA3(AdapterMethod):
  name = "ia3"
  Config = IA3Config
  Param = IA3Param
  Adapter = IA3Adapter
  peft_type = "IA3"

  def default_optimizer(self, cfg):
    # The paper trains (IA)^3 with Adafactor at 3e-3; PEFT's examples use AdamW at ~3e-3.
    return optim.OptimizerConfig(name="adamw", learning_rate=3e-3)

  def to_peft(self, model, cfg):
    adapters = self.adapters(model)
    by_name, by_path, modules = pf.sites(model)
    missing = sorted(".".join(map(str, p)) for p in adapters if p not in by_path)
    if missing:
      raise ValueError(f"no Hugging Face module holds ia3 projection(s) {missing[:4]}")
    chosen = {by_path[p][0].name for p in adapters}
    tensors, ff = {}, set()
    for name in sorted(chosen):
      denses = [pf.module(model, p) for p in by_name[name].parts]
      input_scaled = {d.adapter.input_scaled for d in denses if d.adapter is not None}
      if len(input_scaled) != 1 or (True in input_scaled and len(denses) > 1):
        raise ValueError(f"{name}: PEFT scales a fused module's input or output, not both")
      vec = np.concatenate([
          np.asarray(d.adapter.scale[...], np.float32).reshape(-1) if d.adapter is not None
          else np.ones(pf.fan(d.out_shape), np.float32) for d in denses])
      if True in input_scaled:
        ff.add(name)
      tensors[f"{pf.PREFIX}{name}.ia3_l"] = vec[None] if name in ff else vec[:, None]
    targets = pf.target_names(modules, chosen)
    feedforward = pf.target_names(modules, ff) if ff else []
    if not set(feedforward) <= set(targets):   # PEFT wants them among the targets' names
      targets, feedforward = sorted(chosen), sorted(ff)
    return {"target_modules": targets, "feedforward_modules": feedforward,
            "fan_in_fan_out": pf.fan_in_fan_out(model), "init_ia3_weights": True,
            "modules_to_save": None}, tensors

  def from_peft(self, model, cfg, config, tensors):
    """Sets the adapters from PEFT's IA3 weights. Fused GPT-2 ``c_attn`` vectors are split into
    q/k/v, and the output scale of a gated ``wi_1`` (mT5) moves to ``wo``'s input."""
    if config.get("modules_to_save"):
      raise ValueError(f"adapter_config modules_to_save={config['modules_to_save']!r} is not "
                       f"plain IA3")
    by_name, _, _ = pf.sites(model)
    done = set()
    for name, group in pf.module_tensors(model, tensors, ("ia3_l",)).items():
      parts = by_name[name].parts
      vec = group["ia3_l"].reshape(-1)
      for kernel_path, part in zip(parts, np.split(vec, len(parts))):
        dense = pf.module(model, kernel_path)
        if dense.adapter is None and dense.role == "mlp_in" and kernel_path[-1] == "wi_1":
          dense = pf.module(model, kernel_path[:-1] + ("wo",))   # act(x W0) * (x W1) * l
        if not isinstance(dense.adapter, IA3Adapter):
          if np.allclose(part, 1.0):   # an untargeted part of a fused module
            continue
          raise ValueError(f"IA3 weight of {name} targets {'.'.join(map(str, kernel_path))}, "
                           f"which has no ia3 adapter here; attach ia3 with matching targets")
        dense.adapter.scale.set_value(jnp.asarray(part.reshape(dense.adapter.scale.shape)))
        done.add(id(dense))
    missing = [".".join(map(str, p)) for p, d in self.adapters(model).items() if id(d) not in done]
    if missing:
      raise ValueError(f"the IA3 weights do not cover {missing[:3]} ({len(missing)} adapters)")


register(IA3())
