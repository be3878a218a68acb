"""Learned sparse fine-tuning (Radiya-Dixit & Wang 2020, "How fine can fine-tuning be?"): a binary
mask over the pre-trained weights of chosen projections sets a fixed fraction of their entries to
zero; the mask is learned and the weights never change.

Every masked kernel W gets real-valued scores S (same shape, the only trainable variables). The
forward pass uses ``W * m`` with ``m = 1[S >= threshold]``, the threshold chosen per kernel so that
exactly ``round(sparsity * W.size)`` entries are zero (the lowest scores; ties by index order).
Gradients reach S through a straight-through estimator (dL/dS = dL/dm = dL/d(W*m) * W). Scores
start at |W| / mean|W| (``init="magnitude"``: the initial mask is magnitude pruning at the same
sparsity; scale-free, so one learning rate fits every model) or uniformly at random
(``init="uniform"``: a random initial mask).

The task-specific artifact is the binary mask alone: :meth:`Mask.export` returns it packed eight
entries per byte (``np.packbits``); :func:`unpack` and :func:`apply_bits` rebuild the masked
weights from the frozen model. Use that for inference too: with the adapter attached, every call
(each decoding step included) re-sorts the scores.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.methods.base import AdapterConfig, AdapterMethod, register
from prompt_tuning.models import core


class MaskParam(core.MethodParam):
  """Real-valued mask scores of one kernel."""


INITS = ("magnitude", "uniform")


@dataclasses.dataclass(frozen=True)
class MaskConfig(AdapterConfig):
  sparsity: float = 0.05             # fraction of each masked kernel's entries set to zero
  init: str = "magnitude"            # initial scores: "magnitude" (|W| pruning) | "uniform"

  def validate(self):
    super().validate()
    if not 0.0 < self.sparsity < 1.0:
      raise ValueError(f"mask sparsity must be in (0, 1), got {self.sparsity}")
    if self.init not in INITS:
      raise ValueError(f"unknown mask init {self.init!r}; choose one of {INITS}")


def zeros_for(size: int, sparsity: float) -> int:
  """How many entries of a kernel of ``size`` entries the mask zeroes."""
  return int(round(sparsity * size))


def binary_mask(scores, num_zeros: int):
  """float32 0/1 mask shaped like ``scores``: zero at the ``num_zeros`` lowest scores (ties by
  index order), so exactly ``num_zeros`` entries are zero."""
  flat = scores.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  m = jnp.ones(flat.shape, jnp.float32).at[order[:num_zeros]].set(0.0)
  return m.reshape(scores.shape)


class MaskAdapter(nnx.Module):
  """Calls the projection with ``W * m``; m is binary in the forward pass and passes gradients
  straight through to the scores."""

  def __init__(self, dense: core.Dense, cfg: MaskConfig, rngs: nnx.Rngs):
    w = jnp.asarray(dense.kernel[...], jnp.float32)
    if cfg.init == "magnitude":
      s = jnp.abs(w) / jnp.maximum(jnp.mean(jnp.abs(w)), 1e-12)
    else:
      s = jax.random.uniform(rngs.params(), w.shape, jnp.float32)
    self.scores = MaskParam(s, axes=dense.in_axes + dense.out_axes)
    self.num_zeros = zeros_for(w.size, cfg.sparsity)

  def mask(self):
    """The binary mask applied in the forward pass (float32 0/1)."""
    return binary_mask(jax.lax.stop_gradient(self.scores[...]), self.num_zeros)

  def __call__(self, dense: core.Dense, x):
    s = self.scores[...]
    m = self.mask() + (s - jax.lax.stop_gradient(s))   # exactly m forward; identity backward
    return dense.base(x, kernel=dense.kernel[...].astype(jnp.float32) * m)


class Mask(AdapterMethod):
  name = "mask"
  Config = MaskConfig
  Param = MaskParam
  Adapter = MaskAdapter

  def export(self, model, params, cfg):
    """``{<dense path>.kernel: packed mask bits (uint8, np.packbits of the flattened 0/1
    mask)}``: the whole task-specific artifact (shapes are the frozen model's kernels')."""
    out = {}
    for path, var in nnx.to_flat_state(params):
      name = ".".join(map(str, path))
      assert name.endswith(".adapter.scores"), name
      dense = name[:-len(".adapter.scores")]
      size = math.prod(var.shape)
      m = binary_mask(jnp.asarray(var[...]), zeros_for(size, cfg.sparsity))
      out[dense + ".kernel"] = np.packbits(np.asarray(m, np.float32).reshape(-1) > 0)
    return out

  def default_optimizer(self, cfg):
    # Scores start at |W| / mean|W| (order 1); at 1e-2 Adam moves entries across the threshold
    # within tens of steps without reshuffling the whole mask at once.
    return optim.OptimizerConfig(name="adamw", learning_rate=1e-2)


register(Mask())


def unpack(bits: np.ndarray, shape) -> np.ndarray:
  """Packed bits -> float32 0/1 mask of ``shape``."""
  n = math.prod(shape)
  return np.unpackbits(np.asarray(bits, np.uint8), count=n).astype(np.float32).reshape(shape)


def apply_bits(model, bits: dict[str, np.ndarray]) -> None:
  """Multiplies the named kernels of ``model`` (in place; a model without mask adapters) by the
  exported masks: the sparsified model, with no method attached."""
  for name, packed in bits.items():
    mod = model
    for p in name.split(".")[:-1]:
      mod = mod[int(p)] if p.isdigit() else getattr(mod, p)
    if mod.adapter is not None:
      raise ValueError(f"{name}: apply masks to a model without adapters")
    w = mod.kernel[...]
    mod.kernel.set_value((jnp.asarray(w, jnp.float32) * unpack(packed, w.shape)).astype(w.dtype))
