"""DoRA (Liu et al. 2024, weight-decomposed low-rank adaptation): LoRA whose updated kernel is
split into a direction and a trained magnitude per output feature,

  W' = m * (W + s A B) / ||W + s A B||,

the norm taken over the input axes for each output (PEFT's ``get_weight_norm``: torch's weight
[out, in], ``norm(dim=1)``), m initialised to ||W|| so training starts at the pre-trained model.
As the paper (section 4.3) and PEFT, the norm is treated as a constant: no gradient flows through
it. The output is computed as PEFT does, ``base(x) + (g - 1) x W + g s (x A) B`` with
``g = m / ||W + s A B||`` (bias once, unscaled). Options are LoRA's (``rslora`` included).

PEFT: a LoRA adapter with ``use_dora=True`` and one ``<module>.lora_magnitude_vector`` [out] per
module (GPT-2's fused ``c_attn``: the parts' vectors concatenated, an untargeted part's being its
weight norms, which leave it unchanged).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods.base import register
from prompt_tuning.methods.lora import LoRA, LoRAAdapter, LoRAConfig, LoRAParam


@dataclasses.dataclass(frozen=True)
class DoRAConfig(LoRAConfig):
  pass


def column_norm(dense, kernel) -> jax.Array:
  """||kernel|| over the input axes, one per output (float32, shaped like the output)."""
  k = jnp.asarray(kernel, jnp.float32)
  return jnp.sqrt(jnp.sum(k * k, axis=tuple(range(len(dense.in_shape)))))


class DoRAAdapter(LoRAAdapter):

  def __init__(self, dense, cfg: DoRAConfig, rngs):
    super().__init__(dense, cfg, rngs)
    self.magnitude = LoRAParam(column_norm(dense, dense.kernel[...]), axes=dense.out_axes)

  def gain(self, dense):
    """m / ||W + s A B|| (the norm without gradient), per output."""
    norm = column_norm(dense, dense.kernel[...].astype(jnp.float32) + self.delta(dense))
    return self.magnitude[...] / jax.lax.stop_gradient(norm)

  def merged_kernel(self, dense):
    return (dense.kernel[...].astype(jnp.float32) + self.delta(dense)) * self.gain(dense)

  def __call__(self, dense, x):
    g = self.gain(dense).astype(dense.dtype)
    return dense.base(x) + (g - 1) * dense.contract(x, dense.kernel[...]) + g * self.lora(dense, x)


class DoRA(LoRA):
  name = "dora"
  Config = DoRAConfig
  Adapter = DoRAAdapter
  peft_extra = ("lora_magnitude_vector",)

  def peft_options(self, cfg):
    return dict(super().peft_options(cfg), use_dora=True)

  def peft_site_tensors(self, model, cfg, site, denses):
    return {"lora_magnitude_vector": np.concatenate([
        np.asarray(d.adapter.magnitude[...] if type(d.adapter) is DoRAAdapter
                   else column_norm(d, d.kernel[...]), np.float32).reshape(-1) for d in denses])}

  def peft_set_part(self, dense, group, start, stop):
    m = group["lora_magnitude_vector"].reshape(-1)[start:stop]
    dense.adapter.magnitude.set_value(jnp.asarray(m.reshape(dense.out_shape)))


register(DoRA())
