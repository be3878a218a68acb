"""Shared NNX building blocks.

Every weight carries logical axis names in its ``axes`` metadata (``embed``, ``mlp``, ``heads``,
``kv``, ``vocab``, ...). :mod:`prompt_tuning.sharding` maps them to mesh axes.

Variable kinds decide what a tuning method trains:
  * ``nnx.Param``   -- pre-trained weights (frozen unless the method says otherwise);
  * ``PromptParam`` -- soft-prompt vectors;
  * ``nnx.LoRAParam`` -- LoRA factors.
``PromptParam`` and ``LoRAParam`` subclass ``nnx.Param``, so filters that must select only the
pre-trained weights use :data:`BASE_PARAMS`.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning import sharding


class PromptParam(nnx.Param):
  """A learnable soft prompt."""


LoRAParam = nnx.LoRAParam
# Pre-trained weights only: excludes prompts and LoRA factors (both subclass nnx.Param).
BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.Any(PromptParam, LoRAParam)))


def param(rngs: nnx.Rngs | None, shape, axes, std: float = 1.0, dtype=jnp.float32, init="normal"):
  """Creates an ``nnx.Param`` with logical axes metadata."""
  assert len(shape) == len(axes), (shape, axes)
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros" or rngs is None:
    value = jnp.zeros(shape, dtype)
  else:
    value = std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, axes=tuple(axes))


def axes_of(variable) -> tuple | None:
  try:
    return variable.get_metadata().get("axes")
  except AttributeError:
    return None


class DenseGeneral(nnx.Module):
  """y = einsum(x, kernel) over ``len(in_features)`` trailing input dims; optional LoRA branch.

  ``kernel`` has shape ``in_features + out_features``. With LoRA attached (see
  :meth:`add_lora`) the output is ``x W + (alpha / r) * (x A) B`` with ``B`` zero-initialised.
  """

  def __init__(self, in_features: Sequence[int], out_features: Sequence[int],
               in_axes: Sequence[str], out_axes: Sequence[str], *, rngs: nnx.Rngs | None,
               std: float = 1.0, dtype=jnp.float32, use_bias: bool = False):
    self.in_features = tuple(in_features)
    self.out_features = tuple(out_features)
    self.in_axes, self.out_axes = tuple(in_axes), tuple(out_axes)
    self.kernel = param(rngs, self.in_features + self.out_features, self.in_axes + self.out_axes,
                        std=std)
    self.bias = param(None, self.out_features, self.out_axes, init="zeros") if use_bias \
        else nnx.data(None)
    self.dtype = dtype
    self.lora_a = nnx.data(None)
    self.lora_b = nnx.data(None)
    self.lora_scale = 0.0

  def add_lora(self, rank: int, alpha: float, rngs: nnx.Rngs):
    n_in = len(self.in_features)
    fan_in = 1
    for f in self.in_features:
      fan_in *= f
    # Kaiming-uniform-like A (as in the LoRA reference implementation), zero B.
    bound = 1.0 / (fan_in ** 0.5)
    a = jax.random.uniform(rngs.params(), self.in_features + (rank,), jnp.float32, -bound, bound)
    self.lora_a = LoRAParam(a, axes=self.in_axes + (None,))
    self.lora_b = LoRAParam(jnp.zeros((rank,) + self.out_features, jnp.float32),
                            axes=(None,) + self.out_axes)
    self.lora_scale = float(alpha) / float(rank)
    del n_in

  def _contract(self, x, w, n_in):
    lhs = tuple(range(x.ndim - n_in, x.ndim))
    rhs = tuple(range(n_in))
    return jax.lax.dot_general(x, w.astype(self.dtype), ((lhs, rhs), ((), ())))

  def __call__(self, x):
    x = x.astype(self.dtype)
    n_in = len(self.in_features)
    y = self._contract(x, self.kernel[...], n_in)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora_a is not None:
      h = self._contract(x, self.lora_a[...], n_in)
      y = y + self.lora_scale * self._contract(h, self.lora_b[...], 1)
    return y


class RMSNorm(nnx.Module):
  """T5-style layer norm: no mean subtraction, no bias, computed in float32."""

  def __init__(self, dim: int, eps: float = 1e-6, dtype=jnp.float32):
    self.scale = param(None, (dim,), ("embed",), init="ones")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
    y = xf * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nnx.Module):
  """Standard layer norm with scale and bias, computed in float32."""

  def __init__(self, dim: int, eps: float = 1e-5, dtype=jnp.float32):
    self.scale = param(None, (dim,), ("embed",), init="ones")
    self.bias = param(None, (dim,), ("embed",), init="zeros")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
            ).astype(self.dtype)


class Embed(nnx.Module):
  def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs | None, std: float = 1.0,
               axes=("vocab", "embed"), dtype=jnp.float32):
    self.embedding = param(rngs, (num, dim), axes, std=std)
    self.dtype = dtype

  def __call__(self, ids):
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x):
    """Tied output projection: x @ E^T."""
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


class SoftPromptMixin:
  """Soft-prompt plumbing shared by every model: a ``PromptParam`` of [length, d_model]
  prepended to the embedded input, with the attention mask extended by ones. Explicit
  ``prompts`` ([B, L, D] or [L, D]) override the module's own prompt (mixed-task batches)."""

  def set_prompt(self, value):
    """Attaches a trainable soft prompt of shape [length, d_model] (float32)."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim != 2 or value.shape[1] != self.cfg.d_model:
      raise ValueError(f"prompt must have shape [length, {self.cfg.d_model}], got {value.shape}")
    self.prompt = PromptParam(value, axes=("prompt", "embed"))

  @property
  def prompt_length(self) -> int:
    return 0 if self.prompt is None else int(self.prompt.shape[0])

  def prepend_prompt(self, x, mask, prompts=None):
    """(x [B, S, D], mask [B, S]) -> (x [B, P+S, D], mask [B, P+S], P)."""
    if prompts is None and self.prompt is not None:
      prompts = self.prompt[...]
    if prompts is None:
      return x, mask, 0
    b = x.shape[0]
    prompts = jnp.asarray(prompts).astype(x.dtype)
    if prompts.ndim == 2:
      prompts = jnp.broadcast_to(prompts[None], (b,) + prompts.shape)
    x = jnp.concatenate([prompts, x], axis=1)
    mask = jnp.concatenate([jnp.ones(prompts.shape[:2], mask.dtype), mask], axis=1)
    return x, mask, prompts.shape[1]


def gelu_new(x):
  return jax.nn.gelu(x, approximate=True)


ACTIVATIONS = {"relu": jax.nn.relu, "gelu_new": gelu_new, "gelu": lambda x: jax.nn.gelu(x, False),
               "gelu_pytorch_tanh": gelu_new, "silu": jax.nn.silu, "swish": jax.nn.silu}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def dropout(x, rate: float, rng):
  if rng is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def constrain(x, axes):
  return sharding.with_logical_constraint(x, axes)
