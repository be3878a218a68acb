"""Decoder-only families: GPT-2 and Llama-style (Llama, Mistral, Qwen2). Configs, presets and
Hugging Face names; the maths is the shared core's.

* ``gpt2``: learned positions, pre-norm LayerNorm, GELU MLP, biased projections (HF ``Conv1D``
  weights, q/k/v fused in ``c_attn``), tied head; ``scale_attn_weights`` and
  ``scale_attn_by_inverse_layer_idx`` honoured.
* ``llama``: RoPE (default, ``linear``, ``llama3`` scaling), RMSNorm, SwiGLU, MHA/GQA/MQA;
  Mistral's sliding window on every layer; Qwen2's q/k/v biases and per-layer sliding window
  (``layer_types``).
"""
from __future__ import annotations

import numpy as np

from prompt_tuning.models import hf
from prompt_tuning.models.core import ROPE_TYPES, ModelConfig


def _first(ids):
  return ids[0] if isinstance(ids, (list, tuple)) else ids


# ----------------------------------------------------------------------------- GPT-2
def gpt2_config(d_model, layers, heads, *, vocab_size=50257, max_positions=1024, **kw):
  base = dict(family="gpt2", architecture="decoder_only", vocab_size=vocab_size,
              d_model=d_model, num_layers=layers, num_heads=heads, d_ff=4 * d_model,
              mlp_activation="gelu_new", mlp_bias=True, norm="layer", norm_eps=1e-5,
              position="learned", max_position_embeddings=max_positions, q_bias=True,
              k_bias=True, v_bias=True, o_bias=True, tie_word_embeddings=True, init_std=0.02,
              embed_init_std=0.02, pad_token_id=50256, eos_token_id=50256)
  base.update(kw)
  return ModelConfig(**base)


def gpt2_from_hf(c: hf.ConfigReader, tensors: dict) -> ModelConfig:
  d = c("n_embd")
  n_pos = c("n_positions")
  c.expect("n_ctx", n_pos)
  c.ignore("reorder_and_upcast_attn")  # float16 overflow guard; our logits are float32 anyway
  c.ignore("attn_pdrop", "embd_pdrop", "resid_pdrop")  # dropout: model.dropout_rate is ours
  c.ignore(*[k for k in c.d if k.startswith("summary_")])  # GPT2DoubleHeadsModel's head
  tie = bool(c("tie_word_embeddings", True))
  eos = _first(c("eos_token_id", 50256))
  return ModelConfig(
      family="gpt2", architecture="decoder_only", vocab_size=c("vocab_size"), d_model=d,
      num_layers=c("n_layer"), num_heads=c("n_head"), d_ff=c("n_inner", None) or 4 * d,
      mlp_activation=c("activation_function", "gelu_new"), mlp_bias=True, norm="layer",
      norm_eps=c("layer_norm_epsilon", 1e-5), position="learned", max_position_embeddings=n_pos,
      q_bias=True, k_bias=True, v_bias=True, o_bias=True,
      attn_scale="inv_sqrt" if c("scale_attn_weights", True) else "none",
      attn_scale_inverse_layer=bool(c("scale_attn_by_inverse_layer_idx", False)),
      tie_word_embeddings=tie, init_std=0.02, embed_init_std=0.02,
      pad_token_id=_first(c("pad_token_id", eos)), eos_token_id=eos)


def gpt2_to_hf(cfg: ModelConfig) -> dict:
  return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
          "vocab_size": cfg.vocab_size, "n_embd": cfg.d_model, "n_layer": cfg.num_layers,
          "n_head": cfg.num_heads, "n_inner": cfg.d_ff, "n_positions": cfg.max_position_embeddings,
          "activation_function": cfg.mlp_activation, "layer_norm_epsilon": cfg.norm_eps,
          "scale_attn_weights": cfg.attn_scale == "inv_sqrt",
          "scale_attn_by_inverse_layer_idx": cfg.attn_scale_inverse_layer,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
          "tie_word_embeddings": cfg.tie_word_embeddings, "bos_token_id": cfg.eos_token_id,
          "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}


def gpt2_weights(cfg: ModelConfig) -> hf.WeightMap:
  d, h, dh, f = cfg.d_model, cfg.num_heads, cfg.dh, cfg.d_ff
  o_ = ("decoder",)
  t = [hf.array("transformer.wte.weight", ("embed", "embedding")),
       hf.array("transformer.wpe.weight", o_ + ("positions", "embedding")),
       hf.array("transformer.ln_f.weight", o_ + ("final_norm", "scale")),
       hf.array("transformer.ln_f.bias", o_ + ("final_norm", "bias"))]
  for i in range(cfg.num_layers):
    p, o = f"transformer.h.{i}", o_ + ("layers", i)
    qkv = tuple(o + ("attn", x) for x in "qkv")
    t.append(hf.Tensor(f"{p}.attn.c_attn.weight", tuple(q + ("kernel",) for q in qkv),
                       lambda w: tuple(w[:, j * d:(j + 1) * d].reshape(d, h, dh) for j in range(3)),
                       lambda *ks: np.concatenate([k.reshape(d, h * dh) for k in ks], axis=1)))
    t.append(hf.Tensor(f"{p}.attn.c_attn.bias", tuple(q + ("bias",) for q in qkv),
                       lambda b: tuple(b[j * d:(j + 1) * d].reshape(h, dh) for j in range(3)),
                       lambda *bs: np.concatenate([x.reshape(-1) for x in bs])))
    t.append(hf.conv1d(f"{p}.attn.c_proj.weight", o + ("attn", "o", "kernel"), (h, dh), (d,)))
    t.append(hf.array(f"{p}.attn.c_proj.bias", o + ("attn", "o", "bias")))
    t.append(hf.conv1d(f"{p}.mlp.c_fc.weight", o + ("mlp", "wi", "kernel"), (d,), (f,)))
    t.append(hf.array(f"{p}.mlp.c_fc.bias", o + ("mlp", "wi", "bias")))
    t.append(hf.conv1d(f"{p}.mlp.c_proj.weight", o + ("mlp", "wo", "kernel"), (f,), (d,)))
    t.append(hf.array(f"{p}.mlp.c_proj.bias", o + ("mlp", "wo", "bias")))
    for theirs, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
      t.append(hf.array(f"{p}.{theirs}.weight", o + (ours, "scale")))
      t.append(hf.array(f"{p}.{theirs}.bias", o + (ours, "bias")))
  aliases = {}
  if cfg.tie_word_embeddings:
    aliases["lm_head.weight"] = "transformer.wte.weight"
  else:
    t.append(hf.linear("lm_head.weight", ("lm_head", "kernel"), (d,), (cfg.vocab_size,)))
  # Older checkpoints store the causal-mask buffers; the mask is ours to build.
  return hf.WeightMap(t, aliases, buffers=(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",),
                      prefix="transformer.", fan_in_fan_out=True)


# ----------------------------------------------------------------------------- Llama-style
def llama_config(d_model, layers, heads, d_ff, *, kv_heads=None, vocab_size=32000, **kw):
  base = dict(family="llama", architecture="decoder_only", vocab_size=vocab_size,
              d_model=d_model, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
              d_ff=d_ff, mlp_activation="silu", mlp_gated=True, norm="rms", norm_eps=1e-5,
              position="rope", max_position_embeddings=2048, tie_word_embeddings=False,
              final_norm=True, init_std=0.02, embed_init_std=0.02, pad_token_id=0,
              eos_token_id=2, bos_token_id=1)
  base.update(kw)
  return ModelConfig(**base)


def _rope(c: hf.ConfigReader) -> tuple[float, tuple]:
  """(theta, scaling pairs) from transformers 5 ``rope_parameters`` or 4's ``rope_theta`` +
  ``rope_scaling``."""
  rp = dict(c("rope_parameters", None) or {})
  legacy = dict(c("rope_scaling", None) or {})
  theta = rp.pop("rope_theta", None) or c("rope_theta", 10000.0)
  rp.update(legacy)
  kind = rp.pop("rope_type", None) or rp.pop("type", None) or "default"
  if kind not in ROPE_TYPES:
    raise hf.CheckpointError(f"{c.source}: rope type {kind!r} is not implemented "
                             f"(supported: {', '.join(ROPE_TYPES)})")
  if rp.pop("partial_rotary_factor", 1.0) != 1.0:
    raise hf.CheckpointError(f"{c.source}: partial_rotary_factor != 1 is not implemented")
  needed = {"default": (), "linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}[kind]
  missing = [k for k in needed if k not in rp]
  extra = sorted(set(rp) - set(needed))
  if missing or extra:
    raise hf.CheckpointError(f"{c.source}: rope {kind!r} parameters: missing {missing}, "
                             f"not implemented {extra}")
  return float(theta), tuple(sorted(dict(rp, rope_type=kind).items()))


def llama_from_hf(c: hf.ConfigReader, tensors: dict) -> ModelConfig:
  model_type = c("model_type")
  n = c("num_hidden_layers")
  heads = c("num_attention_heads")
  d = c("hidden_size")
  theta, scaling = _rope(c)
  c.ignore("pretraining_tp")   # a tensor-parallel split of the same matmuls in old checkpoints
  qkv_bias = o_bias = bool(c("attention_bias", False))
  mlp_bias = bool(c("mlp_bias", False))
  window, sliding = None, None
  if model_type == "mistral":
    c.expect("layer_types", None, why="(alternating attention) is not implemented for mistral")
    window = c("sliding_window", None)
  elif model_type == "qwen2":
    qkv_bias, o_bias = True, False   # hard-wired in transformers' Qwen2
    if c("use_sliding_window", False):
      window = c("sliding_window")
    c.ignore("sliding_window")
    types = c("layer_types", None)
    if types is None:
      start = c("max_window_layers", n)
      types = ["sliding_attention" if window is not None and i >= start else "full_attention"
               for i in range(n)]
    c.ignore("max_window_layers")
    bad = set(types) - {"sliding_attention", "full_attention"}
    if bad or len(types) != n:
      raise hf.CheckpointError(f"{c.source}: layer_types {types} not understood")
    sliding = tuple(t == "sliding_attention" for t in types)
    if window is None:
      sliding = None
    elif not any(sliding):
      window, sliding = None, None
  return ModelConfig(
      family="llama", model_type=model_type, architecture="decoder_only",
      vocab_size=c("vocab_size"), d_model=d,
      num_layers=n, num_heads=heads, num_kv_heads=c("num_key_value_heads", None),
      head_dim=c("head_dim", None), d_ff=c("intermediate_size"),
      mlp_activation=c("hidden_act", "silu"), mlp_gated=True, mlp_bias=mlp_bias, norm="rms",
      norm_eps=c("rms_norm_eps", 1e-6), position="rope",
      max_position_embeddings=c("max_position_embeddings", 2048), rope_theta=theta,
      rope_scaling=scaling, sliding_window=window, sliding_layers=sliding, q_bias=qkv_bias,
      k_bias=qkv_bias, v_bias=qkv_bias, o_bias=o_bias,
      tie_word_embeddings=bool(c("tie_word_embeddings", False)), init_std=0.02,
      embed_init_std=0.02, pad_token_id=_first(c("pad_token_id", 0)),
      eos_token_id=_first(c("eos_token_id", 2)), bos_token_id=c("bos_token_id", None))


def llama_to_hf(cfg: ModelConfig) -> dict:
  """config.json of the HF model type that has this wiring: Qwen2 (q/k/v biases without an o
  bias), Mistral (a sliding window on every layer) or Llama."""
  out = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
         "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
         "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.num_layers,
         "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
         "head_dim": cfg.dh, "hidden_act": cfg.mlp_activation,
         "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.norm_eps,
         "rope_parameters": dict(dict(cfg.rope_scaling) or {"rope_type": "default"},
                                 rope_theta=cfg.rope_theta),
         "tie_word_embeddings": cfg.tie_word_embeddings, "pad_token_id": cfg.pad_token_id,
         "eos_token_id": cfg.eos_token_id, "bos_token_id": cfg.bos_token_id}
  if not cfg.q_bias == cfg.k_bias == cfg.v_bias:
    raise ValueError("no Hugging Face model type has biases on only some of q, k, v")
  windows = cfg.sliding_layers or (cfg.sliding_window is not None,) * cfg.num_layers
  if cfg.q_bias and not cfg.o_bias:
    if cfg.mlp_bias or cfg.dh != cfg.d_model // cfg.num_heads:
      raise ValueError("a Qwen2-style model (q/k/v biases) with MLP biases or a custom head_dim "
                       "has no Hugging Face model type")
    del out["head_dim"]
    out.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
               use_sliding_window=cfg.sliding_window is not None,
               sliding_window=cfg.sliding_window,
               layer_types=["sliding_attention" if w else "full_attention" for w in windows])
  elif cfg.sliding_window is not None:
    if not all(windows) or cfg.q_bias or cfg.mlp_bias:
      raise ValueError("a sliding window on some layers only, or with biases, has no Hugging "
                       "Face model type besides Qwen2's wiring")
    out.update(model_type="mistral", architectures=["MistralForCausalLM"],
               sliding_window=cfg.sliding_window)
  else:
    out.update(attention_bias=cfg.q_bias, mlp_bias=cfg.mlp_bias)
  return out


def llama_weights(cfg: ModelConfig) -> hf.WeightMap:
  d, dh = cfg.d_model, cfg.dh
  o_ = ("decoder",)
  t = [hf.array("model.embed_tokens.weight", ("embed", "embedding")),
       hf.array("model.norm.weight", o_ + ("final_norm", "scale"))]
  for i in range(cfg.num_layers):
    p, o = f"model.layers.{i}", o_ + ("layers", i)
    for x, nh, bias in (("q", cfg.num_heads, cfg.q_bias), ("k", cfg.kv_heads, cfg.k_bias),
                        ("v", cfg.kv_heads, cfg.v_bias)):
      t.append(hf.linear(f"{p}.self_attn.{x}_proj.weight", o + ("attn", x, "kernel"), (d,),
                         (nh, dh)))
      if bias:
        t.append(hf.array(f"{p}.self_attn.{x}_proj.bias", o + ("attn", x, "bias"), (nh, dh),
                          (nh * dh,)))
    t.append(hf.linear(f"{p}.self_attn.o_proj.weight", o + ("attn", "o", "kernel"),
                       (cfg.num_heads, dh), (d,)))
    if cfg.o_bias:
      t.append(hf.array(f"{p}.self_attn.o_proj.bias", o + ("attn", "o", "bias")))
    for theirs, ours, shape in (("gate_proj", "wi_0", ((d,), (cfg.d_ff,))),
                                ("up_proj", "wi_1", ((d,), (cfg.d_ff,))),
                                ("down_proj", "wo", ((cfg.d_ff,), (d,)))):
      t.append(hf.linear(f"{p}.mlp.{theirs}.weight", o + ("mlp", ours, "kernel"), *shape))
      if cfg.mlp_bias:
        t.append(hf.array(f"{p}.mlp.{theirs}.bias", o + ("mlp", ours, "bias")))
    t.append(hf.array(f"{p}.input_layernorm.weight", o + ("attn_norm", "scale")))
    t.append(hf.array(f"{p}.post_attention_layernorm.weight", o + ("mlp_norm", "scale")))
  aliases = {}
  if cfg.tie_word_embeddings:
    aliases["lm_head.weight"] = "model.embed_tokens.weight"
  else:
    t.append(hf.linear("lm_head.weight", ("lm_head", "kernel"), (d,), (cfg.vocab_size,)))
  return hf.WeightMap(t, aliases, buffers=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
                      prefix="model.")


# The tiny presets are random-init test models with fan-in initialisation (see bart.py).
TINY = dict(vocab_size=256, pad_token_id=0, eos_token_id=1, init_std=None, embed_init_std=1.0)
PRESETS = {
    "gpt2": gpt2_config(768, 12, 12),
    "tiny-gpt2": gpt2_config(64, 2, 4, max_positions=512, d_ff=256, **TINY),
    "tiny-llama": llama_config(64, 2, 4, 128, kv_heads=2, bos_token_id=None, **TINY),
}

GPT2 = hf.Family("gpt2", ("gpt2",), gpt2_from_hf, gpt2_to_hf, gpt2_weights,
                 {k: v for k, v in PRESETS.items() if v.family == "gpt2"})
LLAMA = hf.Family("llama", ("llama", "mistral", "qwen2"), llama_from_hf, llama_to_hf,
                  llama_weights, {k: v for k, v in PRESETS.items() if v.family == "llama"})
