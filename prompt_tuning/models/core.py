"""The model core shared by every family: one config, one attention, one block, one stack.

A family (T5, BART, GPT-2, Llama-style) is a :class:`ModelConfig` plus Hugging Face names (see
``families.py``); this module holds all the maths:

* :class:`Attention`: additive position bias (T5 buckets), RoPE (default, ``linear`` and ``llama3``
  scaling), MHA / GQA / MQA, sliding window (per layer), optional q/k/v/o biases each on its own,
  scaling options (``1/sqrt(d)``, none, GPT-2's inverse layer index), KV cache, and two kernels:
  ``xla`` (einsum, float32 logits) and ``cudnn`` (``jax.nn.dot_product_attention``).
* norms (RMS / LayerNorm), MLP (plain or gated), pre- or post-norm :class:`Block`.
* :class:`Stack`: learned or relative positions, embedding norm, layers, final norm; remat
  policies (``none`` / ``full`` / ``dots``) and ``scan_layers`` (``jax.lax.scan`` over the
  layers' stacked weights, same numbers as the unrolled loop).
* :class:`EncoderDecoderLM` and :class:`DecoderOnlyLM`, packing-aware (segment ids and
  positions), with a soft prompt slot and cached greedy decoding for both.

Every weight carries logical axis names (``axes`` metadata) that :mod:`prompt_tuning.sharding`
maps to mesh axes, and its initialiser (``init`` metadata) so :func:`init_random` can build large
models parameter by parameter.

Tuning methods attach through hooks and never edit this module: ``Dense.adapter`` (a module
called as ``adapter(dense, x)`` instead of ``dense.base(x)``: LoRA, IA3, masks), the model's
``prompt`` slot (a ``PromptParam`` inserted into the embedded input by its
:class:`PromptLayout`; optionally with a per-task table, ``task_prompts``) and
``Stack.kv_prefix`` (per-layer keys/values prepended to every self-attention of a stack: prefix
tuning).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning import sharding

NEG_INF = -1e9
# jax.nn.dot_product_attention kernel behind attention_impl="cudnn". Tests set it to "xla" to
# exercise the same call (GQA, masks, bias shapes) on CPU.
CUDNN_KERNEL = "cudnn"

REMAT_POLICIES = {"none": None, "full": None,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
               "silu": jax.nn.silu, "swish": jax.nn.silu}
ROPE_TYPES = ("default", "linear", "llama3")


class MethodParam(nnx.Param):
  """Base of every variable a tuning method adds: whatever is not one is a pre-trained weight."""


class PromptParam(MethodParam):
  """A learnable soft prompt."""


PLACEMENTS = ("prefix", "after_bos", "before_eos")
SCOPES = ("encoder", "decoder", "both")
COMBINES = ("add", "concat")


@dataclasses.dataclass(frozen=True)
class PromptLayout:
  """Where a model's soft prompt goes (static: part of the graph definition).

  ``placement`` (the encoder input, or a decoder-only model's sequence): ``prefix`` before the
  first token; ``after_bos`` after the first token of rows that start with ``bos_token_id`` (rows
  that do not get it as a prefix); ``before_eos`` right before each row's first EOS among its
  real tokens (rows without one get it after their last real token). Inside a right-padded row,
  the tokens after the prompt and the padding move right; masks follow and positions count
  0, 1, ... over the new sequence, prompt included (what a HF model run on the same
  ``inputs_embeds`` does).

  ``scope``: ``encoder`` (decoder-only models: their one sequence), ``decoder`` (encoder-decoder:
  prepended to the embedded decoder input, before the start token; logits at prompt positions
  are dropped) or ``both`` (separate vectors: the prompt holds the encoder's block then the
  decoder's, PEFT's num_transformer_submodules=2 layout).

  ``combine`` (per-task prompts only): each row's prompt is the shared prompt ``add`` its task's
  (same length) or ``concat`` (shared first), per prompted stack.
  """
  placement: str = "prefix"
  scope: str = "encoder"
  combine: str = "add"

  @property
  def parts(self) -> int:
    return 2 if self.scope == "both" else 1


def insert_prompt(x, segment_ids, prompts, at):
  """x [B, S, D] with ``prompts`` [B, P, D] inserted before index ``at`` [B] of each row:
  returns x [B, P+S, D], segment ids [B, P+S] (1 on the prompt) and positions arange(P+S)."""
  b, s = segment_ids.shape
  p = prompts.shape[1]
  j = jnp.arange(p + s)[None]
  at = jnp.asarray(at, jnp.int32)[:, None]
  in_prompt = (j >= at) & (j < at + p)
  src = jnp.clip(jnp.where(j < at, j, j - p), 0, s - 1)
  tok = jnp.take_along_axis(x, src[..., None], axis=1)
  pr = jnp.take_along_axis(prompts.astype(x.dtype), jnp.clip(j - at, 0, p - 1)[..., None], axis=1)
  x = jnp.where(in_prompt[..., None], pr, tok)
  seg = jnp.where(in_prompt, 1, jnp.take_along_axis(segment_ids, src, axis=1))
  return x, seg.astype(segment_ids.dtype), jnp.broadcast_to(j, (b, p + s))


def token_index(at, p: int, length: int):
  """[B, length]: where each token of a row sits once a P-vector prompt is inserted at ``at``."""
  j = jnp.arange(length)[None]
  return j + p * (j >= jnp.asarray(at)[:, None])


def base_params():
  """Filter for the pre-trained weights (every nnx.Param that no tuning method added)."""
  return nnx.All(nnx.Param, nnx.Not(MethodParam))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that decides a model's maths; families fill it from their HF configs.

  Compute options (``dtype``, ``remat``, ``scan_layers``, ``attention_impl``, ``dropout_rate``)
  may be changed freely; the rest must match the weights.
  """
  family: str = "t5"
  model_type: str = ""                       # the HF model_type it was read from (export)
  architecture: str = "encoder_decoder"      # "encoder_decoder" | "decoder_only"
  vocab_size: int = 32128
  d_model: int = 512
  num_layers: int = 6                        # encoder layers (or the decoder-only stack)
  num_decoder_layers: int | None = None      # encoder-decoder: decoder depth (None = same)
  num_heads: int = 8
  num_kv_heads: int | None = None            # None = num_heads; 1 = MQA; else GQA
  head_dim: int | None = None                # None = d_model // num_heads
  decoder_num_heads: int | None = None       # BART may differ per stack (None = num_heads)
  d_ff: int = 2048
  decoder_d_ff: int | None = None
  mlp_activation: str = "relu"
  mlp_gated: bool = False                    # act(x W0) * (x W1), as T5 v1.1 and Llama
  mlp_bias: bool = False
  norm: str = "rms"                          # "rms" | "layer"
  norm_eps: float = 1e-6
  norm_position: str = "pre"                 # "pre" | "post" (BART)
  final_norm: bool = True
  embed_norm: bool = False                   # BART's layernorm_embedding
  embed_scale: float = 1.0                   # BART scale_embedding: sqrt(d_model)
  position: str = "relative"                 # "relative" (T5) | "learned" | "rope"
  relative_buckets: int = 32
  relative_max_distance: int = 128
  max_position_embeddings: int = 0           # learned positions (and the RoPE length check)
  position_offset: int = 0                   # BART's learned positions start at 2
  rope_theta: float = 10000.0
  rope_scaling: tuple = ()                   # sorted (key, value) pairs; rope_type in ROPE_TYPES
  sliding_window: int | None = None          # keys with q - k >= window are masked
  sliding_layers: tuple | None = None        # per-layer bools (None = every layer when windowed)
  q_bias: bool = False
  k_bias: bool = False
  v_bias: bool = False
  o_bias: bool = False
  attn_scale: str = "inv_sqrt"               # "inv_sqrt" (1/sqrt(head_dim)) | "none" (T5)
  attn_scale_inverse_layer: bool = False     # GPT-2 scale_attn_by_inverse_layer_idx
  tie_word_embeddings: bool = True
  logits_scale: bool = False                 # T5 v1.0: d_model**-0.5 before the tied head
  final_logits_bias: bool = False            # BART
  init_std: float | None = None              # None: T5 fan-in init; else N(0, init_std)
  embed_init_std: float = 1.0
  pad_token_id: int = 0
  eos_token_id: int = 1
  bos_token_id: int | None = None
  decoder_start_token_id: int = 0
  # Compute options.
  dtype: str = "float32"
  remat: str = "none"                        # "none" | "full" | "dots"
  scan_layers: bool = False
  attention_impl: str = "xla"                # "xla" | "cudnn"
  dropout_rate: float = 0.0

  COMPUTE_OPTIONS = ("dtype", "remat", "scan_layers", "attention_impl", "dropout_rate")

  def __post_init__(self):
    def choice(name, options):
      if getattr(self, name) not in options:
        raise ValueError(f"model {name} must be one of {options}, got {getattr(self, name)!r}")
    choice("architecture", ("encoder_decoder", "decoder_only"))
    choice("norm", ("rms", "layer"))
    choice("norm_position", ("pre", "post"))
    choice("position", ("relative", "learned", "rope"))
    choice("attn_scale", ("inv_sqrt", "none"))
    choice("remat", tuple(REMAT_POLICIES))
    choice("attention_impl", ("xla", "cudnn"))
    if self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {self.mlp_activation!r}; known: {sorted(ACTIVATIONS)}")
    try:
      dt = jnp.dtype(self.dtype)
    except TypeError:
      raise ValueError(f"model dtype {self.dtype!r} is not a dtype; use float32 or bfloat16")
    if dt not in (jnp.float32, jnp.bfloat16, jnp.float16):
      raise ValueError(f"model dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
    if self.attention_impl == "cudnn" and dt == jnp.float32:
      raise ValueError("attention_impl='cudnn' needs dtype bfloat16 or float16 (cuDNN has no "
                       "float32 fused attention); use attention_impl='xla' for float32")
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model {name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.kv_heads}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
    rope = dict(self.rope_scaling)
    if rope.get("rope_type", "default") not in ROPE_TYPES:
      raise ValueError(f"rope_type {rope.get('rope_type')!r} is not supported; "
                       f"supported: {ROPE_TYPES}")
    if self.position == "learned" and self.max_position_embeddings <= 0:
      raise ValueError("learned positions need max_position_embeddings > 0")
    if self.sliding_layers is not None and len(self.sliding_layers) != self.num_layers:
      raise ValueError(f"sliding_layers has {len(self.sliding_layers)} entries for "
                       f"{self.num_layers} layers")

  # ------------------------------------------------------------------ derived
  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dh(self) -> int:
    return self.head_dim_for(self.num_heads)

  def head_dim_for(self, heads: int) -> int:
    """Head size of a stack with ``heads`` query heads (BART's stacks may differ)."""
    return self.head_dim or self.d_model // heads

  @property
  def n_decoder_layers(self) -> int:
    return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def is_encoder_decoder(self) -> bool:
    return self.architecture == "encoder_decoder"

  def stack_shape(self, stack: str) -> tuple[int, int, int]:
    """(layers, heads, d_ff) of the ``encoder`` or ``decoder`` stack."""
    if stack == "decoder" and self.is_encoder_decoder:
      return (self.n_decoder_layers, self.decoder_num_heads or self.num_heads,
              self.decoder_d_ff or self.d_ff)
    return self.num_layers, self.num_heads, self.d_ff

  def replace(self, **kw) -> "ModelConfig":
    unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown model option(s) {sorted(unknown)}")
    return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------- parameters
def param(rngs: nnx.Rngs | None, shape, axes, init=("normal", 1.0), kind=nnx.Param):
  """A Variable with logical ``axes`` and its ``init`` rule ("ones" | "zeros" | ("normal", std))."""
  shape = tuple(int(s) for s in shape)
  assert len(shape) == len(axes), (shape, axes)
  if init == "ones":
    value = jnp.ones(shape, jnp.float32)
  elif init == "zeros" or rngs is None:
    value = jnp.zeros(shape, jnp.float32)
  else:
    value = init[1] * jax.random.normal(rngs.params(), shape, jnp.float32)
  return kind(value, axes=tuple(axes), init=init)


def axes_of(variable) -> tuple | None:
  try:
    return variable.get_metadata().get("axes")
  except AttributeError:
    return None


def constrain(x, axes):
  return sharding.with_logical_constraint(x, axes)


def dropout(x, rate: float, rng):
  if rng is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Dense(nnx.Module):
  """``y = x . kernel (+ bias)`` over the trailing ``len(in_shape)`` dims of ``x``.

  ``role`` names what the projection is for ("q", "k", "v", "o", "mlp_in", "mlp_out", "head")
  so tuning methods target projections by role, whatever a family calls them. ``adapter`` is
  the hook methods attach to: when set, the output is ``adapter(self, x)`` (which calls
  :meth:`base`, possibly with a changed kernel or input).
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], in_axes, out_axes, *,
               role: str, std: float, dtype, use_bias: bool = False, rngs: nnx.Rngs | None):
    self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
    self.in_axes, self.out_axes = tuple(in_axes), tuple(out_axes)
    self.role = role
    self.kernel = param(rngs, self.in_shape + self.out_shape, self.in_axes + self.out_axes,
                        ("normal", std))
    self.bias = (param(None, self.out_shape, self.out_axes, "zeros") if use_bias
                 else nnx.data(None))
    self.dtype = dtype
    self.adapter = nnx.data(None)

  def contract(self, x, w, n_in: int | None = None):
    """Contracts the trailing ``n_in`` dims of x with the leading dims of w (compute dtype)."""
    n = len(self.in_shape) if n_in is None else n_in
    dims = ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ()))
    return jax.lax.dot_general(x.astype(self.dtype), w.astype(self.dtype), dims)

  def base(self, x, kernel=None):
    y = self.contract(x, self.kernel[...] if kernel is None else kernel)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y

  def __call__(self, x):
    if self.adapter is not None:
      return self.adapter(self, x)
    return self.base(x)


class Embed(nnx.Module):

  def __init__(self, num: int, dim: int, *, std: float, axes=("vocab", "embed"), dtype,
               rngs: nnx.Rngs | None):
    self.embedding = param(rngs, (num, dim), axes, ("normal", std))
    self.dtype = dtype

  def __call__(self, ids):
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x):
    """Tied output projection: x @ E^T."""
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


class Norm(nnx.Module):
  """RMS norm (T5, Llama: no mean, no bias) or LayerNorm (scale and bias); float32 inside."""

  def __init__(self, cfg: ModelConfig):
    self.kind, self.eps, self.dtype = cfg.norm, cfg.norm_eps, cfg.compute_dtype
    self.scale = param(None, (cfg.d_model,), ("embed",), "ones")
    self.bias = param(None, (cfg.d_model,), ("embed",), "zeros") if cfg.norm == "layer" \
        else nnx.data(None)

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    if self.kind == "layer":
      xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    y = y * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


def _std(cfg: ModelConfig, fan_in: int) -> float:
  return cfg.init_std if cfg.init_std is not None else fan_in ** -0.5


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, d_ff: int, *, rngs):
    d, dt, b = cfg.d_model, cfg.compute_dtype, cfg.mlp_bias
    mk = lambda i, o, ia, oa, role: Dense((i,), (o,), (ia,), (oa,), role=role, dtype=dt,
                                          std=_std(cfg, i), use_bias=b, rngs=rngs)
    self.gated = cfg.mlp_gated
    if self.gated:
      self.wi_0 = mk(d, d_ff, "embed", "mlp", "mlp_in")
      self.wi_1 = mk(d, d_ff, "embed", "mlp", "mlp_in")
    else:
      self.wi = mk(d, d_ff, "embed", "mlp", "mlp_in")
    self.wo = mk(d_ff, d, "mlp", "embed", "mlp_out")
    self.act = ACTIVATIONS[cfg.mlp_activation]
    self.rate = cfg.dropout_rate

  def __call__(self, x, rng=None):
    h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
    h = dropout(constrain(h, ("batch", "length", "mlp")), self.rate, rng)
    return self.wo(h)


# ----------------------------------------------------------------------------- positions
def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """T5's bucketing (mesh-tensorflow / transformers)."""
  ret = jnp.zeros_like(relative_position)
  n = num_buckets
  if bidirectional:
    n //= 2
    ret = ret + (relative_position > 0).astype(jnp.int32) * n
    rp = jnp.abs(relative_position)
  else:
    rp = -jnp.minimum(relative_position, 0)
  max_exact = n // 2
  is_small = rp < max_exact
  rp_f = jnp.maximum(rp, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(rp_f / max_exact) / math.log(max_distance / max_exact)
                       * (n - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, n - 1)
  return ret + jnp.where(is_small, rp, large)


@functools.lru_cache(maxsize=None)
def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies with transformers' default / linear / llama3 rules (float32)."""
  d = cfg.dh
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
  rp = dict(cfg.rope_scaling)
  kind = rp.get("rope_type", "default")
  if kind == "linear":
    inv = inv / rp["factor"]
  elif kind == "llama3":
    factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def apply_rope(x, positions, inv_freq):
  """Rotate-half RoPE (transformers' Llama convention). x [B, L, H, D], positions [B, L]."""
  freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)   # [B, L, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  xf = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


# ----------------------------------------------------------------------------- masks
def segment_mask(q_seg, k_seg):
  """[B, Q], [B, K] segment ids (0 = padding) -> [B, 1, Q, K]: same segment, key not padding."""
  m = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] > 0)
  return m[:, None]


def causal_mask(q_index, k_index, window: int | None = None):
  """[B|1, Q] and [B|1, K] buffer indices -> [B|1, 1, Q, K]: key at or before the query (and,
  with a window, fewer than ``window`` positions before it)."""
  d = q_index[:, :, None] - k_index[:, None, :]
  m = d >= 0
  if window is not None:
    m = m & (d < window)
  return m[:, None]


@dataclasses.dataclass
class AttentionInputs:
  """What every layer of one stack call shares (built once per call, closed over by scan)."""
  mask: Any                    # bool [B|1, 1, Q, K]
  window_mask: Any = None      # bool, the mask of sliding-window layers
  bias: Any = None             # float [B|1, H, Q, K] (T5 relative positions)
  positions: Any = None        # [B, Q] query positions (RoPE)
  cache_index: Any = None      # scalar or [B]: where this call's keys go in the cache
  enc: Any = None              # encoder output for cross-attention
  cross_mask: Any = None       # bool [B, 1, Q, S]


def dot_product_attention(q, k, v, mask, bias, scale, impl: str, dtype):
  """q [B, Q, H, D]; k, v [B, K, G, D] with H a multiple of G; mask bool broadcastable to
  [B, 1, Q, K]; bias float [B|1, H, Q, K]. Returns [B, Q, H, D]."""
  if impl == "cudnn":
    b, ql, h, _ = q.shape
    kl = k.shape[1]
    if bias is not None:  # the fused kernel wants bias and mask at full [B, H, Q, K] size
      bias = jnp.broadcast_to(bias, (b, h, ql, kl)).astype(q.dtype)
    if mask is not None:
      mask = jnp.broadcast_to(mask, (b, h, ql, kl))
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias=bias,
                                        mask=mask, scale=scale, implementation=CUDNN_KERNEL)
  b, ql, h, d = q.shape
  g = k.shape[2]
  qg = q.reshape(b, ql, g, h // g, d)
  logits = jnp.einsum("bqgrd,bkgd->bgrqk", qg, k.astype(q.dtype),
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.reshape(bias.shape[0], g, h // g, bias.shape[2], bias.shape[3])
  if mask is not None:
    logits = jnp.where(mask[:, :, None], logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  out = jnp.einsum("bgrqk,bkgd->bqgrd", probs, v.astype(dtype))
  return out.reshape(b, ql, h, d)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, num_heads: int, num_kv_heads: int, *, cross: bool, rngs):
    d, dh, dt, g = cfg.d_model, cfg.head_dim_for(num_heads), cfg.compute_dtype, num_kv_heads
    q_std = cfg.init_std if cfg.init_std is not None else (d * dh) ** -0.5
    mk = lambda i, o, ia, oa, role, std, b: Dense(i, o, ia, oa, role=role, std=std, dtype=dt,
                                                  use_bias=b, rngs=rngs)
    self.q = mk((d,), (num_heads, dh), ("embed",), ("heads", "kv"), "q", q_std, cfg.q_bias)
    self.k = mk((d,), (g, dh), ("embed",), ("kv_heads", "kv"), "k", _std(cfg, d), cfg.k_bias)
    self.v = mk((d,), (g, dh), ("embed",), ("kv_heads", "kv"), "v", _std(cfg, d), cfg.v_bias)
    self.o = mk((num_heads, dh), (d,), ("heads", "kv"), ("embed",), "o",
                _std(cfg, num_heads * dh), cfg.o_bias)
    self.cfg = cfg
    self.rope = cfg.position == "rope" and not cross
    self.scale = dh ** -0.5 if cfg.attn_scale == "inv_sqrt" else 1.0
    self.inverse_layer = cfg.attn_scale_inverse_layer
    self.impl, self.dtype = cfg.attention_impl, cfg.compute_dtype

  def kv(self, x, positions=None):
    k, v = self.k(x), self.v(x)
    if self.rope:
      k = apply_rope(k, positions, rope_inv_freq(self.cfg))
    return k, v

  def __call__(self, x, mask, *, kv_x=None, kv=None, bias=None, positions=None, layer_idx=0,
               cache=None, cache_index=None, prefix=None):
    """x [B, Q, D]. Keys/values from ``kv`` (precomputed), else ``kv_x`` (cross), else x.

    ``cache`` (k, v) [B, T, G, D] is updated at ``cache_index`` (a scalar offset, or one
    buffer index per row for a single decoding step) and attended over in full.
    ``prefix`` (k, v) [P, G, D]: keys/values put in front of the keys (after the cache update,
    so the cache never holds them); ``mask`` and ``bias`` then cover P + K keys (Stack).
    Returns (output, new cache or None).
    """
    q = self.q(x)
    if self.rope:
      q = apply_rope(q, positions, rope_inv_freq(self.cfg))
    q = constrain(q, ("batch", "length", "heads", "kv"))
    k, v = kv if kv is not None else self.kv(x if kv_x is None else kv_x, positions)
    new_cache = None
    if cache is not None:
      ck, cv = cache
      if jnp.ndim(cache_index) == 0:
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
      else:  # one new token per row, each at its own index
        rows = jnp.arange(ck.shape[0])
        ck = ck.at[rows, cache_index].set(k[:, 0].astype(ck.dtype))
        cv = cv.at[rows, cache_index].set(v[:, 0].astype(cv.dtype))
      k, v = new_cache = (ck, cv)
    if prefix is not None:
      pk, pv = (jnp.broadcast_to(p.astype(k.dtype), (k.shape[0],) + p.shape) for p in prefix)
      k, v = jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1)
    k = constrain(k, ("batch", "length", "kv_heads", "kv"))
    v = constrain(v, ("batch", "length", "kv_heads", "kv"))
    scale = self.scale
    if self.inverse_layer:
      scale = scale / (layer_idx + 1)
    out = dot_product_attention(q, k, v, mask, bias, scale, self.impl, self.dtype)
    out = constrain(out, ("batch", "length", "heads", "kv"))
    return self.o(out), new_cache


class Block(nnx.Module):
  """Self-attention (+ cross-attention) + MLP with residuals, pre- or post-norm."""

  def __init__(self, cfg: ModelConfig, num_heads: int, d_ff: int, *, cross: bool, rngs):
    self.attn_norm = Norm(cfg)
    # Grouped keys/values are a decoder-only option; T5 and BART attention is multi-head.
    kv_heads = num_heads if cfg.is_encoder_decoder else cfg.kv_heads
    self.attn = Attention(cfg, num_heads, kv_heads, cross=False, rngs=rngs)
    if cross:
      self.cross_attn_norm = Norm(cfg)
      self.cross_attn = Attention(cfg, num_heads, num_heads, cross=True, rngs=rngs)
    self.mlp_norm = Norm(cfg)
    self.mlp = MLP(cfg, d_ff, rngs=rngs)
    self.has_cross = cross
    self.pre = cfg.norm_position == "pre"
    self.windowed = cfg.sliding_window is not None
    self.rate = cfg.dropout_rate

  def _sublayer(self, x, norm, fn, rng):
    if self.pre:
      return x + dropout(fn(norm(x)), self.rate, rng)
    return norm(x + dropout(fn(x), self.rate, rng))

  def __call__(self, x, inp: AttentionInputs, layer_idx, sliding, cache=None, cross_kv=None,
               rng=None, prefix=None):
    r = list(jax.random.split(rng, 4)) if rng is not None else [None] * 4
    mask = inp.mask
    if self.windowed:
      mask = jnp.where(sliding, inp.window_mask, inp.mask) if not isinstance(sliding, bool) \
          else (inp.window_mask if sliding else inp.mask)
    new_cache = []

    def self_attn(h):
      out, c = self.attn(h, mask, bias=inp.bias, positions=inp.positions, layer_idx=layer_idx,
                         cache=cache, cache_index=inp.cache_index, prefix=prefix)
      new_cache.append(c)
      return out

    x = self._sublayer(x, self.attn_norm, self_attn, r[0])
    if self.has_cross:
      x = self._sublayer(x, self.cross_attn_norm, lambda h: self.cross_attn(
          h, inp.cross_mask, kv_x=inp.enc, kv=cross_kv)[0], r[1])
    x = self._sublayer(x, self.mlp_norm, lambda h: self.mlp(h, r[2]), r[3])
    return constrain(x, ("batch", "length", "embed")), new_cache[0]


class Stack(nnx.Module):
  """Positions, embedding norm, the layers, final norm. ``kind``: "encoder", "decoder" (with
  cross-attention) or "decoder_only".

  ``kv_prefix`` is the prefix-tuning hook: when set, ``kv_prefix()`` returns (k, v), each
  [layers, P, kv_heads, head_dim], put in front of every self-attention's keys/values. As in
  Hugging Face's past-key-values path, the prefix takes positions 0..P-1: token positions are
  shifted by P (learned positions, RoPE, T5 buckets), prefix keys get no RoPE, every query
  attends to the whole prefix, except that sliding-window layers hide prefix keys at least
  ``window`` positions before the query (as transformers does).
  """

  def __init__(self, cfg: ModelConfig, kind: str, *, rngs):
    self.cfg, self.kind = cfg, kind
    n, heads, d_ff = cfg.stack_shape("decoder" if kind != "encoder" else "encoder")
    self.num_heads = heads
    dt = cfg.compute_dtype
    if cfg.position == "learned":
      self.positions = Embed(cfg.max_position_embeddings + cfg.position_offset, cfg.d_model,
                             std=cfg.init_std or 0.02, axes=(None, "embed"), dtype=dt, rngs=rngs)
    if cfg.position == "relative":
      self.relative_bias = Embed(cfg.relative_buckets, heads, std=cfg.d_model ** -0.5,
                                 axes=("relpos_buckets", "heads"), dtype=jnp.float32, rngs=rngs)
    if cfg.embed_norm:
      self.embed_norm = Norm(cfg)
    self.layers = nnx.List([Block(cfg, heads, d_ff, cross=kind == "decoder", rngs=rngs)
                            for _ in range(n)])
    if cfg.final_norm:
      self.final_norm = Norm(cfg)
    sliding = cfg.sliding_layers if cfg.sliding_layers is not None else (True,) * n
    self.sliding = tuple(bool(s) for s in sliding) if kind != "encoder" else (False,) * n
    self.kv_prefix = nnx.data(None)

  @property
  def prefix_length(self) -> int:
    return 0 if self.kv_prefix is None else int(self.kv_prefix.length)

  def position_bias(self, q_pos, k_pos):
    """T5 relative bias [B|1, H, Q, K] (float32) from query and key positions [B|1, Q|K]."""
    rel = k_pos[:, None, :] - q_pos[:, :, None]
    buckets = relative_position_bucket(rel, self.kind == "encoder", self.cfg.relative_buckets,
                                       self.cfg.relative_max_distance)
    vals = jnp.take(self.relative_bias.embedding[...], buckets, axis=0)   # B, Q, K, H
    return jnp.transpose(vals, (0, 3, 1, 2)).astype(jnp.float32)

  def embed_positions(self, x, positions):
    cfg = self.cfg
    if cfg.position == "learned":
      x = x + self.positions(positions + cfg.position_offset)
    if cfg.embed_norm:
      x = self.embed_norm(x)
    return x

  def check_length(self, n: int):
    """A learned position table has a maximum length (shapes are static: a Python check)."""
    limit = self.cfg.max_position_embeddings
    n += self.prefix_length
    if self.cfg.position == "learned" and n > limit:
      raise ValueError(f"sequence of {n} positions (prefix included) exceeds "
                       f"max_position_embeddings={limit}")

  def __call__(self, x, inp: AttentionInputs, *, positions, caches=None, cross_kvs=None,
               rng=None):
    """x [B, L, D] embedded tokens; positions [B, L]; caches: {"k", "v"} stacked per layer
    [N, B, T, G, D] (decoding) or None; cross_kvs likewise for precomputed cross keys/values.
    Returns (hidden states, new caches or None)."""
    cfg = self.cfg
    n = len(self.layers)
    keys = jax.random.split(rng, n + 2) if rng is not None else None
    prefix, p = None, self.prefix_length
    if p:
      prefix = self.kv_prefix()
      positions = positions + p
      inp = _prefix_inputs(inp, positions, p, cfg.sliding_window)
    x = self.embed_positions(x, positions)
    x = dropout(x, cfg.dropout_rate, None if keys is None else keys[n])
    x = constrain(x, ("batch", "length", "embed"))
    if cfg.position == "relative":
      k_pos = positions if inp.cache_index is None else \
          jnp.arange(caches["k"].shape[2])[None] + p
      if p:  # prefix keys sit at positions 0..P-1
        k_pos = jnp.concatenate(
            [jnp.broadcast_to(jnp.arange(p)[None], (k_pos.shape[0], p)), k_pos], axis=1)
      inp = dataclasses.replace(inp, bias=self.position_bias(positions, k_pos))
    remat = cfg.remat if caches is None else "none"   # nothing to save while decoding
    if cfg.scan_layers:
      x, new = self._scan(x, inp, caches, cross_kvs, keys, remat, prefix)
    else:
      new = []
      for i, layer in enumerate(self.layers):
        c = None if caches is None else (caches["k"][i], caches["v"][i])
        ckv = None if cross_kvs is None else (cross_kvs["k"][i], cross_kvs["v"][i])
        x, nc = _remat_call(layer, remat, x, inp, i, self.sliding[i], c, ckv,
                            None if keys is None else keys[i],
                            None if prefix is None else (prefix[0][i], prefix[1][i]))
        new.append(nc)
      new = None if caches is None else {"k": jnp.stack([c[0] for c in new]),
                                         "v": jnp.stack([c[1] for c in new])}
    if cfg.final_norm:
      x = self.final_norm(x)
    x = dropout(x, cfg.dropout_rate, None if keys is None else keys[n + 1])
    return x, new

  def _scan(self, x, inp, caches, cross_kvs, keys, remat, prefix=None):
    """The layers as one jax.lax.scan over their stacked weights (one compiled layer)."""
    graphdefs, states = zip(*(nnx.split(layer) for layer in self.layers))
    if any(g != graphdefs[0] for g in graphdefs[1:]):
      raise ValueError("scan_layers needs identical layers, but a tuning method attached "
                       "different variables to different layers; set scan_layers=False")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    n = len(self.layers)
    xs = {"state": stacked, "idx": jnp.arange(n), "sliding": jnp.asarray(self.sliding),
          "cache": None if caches is None else (caches["k"], caches["v"]),
          "cross": None if cross_kvs is None else (cross_kvs["k"], cross_kvs["v"]),
          "rng": None if keys is None else keys[:n], "prefix": prefix}
    graphdef = graphdefs[0]

    def body(x, s):
      layer = nnx.merge(graphdef, s["state"])
      return layer(x, inp, s["idx"], s["sliding"], s["cache"], s["cross"], s["rng"], s["prefix"])

    if remat != "none":
      body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
    x, new = jax.lax.scan(body, x, xs)
    return x, None if caches is None else {"k": new[0], "v": new[1]}


def _prefix_inputs(inp: AttentionInputs, positions, p: int, window: int | None):
  """Self-attention inputs with P prefix keys in front: query positions shifted (RoPE), masks
  widened (prefix keys sit at positions 0..P-1: always visible, windows permitting)."""

  def widen(mask, cols):
    b = max(mask.shape[0], cols.shape[0])
    cols = jnp.broadcast_to(cols, (b,) + cols.shape[1:3] + (p,))
    return jnp.concatenate([cols, jnp.broadcast_to(mask, (b,) + mask.shape[1:])], axis=-1)

  q = positions.shape[1]
  out = dict(mask=widen(inp.mask, jnp.ones((1, 1, q, p), bool)))
  if inp.positions is not None:
    out["positions"] = inp.positions + p
  if inp.window_mask is not None:
    near = positions[:, :, None] - jnp.arange(p)[None, None] < window
    out["window_mask"] = widen(inp.window_mask, near[:, None])
  return dataclasses.replace(inp, **out)


def _remat_call(layer, remat, x, *args):
  """Calls one layer, rematerialised by ``remat`` (layer index and window flag stay static)."""
  if remat == "none":
    return layer(x, *args)
  graphdef, state = nnx.split(layer)
  f = lambda state, x: nnx.merge(graphdef, state)(x, *args)
  return jax.checkpoint(f, policy=REMAT_POLICIES[remat])(state, x)


# ----------------------------------------------------------------------------- models
class LanguageModel(nnx.Module):
  """What both architectures share: the token embedding, the output head, the prompt slot."""

  def _init_common(self, cfg: ModelConfig, rngs):
    self.cfg = cfg
    dt = cfg.compute_dtype
    self.embed = Embed(cfg.vocab_size, cfg.d_model, std=cfg.embed_init_std, dtype=dt, rngs=rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = Dense((cfg.d_model,), (cfg.vocab_size,), ("embed",), ("vocab",),
                           role="head", std=cfg.init_std or 1.0, dtype=dt, rngs=rngs)
    if cfg.final_logits_bias:
      self.final_logits_bias = param(None, (cfg.vocab_size,), ("vocab",), "zeros")
    self.prompt = nnx.data(None)
    self.task_prompts = nnx.data(None)          # multi-task: [num_tasks, length, D]
    self.prompt_layout = PromptLayout()

  # -------------------------------------------------------------- soft prompt slot
  def set_prompt(self, value, *, placement: str | None = None, scope: str | None = None):
    """Attaches a trainable soft prompt [parts * length, d_model] (float32): one block of
    vectors per prompted stack, the encoder's first (see :class:`PromptLayout`). ``placement``
    and ``scope`` default to the current layout's; with per-task prompts attached, ``value``
    replaces the shared prompt (same shape)."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim != 2 or value.shape[1] != self.cfg.d_model:
      raise ValueError(f"prompt must have shape [length, {self.cfg.d_model}], got {value.shape}")
    old = self.prompt_layout
    layout = self._prompt_layout(old.placement if placement is None else placement,
                                 old.scope if scope is None else scope, old.combine)
    if value.shape[0] % layout.parts:
      raise ValueError(f"scope='both' prompts hold an encoder and a decoder block of one length; "
                       f"got {value.shape[0]} vectors")
    if self.task_prompts is not None and (value.shape != self.prompt.shape or layout != old):
      raise ValueError(f"this model has per-task prompts: a new shared prompt must keep shape "
                       f"{tuple(self.prompt.shape)} and the layout; got {tuple(value.shape)}")
    self.prompt = PromptParam(value, axes=("prompt", "embed"))
    self.prompt_layout = layout

  def set_task_prompts(self, shared, table, *, combine: str = "add", placement: str = "prefix",
                       scope: str = "encoder"):
    """Multi-task prompts: a shared prompt [parts * Ls, D] and a per-task table
    [num_tasks, parts * Lt, D]; row b of a batch gets ``combine(shared, table[task_ids[b]])``."""
    shared, table = jnp.asarray(shared, jnp.float32), jnp.asarray(table, jnp.float32)
    d = self.cfg.d_model
    if shared.ndim != 2 or table.ndim != 3 or shared.shape[1] != d or table.shape[2] != d:
      raise ValueError(f"task prompts must be shared [length, {d}] and table [tasks, length, {d}]"
                       f", got {shared.shape} and {table.shape}")
    layout = self._prompt_layout(placement, scope, combine)
    if shared.shape[0] % layout.parts or table.shape[1] % layout.parts:
      raise ValueError("scope='both' prompts hold an encoder and a decoder block of one length")
    if combine == "add" and shared.shape[0] != table.shape[1]:
      raise ValueError(f"combine='add' sums the shared and the task prompt: lengths must match, "
                       f"got {shared.shape[0]} and {table.shape[1]}")
    self.prompt = PromptParam(shared, axes=("prompt", "embed"))
    self.task_prompts = PromptParam(table, axes=("tasks", "prompt", "embed"))
    self.prompt_layout = layout

  def _prompt_layout(self, placement, scope, combine) -> PromptLayout:
    for name, value, options in (("placement", placement, PLACEMENTS), ("scope", scope, SCOPES),
                                 ("combine", combine, COMBINES)):
      if value not in options:
        raise ValueError(f"prompt {name} must be one of {options}, got {value!r}")
    if not self.cfg.is_encoder_decoder and scope != "encoder":
      raise ValueError(f"prompt scope {scope!r} needs an encoder-decoder model; a decoder-only "
                       f"model has one stack: scope='encoder' puts the prompt in its sequence")
    if placement == "after_bos" and self.cfg.bos_token_id is None:
      raise ValueError(f"prompt placement 'after_bos' needs a model with a bos_token_id; this "
                       f"{self.cfg.family} model has none (its inputs never start with BOS): "
                       f"use placement='prefix'")
    return PromptLayout(placement, scope, combine)

  @property
  def prompt_length(self) -> int:
    """Vectors in each row's prompt (all prompted stacks together)."""
    if self.prompt is None:
      return 0
    n = int(self.prompt.shape[0])
    if self.task_prompts is None:
      return n
    t = int(self.task_prompts.shape[1])
    return t if self.prompt_layout.combine == "add" else n + t

  @property
  def num_prompt_tasks(self) -> int:
    return 0 if self.task_prompts is None else int(self.task_prompts.shape[0])

  def prompt_vectors(self, batch: int, prompts=None, task_ids=None):
    """Each row's whole prompt [B, parts * P, D] (layout order), or None. ``prompts`` given per
    call ([B, n, D] or [n, D]: mixed-task batches) win; else the task table's combined prompt of
    each row's ``task_ids`` [B]; else the model's own prompt."""
    if prompts is not None:
      prompts = jnp.asarray(prompts)
      return prompts if prompts.ndim == 3 else \
          jnp.broadcast_to(prompts[None], (batch,) + prompts.shape)
    if self.task_prompts is not None:
      if task_ids is None:
        raise ValueError("this model has per-task prompts (method.prompt.tasks): pass task_ids "
                         "[batch] (the batch's 'task_ids' feature)")
      task = jnp.take(self.task_prompts[...], jnp.asarray(task_ids, jnp.int32), axis=0)
      shared = jnp.broadcast_to(self.prompt[...][None], (task.shape[0],) + self.prompt.shape)
      if self.prompt_layout.combine == "add":
        return shared + task
      k = self.prompt_layout.parts   # shared then task-specific, within each stack's block
      return jnp.concatenate([v for s, t in zip(jnp.split(shared, k, 1), jnp.split(task, k, 1))
                              for v in (s, t)], axis=1)
    if self.prompt is None:
      return None
    p = self.prompt[...]
    return jnp.broadcast_to(p[None], (batch,) + p.shape)

  def stack_prompts(self, stack: str, batch: int, prompts=None, task_ids=None):
    """The part of each row's prompt that ``stack`` ("encoder": the encoder, or a decoder-only
    model's sequence; "decoder") receives, [B, P, D], or None."""
    scope = self.prompt_layout.scope
    if scope not in (stack, "both"):
      return None
    full = self.prompt_vectors(batch, prompts, task_ids)
    if full is None or scope != "both":
      return full
    n = full.shape[1]
    if n % 2:
      raise ValueError(f"scope='both' prompts hold an encoder and a decoder half; got {n} vectors")
    return full[:, :n // 2] if stack == "encoder" else full[:, n // 2:]

  def prompt_index(self, ids, segment_ids):
    """[B]: where each row's (encoder-side) prompt starts, by the layout's placement."""
    placement, b = self.prompt_layout.placement, ids.shape[0]
    if placement == "prefix":
      return jnp.zeros((b,), jnp.int32)
    real = segment_ids > 0
    if placement == "after_bos":
      return ((ids[:, 0] == self.cfg.bos_token_id) & real[:, 0]).astype(jnp.int32)
    eos = (ids == self.cfg.eos_token_id) & real
    return jnp.where(eos.any(1), jnp.argmax(eos, 1), real.sum(1)).astype(jnp.int32)

  def embed_tokens(self, ids, segment_ids, positions, prompts=None, packed=False, task_ids=None):
    """Embeds ``ids`` and inserts the encoder-side soft prompt (from ``prompts`` [B, n, D] /
    [n, D] given per call, the task table and ``task_ids``, or the module's own; see
    :meth:`prompt_vectors`) at each row's placement. Returns (x, segment_ids, positions, P)."""
    x = self.embed(ids) * self.cfg.embed_scale
    b = x.shape[0]
    if (prompts is None and self.prompt is None) or self.prompt_layout.scope == "decoder":
      return x, segment_ids, positions, 0
    if packed:  # one prompt per row cannot serve several packed examples
      raise ValueError("soft prompts cannot be combined with packed sequences; set "
                       "data.pack=False for prompt tuning")
    prompts = self.stack_prompts("encoder", b, prompts, task_ids).astype(x.dtype)
    p = prompts.shape[1]
    if self.prompt_layout.placement != "prefix":
      x, segment_ids, positions = insert_prompt(x, segment_ids, prompts,
                                                self.prompt_index(ids, segment_ids))
      return x, segment_ids, positions, p
    x = jnp.concatenate([prompts, x], axis=1)
    segment_ids = jnp.concatenate([jnp.ones((b, p), segment_ids.dtype), segment_ids], axis=1)
    # Positions count from the prompt's first vector (as PEFT does).
    positions = jnp.broadcast_to(jnp.arange(p + ids.shape[1])[None], (b, p + ids.shape[1]))
    return x, segment_ids, positions, p

  def logits(self, h):
    cfg = self.cfg
    if cfg.logits_scale:
      h = h * (cfg.d_model ** -0.5)
    out = self.embed.attend(h) if cfg.tie_word_embeddings else self.lm_head(h)
    out = out.astype(jnp.float32)
    if cfg.final_logits_bias:
      out = out + self.final_logits_bias[...].astype(jnp.float32)
    return constrain(out, ("batch", "length", "vocab"))


def _default_positions(ids, positions):
  if positions is not None:
    return positions
  return jnp.broadcast_to(jnp.arange(ids.shape[1])[None], ids.shape)


def _cache(cfg: ModelConfig, batch: int, length: int):
  """Zeroed self-attention KV cache of the decoder stack, stacked per layer."""
  n, heads, _ = cfg.stack_shape("decoder")
  kv_heads = heads if cfg.is_encoder_decoder else cfg.kv_heads
  shape = (n, batch, length, kv_heads, cfg.head_dim_for(heads))
  return {"k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}


class EncoderDecoderLM(LanguageModel):
  """T5 / BART: encoder over (prompt +) inputs, decoder with cross-attention."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self._init_common(cfg, rngs)
    self.encoder = Stack(cfg, "encoder", rngs=rngs)
    self.decoder = Stack(cfg, "decoder", rngs=rngs)

  def encode(self, inputs, input_mask=None, prompts=None, rng=None, *, segment_ids=None,
             positions=None, task_ids=None):
    """Returns (encoder output [B, P+S, D], encoder segment ids [B, P+S]; 0 = padding)."""
    packed = segment_ids is not None
    if not packed:
      segment_ids = (inputs != self.cfg.pad_token_id) if input_mask is None else input_mask
      segment_ids = jnp.asarray(segment_ids).astype(jnp.int32)
    positions = _default_positions(inputs, positions)
    x, seg, pos, _ = self.embed_tokens(inputs, segment_ids, positions, prompts, packed, task_ids)
    return self.encode_embedded(x, seg, pos, rng), seg

  def encode_embedded(self, x, segment_ids, positions, rng=None):
    """The encoder over already embedded inputs x [B, L, D] (``inputs_embeds``)."""
    self.encoder.check_length(x.shape[1])
    inp = AttentionInputs(mask=segment_mask(segment_ids, segment_ids))
    out, _ = self.encoder(x, inp, positions=positions, rng=rng)
    return out

  def decode(self, decoder_inputs, enc, enc_segment_ids, rng=None, *, segment_ids=None,
             positions=None, prompts=None, task_ids=None):
    """Teacher-forced decoder logits [B, T, V] (a decoder-side prompt is prepended to the
    embedded decoder inputs; its positions' logits are dropped)."""
    b, t = decoder_inputs.shape
    y = self.embed(decoder_inputs) * self.cfg.embed_scale
    dec_prompts = None
    if prompts is not None or self.prompt is not None:
      dec_prompts = self.stack_prompts("decoder", b, prompts, task_ids)
    if dec_prompts is None:
      if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
      positions = _default_positions(decoder_inputs, positions)
      return self.decode_embedded(y, segment_ids, positions, enc, enc_segment_ids, rng)
    if segment_ids is not None:
      raise ValueError("soft prompts cannot be combined with packed sequences; set "
                       "data.pack=False for prompt tuning")
    p = dec_prompts.shape[1]
    y = jnp.concatenate([dec_prompts.astype(y.dtype), y], axis=1)
    pos = jnp.broadcast_to(jnp.arange(p + t)[None], (b, p + t))
    h = self._decoder_hidden(y, jnp.ones((b, p + t), jnp.int32), pos, enc, enc_segment_ids, rng)
    return self.logits(h[:, p:])

  def decode_embedded(self, y, segment_ids, positions, enc, enc_segment_ids, rng=None):
    """Teacher-forced decoder logits [B, L, V] over already embedded decoder inputs y."""
    return self.logits(self._decoder_hidden(y, segment_ids, positions, enc, enc_segment_ids,
                                            rng))

  def _decoder_hidden(self, y, segment_ids, positions, enc, enc_segment_ids, rng=None):
    t = y.shape[1]
    self.decoder.check_length(t)
    idx = jnp.arange(t)[None]
    window = self.cfg.sliding_window
    self_mask = causal_mask(idx, idx) & segment_mask(segment_ids, segment_ids)
    inp = AttentionInputs(
        mask=self_mask, positions=positions, enc=enc,
        window_mask=None if window is None else causal_mask(idx, idx, window) & self_mask,
        cross_mask=segment_mask(segment_ids, enc_segment_ids))
    h, _ = self.decoder(y, inp, positions=positions, rng=rng)
    return h

  def __call__(self, inputs, input_mask, decoder_inputs, prompts=None, rng=None, task_ids=None,
               **packing):
    """Logits [B, T, V]. ``packing``: input_segment_ids, input_positions, target_segment_ids,
    target_positions (seqio's packed features). ``task_ids`` [B] select per-task prompts."""
    r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
    enc, seg = self.encode(inputs, input_mask, prompts, r1, task_ids=task_ids,
                           segment_ids=packing.get("input_segment_ids"),
                           positions=packing.get("input_positions"))
    return self.decode(decoder_inputs, enc, seg, r2, prompts=prompts, task_ids=task_ids,
                       segment_ids=packing.get("target_segment_ids"),
                       positions=packing.get("target_positions"))

  # -------------------------------------------------------------- cached decoding
  def init_cache(self, batch: int, max_len: int, enc):
    """(self-attention cache, precomputed cross-attention keys/values), stacked per layer."""
    ks, vs = zip(*(layer.cross_attn.kv(enc) for layer in self.decoder.layers))
    return _cache(self.cfg, batch, max_len), {"k": jnp.stack(ks), "v": jnp.stack(vs)}

  def prefill_decoder(self, prompts, cache, cross_kv, enc_segment_ids):
    """Runs a decoder-side prompt [B, P, D] through the decoder into cache slots [0, P), so the
    first generated token (at index P) attends to it as in teacher forcing."""
    b, p = prompts.shape[:2]
    q_idx = jnp.arange(p)[None]
    k_idx = jnp.arange(cache["k"].shape[2])[None]
    window = self.cfg.sliding_window
    inp = AttentionInputs(
        mask=causal_mask(q_idx, k_idx),
        window_mask=None if window is None else causal_mask(q_idx, k_idx, window),
        positions=jnp.broadcast_to(q_idx, (b, p)), cache_index=0,
        cross_mask=(enc_segment_ids > 0)[:, None, None, :])
    _, cache = self.decoder(prompts.astype(self.cfg.compute_dtype), inp, positions=inp.positions,
                            caches=cache, cross_kvs=cross_kv)
    return cache

  def decode_step(self, token, index, cache, cross_kv, enc_segment_ids):
    """One decoder step: token [B] at position ``index`` (scalar). Returns (logits [B, V],
    new cache)."""
    max_len = cache["k"].shape[2]
    q_idx = jnp.reshape(index, (1, 1))
    k_idx = jnp.arange(max_len)[None]
    window = self.cfg.sliding_window
    inp = AttentionInputs(
        mask=causal_mask(q_idx, k_idx),
        window_mask=None if window is None else causal_mask(q_idx, k_idx, window),
        positions=jnp.broadcast_to(q_idx, (token.shape[0], 1)), cache_index=index,
        cross_mask=(enc_segment_ids > 0)[:, None, None, :])
    y = self.embed(token[:, None]) * self.cfg.embed_scale
    h, cache = self.decoder(y, inp, positions=inp.positions, caches=cache, cross_kvs=cross_kv)
    return self.logits(h)[:, 0], cache


class DecoderOnlyLM(LanguageModel):
  """GPT-2 / Llama / Mistral / Qwen2: one causal stack; a soft prompt is inserted into the
  embedded sequence (by its placement) and logits are returned for the token positions only."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self._init_common(cfg, rngs)
    self.decoder = Stack(cfg, "decoder_only", rngs=rngs)

  def _inputs(self, tokens, mask, segment_ids, positions, prompts, task_ids=None):
    """(x, segment ids, positions, P, where each row's prompt starts [B] or None)."""
    packed = segment_ids is not None
    if not packed:
      segment_ids = jnp.ones(tokens.shape, jnp.int32) if mask is None else \
          jnp.asarray(mask).astype(jnp.int32)
    positions = _default_positions(tokens, positions)
    x, seg, pos, p = self.embed_tokens(tokens, segment_ids, positions, prompts, packed, task_ids)
    self.decoder.check_length(x.shape[1])
    return x, seg, pos, p, (self.prompt_index(tokens, segment_ids) if p else None)

  def _masks(self, seg, q_idx, k_idx):
    window = self.cfg.sliding_window
    base = causal_mask(q_idx, k_idx) & segment_mask(seg, seg)
    return base, None if window is None else causal_mask(q_idx, k_idx, window) & base

  def __call__(self, tokens, mask=None, prompts=None, rng=None, *, segment_ids=None,
               positions=None, task_ids=None):
    """tokens [B, L] (right-padded, or packed with segment_ids/positions) -> logits [B, L, V]
    (at each token's own hidden state, wherever the prompt was inserted)."""
    x, seg, pos, p, at = self._inputs(tokens, mask, segment_ids, positions, prompts, task_ids)
    h = self._hidden(x, seg, pos, rng)
    if not p or self.prompt_layout.placement == "prefix":
      return self.logits(h[:, p:])
    # The token positions' hidden states only (the head never runs on the prompt's).
    return self.logits(jnp.take_along_axis(h, token_index(at, p, tokens.shape[1])[..., None],
                                           axis=1))

  def forward_embedded(self, x, segment_ids, positions, rng=None):
    """Logits [B, L, V] at every position of already embedded inputs x [B, L, D]."""
    return self.logits(self._hidden(x, segment_ids, positions, rng))

  def _hidden(self, x, segment_ids, positions, rng=None):
    self.decoder.check_length(x.shape[1])
    idx = jnp.arange(x.shape[1])[None]
    m, wm = self._masks(segment_ids, idx, idx)
    h, _ = self.decoder(x, AttentionInputs(mask=m, window_mask=wm, positions=positions),
                        positions=positions, rng=rng)
    return h

  # -------------------------------------------------------------- cached decoding
  def prefill(self, tokens, mask, max_new: int, prompts=None, task_ids=None):
    """Runs right-padded ``tokens`` (with the prompt inserted) through the stack, filling a KV
    cache of P + L + max_new entries. Returns (logits of each row's last real token [B, V],
    cache, next buffer index per row [B])."""
    x, seg, pos, _, _ = self._inputs(tokens, mask, None, None, prompts, task_ids)
    b, n = x.shape[:2]
    self.decoder.check_length(n + max_new)
    cache = _cache(self.cfg, b, n + max_new)
    idx = jnp.arange(n)[None]
    m, wm = self._masks(seg, idx, idx)
    # Keys beyond this call's length are empty cache slots: mask them.
    pad = lambda a: None if a is None else jnp.pad(a, ((0, 0), (0, 0), (0, 0), (0, max_new)))
    inp = AttentionInputs(mask=pad(m), window_mask=pad(wm), positions=pos, cache_index=0)
    h, cache = self.decoder(x, inp, positions=pos, caches=cache)
    last = jnp.sum(seg > 0, axis=1) - 1
    return self.logits(h[jnp.arange(b), last][:, None])[:, 0], cache, last + 1

  def decode_step(self, token, index, cache):
    """token [B] at buffer index ``index`` [B] (its position). Returns (logits [B, V], cache)."""
    max_len = cache["k"].shape[2]
    q_idx = index[:, None]
    k_idx = jnp.arange(max_len)[None]
    window = self.cfg.sliding_window
    inp = AttentionInputs(
        mask=causal_mask(q_idx, k_idx),
        window_mask=None if window is None else causal_mask(q_idx, k_idx, window),
        positions=q_idx, cache_index=index)
    h, cache = self.decoder(self.embed(token[:, None]) * self.cfg.embed_scale, inp,
                            positions=q_idx, caches=cache)
    return self.logits(h)[:, 0], cache


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
  cls = EncoderDecoderLM if cfg.is_encoder_decoder else DecoderOnlyLM
  return cls(cfg, rngs=rngs)


# ----------------------------------------------------------------------------- decoding
def greedy_decode(model: LanguageModel, inputs, input_mask, max_decode_len: int, prompts=None,
                  task_ids=None):
  """Greedy decoding with a KV cache, for either architecture; stops once every row emitted
  EOS. Returns int32 [B, max_decode_len] (pad after EOS). Decoder-only models continue the
  right-padded ``inputs``. ``prompts`` / ``task_ids``: per-example prompts (see
  :meth:`LanguageModel.prompt_vectors`); a decoder-side prompt fills the decoder's cache first."""
  cfg = model.cfg
  b = inputs.shape[0]
  pad, eos = cfg.pad_token_id, cfg.eos_token_id
  if cfg.is_encoder_decoder:
    enc, seg = model.encode(inputs, input_mask, prompts, task_ids=task_ids)
    dec_prompts = None
    if prompts is not None or model.prompt is not None:
      dec_prompts = model.stack_prompts("decoder", b, prompts, task_ids)
    p = 0 if dec_prompts is None else dec_prompts.shape[1]
    if p:
      model.decoder.check_length(p + max_decode_len)
    cache, cross = model.init_cache(b, p + max_decode_len, enc)
    if p:
      cache = model.prefill_decoder(dec_prompts, cache, cross, seg)
    step = lambda tok, i, cache: model.decode_step(tok, i + p, cache, cross, seg)
    first = jnp.full((b,), cfg.decoder_start_token_id, jnp.int32)
    state = (first, None)
  else:
    logits, cache, index = model.prefill(inputs, input_mask, max_decode_len, prompts, task_ids)
    step = lambda tok, i, cache: model.decode_step(tok, index + i - 1, cache)
    state = (None, jnp.argmax(logits, axis=-1).astype(jnp.int32))
  out = jnp.full((b, max_decode_len), pad, jnp.int32)
  done = jnp.zeros((b,), bool)

  def emit(i, nxt, out, done):
    nxt = jnp.where(done, pad, nxt)
    return out.at[:, i].set(nxt), done | (nxt == eos)

  if not cfg.is_encoder_decoder:  # the prefill already predicted the first new token
    out, done = emit(0, state[1], out, done)
    tok, start = state[1], 1
  else:
    tok, start = state[0], 0

  def cond(carry):
    i, _, _, _, done = carry
    return (i < max_decode_len) & ~jnp.all(done)

  def body(carry):
    i, tok, cache, out, done = carry
    logits, cache = step(tok, i, cache)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    out, done = emit(i, nxt, out, done)
    return i + 1, nxt, cache, out, done

  _, _, _, out, _ = jax.lax.while_loop(cond, body, (jnp.int32(start), tok, cache, out, done))
  return out


# ----------------------------------------------------------------------------- init
def init_random(cfg: ModelConfig, seed: int = 0, param_dtype=jnp.float32) -> LanguageModel:
  """A randomly initialised model built parameter by parameter from each weight's ``init``
  metadata (same distributions as the constructor): no single giant init program to compile,
  and each weight is cast to ``param_dtype`` as it is made (large benchmark models)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))))
  key = jax.random.PRNGKey(seed)
  for i, (_, var) in enumerate(nnx.to_flat_state(state)):
    init = var.get_metadata().get("init", "zeros")
    shape = tuple(var.shape)
    if init == "ones":
      value = jnp.ones(shape, param_dtype)
    elif init == "zeros":
      value = jnp.zeros(shape, param_dtype)
    else:
      value = (init[1] * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
               ).astype(param_dtype)
    var.set_value(value)
  return nnx.merge(graphdef, state)
