"""PiSSA (Meng et al. 2024, principal singular values and singular vectors adaptation): LoRA whose
factors start at the kernel's top-``rank`` singular triplets and whose frozen kernel becomes the
residual, so training starts at the pre-trained model but moves its principal subspace. As PEFT's
``init_lora_weights="pissa"`` (exact SVD, float32): with the torch weight W^T = V S U^T,
``A = sqrt(S_r / s) U_r^T``, ``B = V_r sqrt(S_r / s)`` and the kernel becomes ``W - s B A``
(s: LoRA's scale). Options are LoRA's.

The residual replaces the frozen kernel when the method is attached (the pre-trained weights are
then the residual in every state, checkpoint and merged export). The initial factors are kept
(not trained) so that ``to_peft`` can write what PEFT loads on the *original* model: PEFT's own
PiSSA-to-LoRA conversion, a LoRA of rank 2 r with ``A' = [A; A0]`` and ``B' = [B, -B0]``.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning.methods.base import register
from prompt_tuning.methods.lora import LoRA, LoRAAdapter, LoRAConfig


@dataclasses.dataclass(frozen=True)
class PiSSAConfig(LoRAConfig):
  pass


class PiSSAInit(nnx.Variable):
  """A PiSSA factor as initialised (frozen; for the PEFT export)."""


class PiSSAAdapter(LoRAAdapter):

  def __init__(self, dense, cfg: PiSSAConfig, rngs):
    super().__init__(dense, cfg, rngs)
    fan_in, fan_out = math.prod(dense.in_shape), math.prod(dense.out_shape)
    if cfg.rank > min(fan_in, fan_out):
      raise ValueError(f"pissa rank {cfg.rank} exceeds the rank of a {fan_in}x{fan_out} kernel")
    w = jnp.asarray(dense.kernel[...], jnp.float32).reshape(fan_in, fan_out)
    u, s, vt = jnp.linalg.svd(w, full_matrices=False)    # w = u s vt: u ~ PEFT's U, vt ~ V^T
    root = jnp.sqrt(s[:cfg.rank] / self.scale)
    a = (u[:, :cfg.rank] * root).reshape(dense.in_shape + (cfg.rank,))
    b = (root[:, None] * vt[:cfg.rank]).reshape((cfg.rank,) + dense.out_shape)
    self.a.set_value(a)
    self.b.set_value(b)
    self.a0 = PiSSAInit(a, axes=dense.in_axes + (None,))
    self.b0 = PiSSAInit(b, axes=(None,) + dense.out_axes)
    kernel = dense.kernel[...]
    dense.kernel.set_value((kernel.astype(jnp.float32) - self.delta(dense)).astype(kernel.dtype))


class PiSSA(LoRA):
  name = "pissa"
  Config = PiSSAConfig
  Adapter = PiSSAAdapter

  def peft_factors(self, model, cfg):
    out = {}
    for p, d in self.adapters(model).items():
      fan_in, fan_out = math.prod(d.in_shape), math.prod(d.out_shape)
      a, b, a0, b0 = (np.asarray(v[...], np.float32) for v in
                      (d.adapter.a, d.adapter.b, d.adapter.a0, d.adapter.b0))
      out[p] = (np.concatenate([a, a0], -1).reshape(fan_in, -1).T,
                np.concatenate([b, -b0], 0).reshape(-1, fan_out).T)
    return out

  def from_peft(self, model, cfg, config, tensors):
    raise ValueError("a pissa run starts from its SVD; start from a PEFT LoRA adapter with "
                     "method 'lora'")


register(PiSSA())
