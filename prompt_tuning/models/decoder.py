"""Flax NNX decoder-only language models, numerically matching transformers' PyTorch ones.

Two flavours in one configurable module:
  * ``gpt2``:  learned absolute positions, LayerNorm with bias, GELU MLP, biased projections,
               output head tied to the token embedding (``GPT2LMHeadModel``);
  * ``llama``: rotary position embeddings, RMSNorm, SwiGLU MLP, multi-query / grouped-query
               attention (``num_kv_heads`` < ``num_heads``), untied head (``LlamaForCausalLM``).

Prompt tuning prepends the soft prompt to the embedded sequence (positions count from the
prompt's first vector); the loss is computed only on target tokens (see trainer).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning.models.layers import (DenseGeneral, Embed, LayerNorm, RMSNorm,
                                         SoftPromptMixin, activation, constrain, dropout)

NEG_INF = -1e9


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  flavour: str = "llama"                # "gpt2" | "llama"
  vocab_size: int = 32000
  d_model: int = 512
  num_layers: int = 4
  num_heads: int = 8
  num_kv_heads: int | None = None       # None = num_heads (MHA); 1 = MQA; else GQA
  head_dim: int | None = None
  d_ff: int = 1376
  max_position_embeddings: int = 2048
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  activation: str = "silu"
  attention_bias: bool = False
  mlp_bias: bool = False
  tie_word_embeddings: bool = False
  dropout_rate: float = 0.0
  pad_token_id: int = 0
  eos_token_id: int = 1
  dtype: str = "float32"
  remat: str = "none"
  architecture: str = dataclasses.field(default="decoder_only", init=False)

  def __post_init__(self):
    if self.flavour not in ("gpt2", "llama"):
      raise ValueError(f"flavour must be 'gpt2' or 'llama', got {self.flavour!r}")
    kv = self.kv_heads
    if self.num_heads % kv:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={kv}")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dh(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kw):
    unknown = set(kw) - {f.name for f in dataclasses.fields(self) if f.init}
    if unknown:
      raise ValueError(f"unknown DecoderConfig field(s): {sorted(unknown)}")
    return dataclasses.replace(self, **kw)


PRESETS = {
    "gpt2": DecoderConfig(flavour="gpt2", vocab_size=50257, d_model=768, num_layers=12,
                          num_heads=12, d_ff=3072, max_position_embeddings=1024,
                          activation="gelu_new", attention_bias=True, mlp_bias=True,
                          tie_word_embeddings=True, eos_token_id=50256, pad_token_id=50256),
    "tiny-gpt2": DecoderConfig(flavour="gpt2", vocab_size=256, d_model=64, num_layers=2,
                               num_heads=4, d_ff=256, max_position_embeddings=512,
                               activation="gelu_new", attention_bias=True, mlp_bias=True,
                               tie_word_embeddings=True),
    "tiny-llama": DecoderConfig(flavour="llama", vocab_size=256, d_model=64, num_layers=2,
                                num_heads=4, num_kv_heads=2, d_ff=128),
}


def rope(x, positions, theta: float):
  """Rotary embedding, rotate-half convention (as transformers' Llama). x: [B, L, H, D]."""
  d = x.shape[-1]
  inv = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  freqs = positions[..., None].astype(jnp.float32) * inv            # [B, L, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]     # [B, L, 1, D]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


class SelfAttention(nnx.Module):

  def __init__(self, cfg: DecoderConfig, *, rngs):
    d, h, k, dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dh
    dt, b = cfg.compute_dtype, cfg.attention_bias
    self.q = DenseGeneral((d,), (h, dh), ("embed",), ("heads", "kv"), rngs=rngs, std=0.02,
                          dtype=dt, use_bias=b)
    self.k = DenseGeneral((d,), (k, dh), ("embed",), ("kv_heads", "kv"), rngs=rngs, std=0.02,
                          dtype=dt, use_bias=b)
    self.v = DenseGeneral((d,), (k, dh), ("embed",), ("kv_heads", "kv"), rngs=rngs, std=0.02,
                          dtype=dt, use_bias=b)
    self.o = DenseGeneral((h, dh), (d,), ("heads", "kv"), ("embed",), rngs=rngs, std=0.02,
                          dtype=dt, use_bias=b)
    self.cfg = cfg

  def __call__(self, x, positions, bias):
    cfg = self.cfg
    q, k, v = self.q(x), self.k(x), self.v(x)
    if cfg.flavour == "llama":
      q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    rep = cfg.num_heads // cfg.kv_heads
    if rep > 1:  # grouped-query attention: each kv head serves `rep` query heads
      k = jnp.repeat(k, rep, axis=2)
      v = jnp.repeat(v, rep, axis=2)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (cfg.dh ** -0.5) + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return self.o(out)


class MLP(nnx.Module):

  def __init__(self, cfg: DecoderConfig, *, rngs):
    d, f, dt, b = cfg.d_model, cfg.d_ff, cfg.compute_dtype, cfg.mlp_bias
    self.gated = cfg.flavour == "llama"
    if self.gated:
      self.wi_0 = DenseGeneral((d,), (f,), ("embed",), ("mlp",), rngs=rngs, std=0.02, dtype=dt,
                               use_bias=b)
      self.wi_1 = DenseGeneral((d,), (f,), ("embed",), ("mlp",), rngs=rngs, std=0.02, dtype=dt,
                               use_bias=b)
    else:
      self.wi = DenseGeneral((d,), (f,), ("embed",), ("mlp",), rngs=rngs, std=0.02, dtype=dt,
                             use_bias=b)
    self.wo = DenseGeneral((f,), (d,), ("mlp",), ("embed",), rngs=rngs, std=0.02, dtype=dt,
                           use_bias=b)
    self.act = activation(cfg.activation)

  def __call__(self, x):
    h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
    return self.wo(constrain(h, ("batch", "length", "mlp")))


class Block(nnx.Module):

  def __init__(self, cfg: DecoderConfig, *, rngs):
    norm = (lambda: LayerNorm(cfg.d_model, cfg.norm_eps, cfg.compute_dtype)) \
        if cfg.flavour == "gpt2" else (lambda: RMSNorm(cfg.d_model, cfg.norm_eps, cfg.compute_dtype))
    self.attn_norm = norm()
    self.attn = SelfAttention(cfg, rngs=rngs)
    self.mlp_norm = norm()
    self.mlp = MLP(cfg, rngs=rngs)
    self.rate = cfg.dropout_rate

  def __call__(self, x, positions, bias, rng=None):
    r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
    x = x + dropout(self.attn(self.attn_norm(x), positions, bias), self.rate, r1)
    x = x + dropout(self.mlp(self.mlp_norm(x)), self.rate, r2)
    return constrain(x, ("batch", "length", "embed"))


class DecoderLM(SoftPromptMixin, nnx.Module):

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = cfg.compute_dtype
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, std=0.02, dtype=dt)
    if cfg.flavour == "gpt2":
      self.positions = Embed(cfg.max_position_embeddings, cfg.d_model, rngs=rngs, std=0.01,
                             axes=(None, "embed"), dtype=dt)
      self.final_norm = LayerNorm(cfg.d_model, cfg.norm_eps, dt)
    else:
      self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, dt)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    if not cfg.tie_word_embeddings:
      self.lm_head = DenseGeneral((cfg.d_model,), (cfg.vocab_size,), ("embed",), ("vocab",),
                                  rngs=rngs, std=0.02, dtype=dt)
    self.prompt = nnx.data(None)

  @property
  def shared(self):  # the token embedding (prompt init samples from it)
    return self.embed

  def __call__(self, tokens, mask=None, prompts=None, rng=None):
    """tokens [B, L] (right-padded), mask [B, L]; returns logits [B, L, V] for the token
    positions (the soft prompt, if any, is prepended internally)."""
    cfg = self.cfg
    if mask is None:
      mask = jnp.ones(tokens.shape, jnp.int32)
    x, mask, p = self.prepend_prompt(self.embed(tokens), mask, prompts)
    b, n = x.shape[0], x.shape[1]
    if n > cfg.max_position_embeddings:
      raise ValueError(f"sequence of {n} positions (prompt {p} + tokens {n - p}) exceeds "
                       f"max_position_embeddings={cfg.max_position_embeddings}")
    positions = jnp.broadcast_to(jnp.arange(n)[None], (b, n))
    if cfg.flavour == "gpt2":
      x = x + self.positions(positions)
    pos = jnp.arange(n)
    causal = pos[None, :] <= pos[:, None]
    allowed = causal[None, None] & (mask[:, None, None, :] > 0)
    bias = jnp.where(allowed, 0.0, NEG_INF).astype(jnp.float32)
    rngs = list(jax.random.split(rng, len(self.blocks))) if rng is not None else \
        [None] * len(self.blocks)
    for blk, r in zip(self.blocks, rngs):
      if cfg.remat != "none":
        g, st = nnx.split(blk)
        x = jax.checkpoint(lambda st, x: nnx.merge(g, st)(x, positions, bias, r))(st, x)
      else:
        x = blk(x, positions, bias, r)
    h = self.final_norm(x)[:, p:]
    if cfg.tie_word_embeddings:
      logits = self.embed.attend(h)
    else:
      logits = self.lm_head(h)
    return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))


def greedy_generate(model: DecoderLM, tokens, lengths, max_new_tokens: int, prompts=None):
  """Greedy continuation of right-padded ``tokens`` [B, L] with true ``lengths`` [B].

  Returns the generated ids [B, max_new_tokens] (pad after EOS). Each step runs the full
  (causal) forward pass over a fixed-size buffer, so one compilation serves every step.
  """
  cfg = model.cfg
  b, l = tokens.shape
  buf = jnp.concatenate([tokens, jnp.full((b, max_new_tokens), cfg.pad_token_id, tokens.dtype)], 1)
  lengths = jnp.asarray(lengths, jnp.int32)
  rows = jnp.arange(b)

  def body(i, carry):
    buf, out, done = carry
    cur = lengths + i
    mask = (jnp.arange(buf.shape[1])[None] < cur[:, None]).astype(jnp.int32)
    logits = model(buf, mask, prompts=prompts)
    nxt = jnp.argmax(logits[rows, cur - 1], axis=-1).astype(buf.dtype)
    nxt = jnp.where(done, cfg.pad_token_id, nxt)
    buf = buf.at[rows, cur].set(nxt)
    out = out.at[:, i].set(nxt)
    return buf, out, done | (nxt == cfg.eos_token_id)

  out = jnp.full((b, max_new_tokens), cfg.pad_token_id, jnp.int32)
  _, out, _ = jax.lax.fori_loop(0, max_new_tokens, body,
                                (buf, out, jnp.zeros((b,), bool)))
  return out


def get_config(name: str, **overrides) -> DecoderConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown decoder preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def config_from_hf(d: dict[str, Any], **overrides) -> DecoderConfig:
  mt = d.get("model_type")
  if mt == "gpt2":
    return DecoderConfig(
        flavour="gpt2", vocab_size=d["vocab_size"], d_model=d["n_embd"], num_layers=d["n_layer"],
        num_heads=d["n_head"], d_ff=d.get("n_inner") or 4 * d["n_embd"],
        max_position_embeddings=d["n_positions"], norm_eps=d.get("layer_norm_epsilon", 1e-5),
        activation=d.get("activation_function", "gelu_new"), attention_bias=True, mlp_bias=True,
        tie_word_embeddings=True, eos_token_id=d.get("eos_token_id", 50256),
        pad_token_id=d.get("pad_token_id") or d.get("eos_token_id", 50256), **overrides)
  if mt in ("llama", "mistral", "qwen2"):
    rp = d.get("rope_parameters") or {}
    if (rp.get("rope_type") or "default") != "default" or d.get("rope_scaling"):
      raise ValueError(f"rope scaling {rp or d.get('rope_scaling')} is not supported")
    return DecoderConfig(
        flavour="llama", vocab_size=d["vocab_size"], d_model=d["hidden_size"],
        num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
        num_kv_heads=d.get("num_key_value_heads"), head_dim=d.get("head_dim"),
        d_ff=d["intermediate_size"], max_position_embeddings=d.get("max_position_embeddings", 2048),
        norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=rp.get("rope_theta", d.get("rope_theta", 10000.0)),
        activation=d.get("hidden_act", "silu"), attention_bias=d.get("attention_bias", False),
        mlp_bias=d.get("mlp_bias", False), tie_word_embeddings=d.get("tie_word_embeddings", False),
        eos_token_id=d.get("eos_token_id") if isinstance(d.get("eos_token_id"), int) else 2,
        pad_token_id=d.get("pad_token_id") or 0, **overrides)
  raise ValueError(f"unsupported decoder-only model_type {mt!r} (gpt2, llama)")
