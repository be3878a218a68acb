"""Flax NNX T5 (v1.0 and v1.1 / LM-adapted) encoder-decoder.

Numerically follows ``transformers``' PyTorch ``T5ForConditionalGeneration``: RMS layer norm,
unscaled dot-product attention with bucketed relative position biases computed by the first
layer of each stack and shared by all layers, ReLU (v1.0) or gated-GELU (v1.1) feed-forward,
tied (v1.0, with the ``d_model ** -0.5`` output scaling) or untied (v1.1) output head.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning.models.layers import (DenseGeneral, Embed, RMSNorm, SoftPromptMixin,
                                         activation, constrain, dropout)

NEG_INF = -1e9


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: int | None = None
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"          # "relu" (v1.0) or "gated-gelu" (v1.1)
  tie_word_embeddings: bool = True          # output head = shared embedding
  scale_decoder_outputs: bool = True        # multiply decoder output by d_model**-0.5 (v1.0)
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  dtype: str = "float32"                    # compute dtype ("float32" or "bfloat16")
  remat: str = "none"                       # "none" | "full" | "dots" (save matmul outputs)
  attention_impl: str = "xla"               # "xla" (einsum) | "cudnn" (fused, GPU only)

  @property
  def n_decoder_layers(self) -> int:
    return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def act_name(self) -> str:
    name = self.feed_forward_proj.split("-")[-1]
    return "gelu_new" if name == "gelu" and self.is_gated else name

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kw) -> "T5Config":
    unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown T5Config field(s): {sorted(unknown)}")
    return dataclasses.replace(self, **kw)

  def __post_init__(self):
    if self.feed_forward_proj.split("-")[-1] not in ("relu", "gelu", "gelu_new", "silu"):
      raise ValueError(f"unsupported feed_forward_proj {self.feed_forward_proj!r}")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"remat must be 'none', 'full' or 'dots', got {self.remat!r}")
    if self.attention_impl not in ("xla", "cudnn"):
      raise ValueError(f"attention_impl must be 'xla' or 'cudnn', got {self.attention_impl!r}")

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "T5Config":
    """Reads a Hugging Face ``config.json`` dict (transformers 4 or 5 conventions)."""
    if "scale_decoder_outputs" in d:  # transformers >= 5: head always tied, scaling explicit.
      scale = bool(d["scale_decoder_outputs"])
      tie = True
    else:  # transformers 4: tie_word_embeddings=False means v1.1 (untied, unscaled).
      tie = bool(d.get("tie_word_embeddings", True))
      scale = tie
    return cls(
        vocab_size=d["vocab_size"], d_model=d["d_model"], d_kv=d["d_kv"], d_ff=d["d_ff"],
        num_layers=d["num_layers"], num_decoder_layers=d.get("num_decoder_layers"),
        num_heads=d["num_heads"],
        relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6),
        feed_forward_proj=d.get("feed_forward_proj", "relu"), tie_word_embeddings=tie,
        scale_decoder_outputs=scale, pad_token_id=d.get("pad_token_id", 0) or 0,
        eos_token_id=d.get("eos_token_id", 1) if d.get("eos_token_id") is not None else 1,
        decoder_start_token_id=d.get("decoder_start_token_id", 0) or 0, **overrides)

  @classmethod
  def from_json(cls, path, **overrides) -> "T5Config":
    with open(path) as f:
      return cls.from_hf_dict(json.load(f), **overrides)


def _v11(d_model, d_ff, layers, heads, **kw):
  return T5Config(d_model=d_model, d_ff=d_ff, num_layers=layers, num_heads=heads,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                  scale_decoder_outputs=False, **kw)


PRESETS: dict[str, T5Config] = {
    # T5 v1.0
    "t5-small": T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": T5Config(d_model=1024, d_ff=4096, num_layers=24, num_heads=16),
    # T5 v1.1 and LM-adapted (same shapes)
    "t5-v1_1-small": _v11(512, 1024, 8, 6),
    "t5-v1_1-base": _v11(768, 2048, 12, 12),
    "t5-v1_1-large": _v11(1024, 2816, 24, 16),
    "t5-v1_1-xl": _v11(2048, 5120, 24, 32),
    "t5-v1_1-xxl": _v11(4096, 10240, 24, 64),
    # Tiny models for tests and the embedded default job.
    "tiny": _v11(64, 128, 2, 4, d_kv=16, vocab_size=256),
    "tiny-v1_0": T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16,
                          vocab_size=256),
}


def get_config(name: str, **overrides) -> T5Config:
  if name not in PRESETS:
    raise ValueError(f"unknown T5 preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# ----------------------------------------------------------------------------- position bias
def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """Same bucketing as mesh-tensorflow / transformers."""
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


# ----------------------------------------------------------------------------- modules
class Attention(nnx.Module):

  def __init__(self, cfg: T5Config, *, rngs):
    d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv
    dt = cfg.compute_dtype
    self.q = DenseGeneral((d,), (h, k), ("embed",), ("heads", "kv"), rngs=rngs,
                          std=(d * k) ** -0.5, dtype=dt)
    self.k = DenseGeneral((d,), (h, k), ("embed",), ("heads", "kv"), rngs=rngs, std=d ** -0.5,
                          dtype=dt)
    self.v = DenseGeneral((d,), (h, k), ("embed",), ("heads", "kv"), rngs=rngs, std=d ** -0.5,
                          dtype=dt)
    self.o = DenseGeneral((h, k), (d,), ("heads", "kv"), ("embed",), rngs=rngs,
                          std=(h * k) ** -0.5, dtype=dt)
    self.impl = cfg.attention_impl
    self.dtype = dt

  def kv(self, x):
    return self.k(x), self.v(x)

  def __call__(self, x, kv_x=None, bias=None, kv=None, cache=None, cache_index=None):
    """x: [B, Q, D]; bias: additive, broadcastable to [B, H, Q, K].

    ``kv``: precomputed (k, v); ``cache``: (k_cache, v_cache) of [B, T, H, Dh] updated at
    ``cache_index`` (single-step decoding). Returns (out, new_cache).
    """
    q = constrain(self.q(x), ("batch", "length", "heads", "kv"))
    if kv is None:
      k, v = self.kv(x if kv_x is None else kv_x)
    else:
      k, v = kv
    new_cache = None
    if cache is not None:
      k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, cache_index, 0, 0))
      v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, cache_index, 0, 0))
      new_cache = (k, v)
    k = constrain(k, ("batch", "length", "heads", "kv"))
    v = constrain(v, ("batch", "length", "heads", "kv"))
    if self.impl == "cudnn":
      if bias is not None:  # cuDNN wants the bias at full [B, H, Q, K] size
        bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
        bias = bias.astype(q.dtype)
      out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias=bias,
                                         scale=1.0, implementation="cudnn")
    else:
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k.astype(q.dtype),
                          preferred_element_type=jnp.float32)
      if bias is not None:
        logits = logits + bias
      probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(self.dtype))
    out = constrain(out, ("batch", "length", "heads", "kv"))
    return self.o(out), new_cache


class FeedForward(nnx.Module):

  def __init__(self, cfg: T5Config, *, rngs):
    d, f = cfg.d_model, cfg.d_ff
    dt = cfg.compute_dtype
    self.gated = cfg.is_gated
    if self.gated:
      self.wi_0 = DenseGeneral((d,), (f,), ("embed",), ("mlp",), rngs=rngs, std=d ** -0.5, dtype=dt)
      self.wi_1 = DenseGeneral((d,), (f,), ("embed",), ("mlp",), rngs=rngs, std=d ** -0.5, dtype=dt)
    else:
      self.wi = DenseGeneral((d,), (f,), ("embed",), ("mlp",), rngs=rngs, std=d ** -0.5, dtype=dt)
    self.wo = DenseGeneral((f,), (d,), ("mlp",), ("embed",), rngs=rngs, std=f ** -0.5, dtype=dt)
    self.act = activation(cfg.act_name)
    self.rate = cfg.dropout_rate

  def __call__(self, x, rng=None):
    if self.gated:
      h = self.act(self.wi_0(x)) * self.wi_1(x)
    else:
      h = self.act(self.wi(x))
    h = constrain(h, ("batch", "length", "mlp"))
    h = dropout(h, self.rate, rng)
    return self.wo(h)


class Block(nnx.Module):

  def __init__(self, cfg: T5Config, is_decoder: bool, *, rngs):
    dt = cfg.compute_dtype
    eps = cfg.layer_norm_epsilon
    self.is_decoder = is_decoder
    self.self_attn_norm = RMSNorm(cfg.d_model, eps, dt)
    self.self_attn = Attention(cfg, rngs=rngs)
    if is_decoder:
      self.cross_attn_norm = RMSNorm(cfg.d_model, eps, dt)
      self.cross_attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, eps, dt)
    self.mlp = FeedForward(cfg, rngs=rngs)
    self.rate = cfg.dropout_rate

  def __call__(self, x, self_bias, enc=None, cross_bias=None, rng=None, cross_kv=None,
               cache=None, cache_index=None):
    rngs = list(jax.random.split(rng, 4)) if rng is not None else [None] * 4
    h, new_cache = self.self_attn(self.self_attn_norm(x), bias=self_bias, cache=cache,
                                  cache_index=cache_index)
    x = x + dropout(h, self.rate, rngs[0])
    if self.is_decoder:
      h, _ = self.cross_attn(self.cross_attn_norm(x), kv_x=enc, bias=cross_bias, kv=cross_kv)
      x = x + dropout(h, self.rate, rngs[1])
    h = self.mlp(self.mlp_norm(x), rngs[2])
    x = x + dropout(h, self.rate, rngs[3])
    x = constrain(x, ("batch", "length", "embed"))
    return x, new_cache


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _call_block(block: Block, remat: str, *args, **kwargs):
  if remat == "none":
    return block(*args, **kwargs)
  graphdef, state = nnx.split(block)

  def f(state, args, kwargs):
    return nnx.merge(graphdef, state)(*args, **kwargs)

  return jax.checkpoint(f, policy=_REMAT_POLICIES[remat])(state, args, kwargs)


class Stack(nnx.Module):

  def __init__(self, cfg: T5Config, is_decoder: bool, *, rngs):
    self.cfg = cfg
    self.is_decoder = is_decoder
    n = cfg.n_decoder_layers if is_decoder else cfg.num_layers
    self.relative_attention_bias = Embed(cfg.relative_attention_num_buckets, cfg.num_heads,
                                         rngs=rngs, std=cfg.d_model ** -0.5,
                                         axes=("relpos_buckets", "heads"))
    self.blocks = nnx.List([Block(cfg, is_decoder, rngs=rngs) for _ in range(n)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, cfg.compute_dtype)

  def position_bias(self, q_pos, k_pos):
    """[1, H, Q, K] float32 bias for query positions q_pos and key positions k_pos."""
    rel = k_pos[None, :] - q_pos[:, None]
    buckets = relative_position_bucket(rel, not self.is_decoder,
                                       self.cfg.relative_attention_num_buckets,
                                       self.cfg.relative_attention_max_distance)
    vals = jnp.take(self.relative_attention_bias.embedding[...], buckets, axis=0)  # Q,K,H
    return jnp.transpose(vals, (2, 0, 1))[None].astype(jnp.float32)

  def __call__(self, x, self_bias, enc=None, cross_bias=None, rng=None, cross_kv=None,
               cache=None, cache_index=None):
    n = len(self.blocks)
    rngs = list(jax.random.split(rng, n + 2)) if rng is not None else [None] * (n + 2)
    x = dropout(x, self.cfg.dropout_rate, rngs[-1])
    new_caches = []
    for i, block in enumerate(self.blocks):
      x, c = _call_block(block, self.cfg.remat if cache is None else "none", x, self_bias,
                         enc=enc, cross_bias=cross_bias, rng=rngs[i],
                         cross_kv=None if cross_kv is None else cross_kv[i],
                         cache=None if cache is None else cache[i], cache_index=cache_index)
      new_caches.append(c)
    x = self.final_norm(x)
    x = dropout(x, self.cfg.dropout_rate, rngs[-2])
    return x, (new_caches if cache is not None else None)


def mask_bias(mask):
  """[B, K] 0/1 mask -> additive [B, 1, 1, K] float32 bias."""
  return jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)


class T5(SoftPromptMixin, nnx.Module):
  """T5 encoder-decoder. Optional soft prompt (``self.prompt``) is prepended to the embedded
  encoder input, with the attention mask extended."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = cfg.compute_dtype
    self.shared = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, std=1.0, dtype=dt)
    self.encoder = Stack(cfg, False, rngs=rngs)
    self.decoder = Stack(cfg, True, rngs=rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = DenseGeneral((cfg.d_model,), (cfg.vocab_size,), ("embed",), ("vocab",),
                                  rngs=rngs, std=1.0, dtype=dt)
    self.prompt = nnx.data(None)

  def embed_inputs(self, input_ids, input_mask, prompts=None):
    """Embeds ids and prepends the soft prompt (see SoftPromptMixin)."""
    x, mask, _ = self.prepend_prompt(self.shared(input_ids), input_mask, prompts)
    return x, mask

  # -------------------------------------------------------------- forward
  def encode(self, input_ids, input_mask=None, prompts=None, rng=None):
    if input_mask is None:
      input_mask = (input_ids != self.cfg.pad_token_id).astype(jnp.int32)
    x, mask = self.embed_inputs(input_ids, input_mask, prompts)
    x = constrain(x, ("batch", "length", "embed"))
    s = x.shape[1]
    pos = jnp.arange(s)
    bias = self.encoder.position_bias(pos, pos) + mask_bias(mask)
    out, _ = self.encoder(x, bias, rng=rng)
    return out, mask

  def logits_from_hidden(self, h):
    if self.cfg.scale_decoder_outputs:
      h = h * (self.cfg.d_model ** -0.5)
    if self.cfg.tie_word_embeddings:
      logits = self.shared.attend(h)
    else:
      logits = self.lm_head(h)
    return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def decode(self, decoder_input_ids, enc, enc_mask, rng=None):
    y = self.shared(decoder_input_ids)
    t = y.shape[1]
    pos = jnp.arange(t)
    causal = jnp.where(pos[None, :] <= pos[:, None], 0.0, NEG_INF)[None, None]
    self_bias = self.decoder.position_bias(pos, pos) + causal
    h, _ = self.decoder(y, self_bias, enc=enc, cross_bias=mask_bias(enc_mask), rng=rng)
    return self.logits_from_hidden(h)

  def __call__(self, input_ids, input_mask, decoder_input_ids, prompts=None, rng=None):
    r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
    enc, enc_mask = self.encode(input_ids, input_mask, prompts, rng=r1)
    return self.decode(decoder_input_ids, enc, enc_mask, rng=r2)

  # -------------------------------------------------------------- incremental decoding
  def init_cache(self, batch: int, max_len: int, enc):
    """Self-attention KV cache plus precomputed cross-attention keys/values."""
    cfg = self.cfg
    shape = (batch, max_len, cfg.num_heads, cfg.d_kv)
    self_cache = [(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
                  for _ in range(cfg.n_decoder_layers)]
    cross_kv = [blk.cross_attn.kv(enc) for blk in self.decoder.blocks]
    return self_cache, cross_kv

  def decode_step(self, token, index, self_cache, cross_kv, enc_mask):
    """One decoder step: token [B] at position ``index``; returns (logits [B, V], cache)."""
    y = self.shared(token[:, None])
    max_len = self_cache[0][0].shape[1]
    k_pos = jnp.arange(max_len)
    q_pos = jnp.reshape(index, (1,))
    bias = self.decoder.position_bias(q_pos, k_pos)
    bias = bias + jnp.where(k_pos <= index, 0.0, NEG_INF)[None, None, None, :]
    h, new_cache = self.decoder(y, bias, cross_bias=mask_bias(enc_mask), cross_kv=cross_kv,
                                cache=self_cache, cache_index=index)
    return self.logits_from_hidden(h)[:, 0], new_cache


def init_random(cfg: T5Config, seed: int = 0, param_dtype=jnp.float32) -> T5:
  """A randomly initialised T5 built parameter by parameter (for large benchmark models).

  Same distributions as the constructor (normal with std 1/sqrt(fan_in), embeddings std 1, norm
  scales 1), but each parameter is drawn by its own small program (cached per shape), avoiding
  the long compile of one giant init program, and cast to ``param_dtype`` as it is made.
  """
  abstract = nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  key = jax.random.PRNGKey(seed)
  for i, (path, var) in enumerate(nnx.to_flat_state(state)):
    shape = tuple(var.shape)
    name = path[-1]
    if name == "scale":
      value = jnp.ones(shape, param_dtype)
    else:
      if name == "embedding":
        std = 1.0 if path[0] == "shared" else cfg.d_model ** -0.5
      elif name == "kernel" and path[0] == "lm_head":
        std = 1.0
      else:  # DenseGeneral kernels: output is the trailing axis/axes
        axes = var.get_metadata().get("axes") or ()
        n_out = 1 if axes and axes[-1] == "embed" or len(shape) == 2 else 2
        std = math.prod(shape[:-n_out]) ** -0.5
      value = (jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32) * std
               ).astype(param_dtype)
    var.set_value(value)
  return nnx.merge(graphdef, state)


def greedy_decode(model: T5, input_ids, input_mask, max_decode_len: int, prompts=None):
  """Greedy decoding with a KV cache; stops early once every sequence emitted EOS.

  Returns int32 [B, max_decode_len] token ids (padded with pad_token_id after EOS).
  """
  cfg = model.cfg
  enc, enc_mask = model.encode(input_ids, input_mask, prompts)
  b = input_ids.shape[0]
  self_cache, cross_kv = model.init_cache(b, max_decode_len, enc)
  tokens = jnp.full((b, max_decode_len + 1), cfg.pad_token_id, jnp.int32)
  tokens = tokens.at[:, 0].set(cfg.decoder_start_token_id)
  done = jnp.zeros((b,), bool)

  def cond(carry):
    i, _, _, done = carry
    return jnp.logical_and(i < max_decode_len, jnp.logical_not(jnp.all(done)))

  def body(carry):
    i, tokens, cache, done = carry
    logits, cache = model.decode_step(tokens[:, i], i, cache, cross_kv, enc_mask)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, cfg.pad_token_id, nxt)
    done = jnp.logical_or(done, nxt == cfg.eos_token_id)
    tokens = tokens.at[:, i + 1].set(nxt)
    return i + 1, tokens, cache, done

  _, tokens, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens, self_cache, done))
  return tokens[:, 1:]
