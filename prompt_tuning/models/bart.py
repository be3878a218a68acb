"""Flax NNX BART (``BartForConditionalGeneration``): learned positions (offset 2),
layernorm-embedding, post-layer-norm blocks, biased projections, scaled queries, tied output head
plus ``final_logits_bias``. Same interface as :class:`T5` (encode / decode / init_cache /
decode_step), so the trainer and :func:`t5.greedy_decode` serve both."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning.models.layers import (DenseGeneral, Embed, LayerNorm, SoftPromptMixin,
                                         activation, constrain, dropout, param)
from prompt_tuning.models.t5 import NEG_INF, mask_bias

POS_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class BartConfig:
  vocab_size: int = 50265
  d_model: int = 768
  encoder_layers: int = 6
  decoder_layers: int = 6
  encoder_attention_heads: int = 12
  decoder_attention_heads: int = 12
  encoder_ffn_dim: int = 3072
  decoder_ffn_dim: int = 3072
  max_position_embeddings: int = 1024
  activation_function: str = "gelu"
  scale_embedding: bool = False
  dropout_rate: float = 0.0
  pad_token_id: int = 1
  eos_token_id: int = 2
  decoder_start_token_id: int = 2
  dtype: str = "float32"
  remat: str = "none"

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kw):
    unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown BartConfig field(s): {sorted(unknown)}")
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf_dict(cls, d, **overrides):
    return cls(vocab_size=d["vocab_size"], d_model=d["d_model"],
               encoder_layers=d["encoder_layers"], decoder_layers=d["decoder_layers"],
               encoder_attention_heads=d["encoder_attention_heads"],
               decoder_attention_heads=d["decoder_attention_heads"],
               encoder_ffn_dim=d["encoder_ffn_dim"], decoder_ffn_dim=d["decoder_ffn_dim"],
               max_position_embeddings=d["max_position_embeddings"],
               activation_function=d.get("activation_function", "gelu"),
               scale_embedding=d.get("scale_embedding", False),
               pad_token_id=d.get("pad_token_id", 1), eos_token_id=d.get("eos_token_id", 2),
               decoder_start_token_id=d.get("decoder_start_token_id", 2), **overrides)


PRESETS = {
    "bart-base": BartConfig(),
    "bart-large": BartConfig(d_model=1024, encoder_layers=12, decoder_layers=12,
                             encoder_attention_heads=16, decoder_attention_heads=16,
                             encoder_ffn_dim=4096, decoder_ffn_dim=4096),
    "tiny-bart": BartConfig(vocab_size=256, d_model=64, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=4, decoder_attention_heads=4,
                            encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
                            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
}


class Attention(nnx.Module):

  def __init__(self, d, h, dt, *, rngs):
    k = d // h
    mk = lambda i, o, ia, oa: DenseGeneral(i, o, ia, oa, rngs=rngs, std=0.02, dtype=dt,
                                           use_bias=True)
    self.q = mk((d,), (h, k), ("embed",), ("heads", "kv"))
    self.k = mk((d,), (h, k), ("embed",), ("heads", "kv"))
    self.v = mk((d,), (h, k), ("embed",), ("heads", "kv"))
    self.o = mk((h, k), (d,), ("heads", "kv"), ("embed",))
    self.scale = k ** -0.5

  def kv(self, x):
    return self.k(x), self.v(x)

  def __call__(self, x, kv_x=None, bias=None, kv=None, cache=None, cache_index=None):
    q = self.q(x) * self.scale
    k, v = self.kv(x if kv_x is None else kv_x) if kv is None else kv
    new_cache = None
    if cache is not None:
      k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, cache_index, 0, 0))
      v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, cache_index, 0, 0))
      new_cache = (k, v)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(q.dtype))
    return self.o(constrain(out, ("batch", "length", "heads", "kv"))), new_cache


class Layer(nnx.Module):

  def __init__(self, cfg: BartConfig, is_decoder: bool, *, rngs):
    d, dt = cfg.d_model, cfg.compute_dtype
    h = cfg.decoder_attention_heads if is_decoder else cfg.encoder_attention_heads
    f = cfg.decoder_ffn_dim if is_decoder else cfg.encoder_ffn_dim
    self.is_decoder = is_decoder
    self.self_attn = Attention(d, h, dt, rngs=rngs)
    self.self_attn_norm = LayerNorm(d, 1e-5, dt)
    if is_decoder:
      self.cross_attn = Attention(d, h, dt, rngs=rngs)
      self.cross_attn_norm = LayerNorm(d, 1e-5, dt)
    self.mlp_wi = DenseGeneral((d,), (f,), ("embed",), ("mlp",), rngs=rngs, std=0.02, dtype=dt,
                               use_bias=True)
    self.mlp_wo = DenseGeneral((f,), (d,), ("mlp",), ("embed",), rngs=rngs, std=0.02, dtype=dt,
                               use_bias=True)
    self.mlp_norm = LayerNorm(d, 1e-5, dt)
    self.act = activation(cfg.activation_function)
    self.rate = cfg.dropout_rate

  def __call__(self, x, self_bias, enc=None, cross_bias=None, rng=None, cross_kv=None,
               cache=None, cache_index=None):
    r = list(jax.random.split(rng, 3)) if rng is not None else [None] * 3
    h, new_cache = self.self_attn(x, bias=self_bias, cache=cache, cache_index=cache_index)
    x = self.self_attn_norm(x + dropout(h, self.rate, r[0]))
    if self.is_decoder:
      h, _ = self.cross_attn(x, kv_x=enc, bias=cross_bias, kv=cross_kv)
      x = self.cross_attn_norm(x + dropout(h, self.rate, r[1]))
    h = self.mlp_wo(self.act(self.mlp_wi(x)))
    x = self.mlp_norm(x + dropout(h, self.rate, r[2]))
    return constrain(x, ("batch", "length", "embed")), new_cache


class Stack(nnx.Module):

  def __init__(self, cfg: BartConfig, is_decoder: bool, *, rngs):
    self.cfg = cfg
    self.positions = Embed(cfg.max_position_embeddings + POS_OFFSET, cfg.d_model, rngs=rngs,
                           std=0.02, axes=(None, "embed"), dtype=cfg.compute_dtype)
    self.embed_norm = LayerNorm(cfg.d_model, 1e-5, cfg.compute_dtype)
    n = cfg.decoder_layers if is_decoder else cfg.encoder_layers
    self.layers = nnx.List([Layer(cfg, is_decoder, rngs=rngs) for _ in range(n)])

  @property
  def blocks(self):
    return self.layers

  def __call__(self, x, positions, self_bias, enc=None, cross_bias=None, rng=None,
               cross_kv=None, cache=None, cache_index=None):
    if positions.shape[-1] + POS_OFFSET > self.positions.embedding.shape[0]:
      raise ValueError(f"sequence of {positions.shape[-1]} positions exceeds "
                       f"max_position_embeddings={self.cfg.max_position_embeddings}")
    x = self.embed_norm(x + self.positions(positions + POS_OFFSET))
    rngs = list(jax.random.split(rng, len(self.layers) + 1)) if rng is not None else \
        [None] * (len(self.layers) + 1)
    x = dropout(x, self.cfg.dropout_rate, rngs[-1])
    caches = []
    for i, layer in enumerate(self.layers):
      x, c = layer(x, self_bias, enc=enc, cross_bias=cross_bias, rng=rngs[i],
                   cross_kv=None if cross_kv is None else cross_kv[i],
                   cache=None if cache is None else cache[i], cache_index=cache_index)
      caches.append(c)
    return x, (caches if cache is not None else None)


class Bart(SoftPromptMixin, nnx.Module):

  def __init__(self, cfg: BartConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.shared = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, std=0.02, dtype=cfg.compute_dtype)
    self.encoder = Stack(cfg, False, rngs=rngs)
    self.decoder = Stack(cfg, True, rngs=rngs)
    self.final_logits_bias = param(None, (cfg.vocab_size,), ("vocab",), init="zeros")
    self.prompt = nnx.data(None)

  @property
  def embed_scale(self):
    return self.cfg.d_model ** 0.5 if self.cfg.scale_embedding else 1.0

  def encode(self, input_ids, input_mask=None, prompts=None, rng=None):
    if input_mask is None:
      input_mask = (input_ids != self.cfg.pad_token_id).astype(jnp.int32)
    # As PEFT: prompt vectors join the input embeddings; positions then cover prompt + input.
    x, input_mask, _ = self.prepend_prompt(self.shared(input_ids) * self.embed_scale, input_mask,
                                           prompts)
    pos = jnp.arange(x.shape[1])
    out, _ = self.encoder(x, pos, mask_bias(input_mask), rng=rng)
    return out, input_mask

  def logits_from_hidden(self, h):
    logits = self.shared.attend(h).astype(jnp.float32) + self.final_logits_bias[...].astype(jnp.float32)
    return constrain(logits, ("batch", "length", "vocab"))

  def decode(self, decoder_input_ids, enc, enc_mask, rng=None):
    y = self.shared(decoder_input_ids) * self.embed_scale
    t = y.shape[1]
    pos = jnp.arange(t)
    causal = jnp.where(pos[None, :] <= pos[:, None], 0.0, NEG_INF)[None, None]
    h, _ = self.decoder(y, pos, causal, enc=enc, cross_bias=mask_bias(enc_mask), rng=rng)
    return self.logits_from_hidden(h)

  def __call__(self, input_ids, input_mask, decoder_input_ids, prompts=None, rng=None):
    r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
    enc, enc_mask = self.encode(input_ids, input_mask, prompts, rng=r1)
    return self.decode(decoder_input_ids, enc, enc_mask, rng=r2)

  def init_cache(self, batch, max_len, enc):
    cfg = self.cfg
    h = cfg.decoder_attention_heads
    shape = (batch, max_len, h, cfg.d_model // h)
    self_cache = [(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
                  for _ in range(cfg.decoder_layers)]
    return self_cache, [l.cross_attn.kv(enc) for l in self.decoder.layers]

  def decode_step(self, token, index, self_cache, cross_kv, enc_mask):
    y = self.shared(token[:, None]) * self.embed_scale
    max_len = self_cache[0][0].shape[1]
    bias = jnp.where(jnp.arange(max_len) <= index, 0.0, NEG_INF)[None, None, None, :]
    h, cache = self.decoder(y, jnp.reshape(index, (1,)), bias, cross_bias=mask_bias(enc_mask),
                            cross_kv=cross_kv, cache=self_cache, cache_index=index)
    return self.logits_from_hidden(h)[:, 0], cache


def get_config(name: str, **overrides) -> BartConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown BART preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def params_from_hf(sd, cfg):
  sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
  shared = next((sd[k] for k in ("shared.weight", "encoder.embed_tokens.weight",
                                  "decoder.embed_tokens.weight", "lm_head.weight") if k in sd), None)
  if shared is None:
    raise KeyError("shared.weight")
  out = {("shared", "embedding"): shared,
         ("final_logits_bias",): sd["final_logits_bias"].reshape(-1)}

  def attn(p, o, h):
    d = cfg.d_model
    k = d // h
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
      out[o + (ours, "kernel")] = sd[f"{p}.{theirs}.weight"].T.reshape(d, h, k)
      out[o + (ours, "bias")] = sd[f"{p}.{theirs}.bias"].reshape(h, k)
    out[o + ("o", "kernel")] = sd[f"{p}.out_proj.weight"].T.reshape(h, k, d)
    out[o + ("o", "bias")] = sd[f"{p}.out_proj.bias"]

  def norm(p, o):
    out[o + ("scale",)] = sd[p + ".weight"]
    out[o + ("bias",)] = sd[p + ".bias"]

  for stack, n, h in (("encoder", cfg.encoder_layers, cfg.encoder_attention_heads),
                      ("decoder", cfg.decoder_layers, cfg.decoder_attention_heads)):
    out[(stack, "positions", "embedding")] = sd[f"{stack}.embed_positions.weight"]
    norm(f"{stack}.layernorm_embedding", (stack, "embed_norm"))
    for i in range(n):
      p, o = f"{stack}.layers.{i}", (stack, "layers", i)
      attn(p + ".self_attn", o + ("self_attn",), h)
      norm(p + ".self_attn_layer_norm", o + ("self_attn_norm",))
      if stack == "decoder":
        attn(p + ".encoder_attn", o + ("cross_attn",), h)
        norm(p + ".encoder_attn_layer_norm", o + ("cross_attn_norm",))
      for ours, theirs in (("mlp_wi", "fc1"), ("mlp_wo", "fc2")):
        out[o + (ours, "kernel")] = sd[f"{p}.{theirs}.weight"].T
        out[o + (ours, "bias")] = sd[f"{p}.{theirs}.bias"]
      norm(p + ".final_layer_norm", o + ("mlp_norm",))
  return out


def load_bart(path: str, param_dtype=None, **overrides) -> Bart:
  from prompt_tuning.models import convert
  hf = convert.read_hf_config(path)
  cfg = BartConfig.from_hf_dict(hf, **overrides)
  sd = convert.read_state_dict(path)
  try:
    values = params_from_hf(sd, cfg)
  except KeyError as e:
    raise convert.CheckpointError(f"{path}: HF checkpoint lacks tensor {e}") from e
  abstract = convert.build_abstract(lambda: Bart(cfg, rngs=nnx.Rngs(0)))
  return convert.fill_model(abstract, values, dtype=param_dtype, source=path)
