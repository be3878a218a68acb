"""T5 (v1.0, v1.1 / LM-adapted) and mT5: config, presets and Hugging Face names.

Wiring: pre-norm RMS blocks, unscaled attention with bucketed relative position biases (one
table per stack, shared by its layers), ReLU (v1.0) or gated-GELU (v1.1, mT5) feed-forward.
Head: v1.0 ties it to the embedding and scales the decoder output by ``d_model ** -0.5``; v1.1
checkpoints written by transformers 4 carry an untied ``lm_head`` and no scaling; transformers 5
ties the head always and records the scaling in ``scale_decoder_outputs``; mT5 never scales.
"""
from __future__ import annotations

import numpy as np

from prompt_tuning.models import hf
from prompt_tuning.models.core import ModelConfig


def config(d_model, d_ff, layers, heads, *, v11=True, d_kv=64, vocab_size=32128, **kw):
  base = dict(family="t5", vocab_size=vocab_size, d_model=d_model, d_ff=d_ff, num_layers=layers,
              num_heads=heads, head_dim=d_kv, norm="rms", norm_eps=1e-6, position="relative",
              attn_scale="none", final_norm=True, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0, embed_init_std=1.0)
  if v11:
    base.update(mlp_activation="gelu_new", mlp_gated=True, tie_word_embeddings=False)
  else:
    base.update(mlp_activation="relu", tie_word_embeddings=True, logits_scale=True)
  base.update(kw)
  return ModelConfig(**base)


PRESETS = {
    "t5-small": config(512, 2048, 6, 8, v11=False),
    "t5-base": config(768, 3072, 12, 12, v11=False),
    "t5-large": config(1024, 4096, 24, 16, v11=False),
    "t5-v1_1-small": config(512, 1024, 8, 6),
    "t5-v1_1-base": config(768, 2048, 12, 12),
    "t5-v1_1-large": config(1024, 2816, 24, 16),
    "t5-v1_1-xl": config(2048, 5120, 24, 32),
    "t5-v1_1-xxl": config(4096, 10240, 24, 64),
    # Random-init tiny models for tests.
    "tiny": config(64, 128, 2, 4, d_kv=16, vocab_size=256),
    "tiny-v1_0": config(64, 128, 2, 4, v11=False, d_kv=16, vocab_size=256),
}


def from_hf(c: hf.ConfigReader, tensors: dict) -> ModelConfig:
  model_type = c("model_type")
  ff = c("feed_forward_proj", "relu")
  parts = ff.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise hf.CheckpointError(f"{c.source}: feed_forward_proj {ff!r} is not valid")
  gated, act = len(parts) == 2, parts[-1]
  if gated and act == "gelu":  # transformers maps "gated-gelu" to the tanh approximation
    act = "gelu_new"
  c.ignore("dense_act_fn", "is_gated_act", "n_positions")  # derived / unused by T5
  c.expect("is_decoder", False)
  head = tensors.get("lm_head.weight")
  # A stored head that differs from the embedding is an untied (v1.1, transformers 4) head;
  # transformers 5 loads it as such too.
  untied = head is not None and not np.array_equal(head, tensors.get("shared.weight"))
  if model_type == "mt5":  # transformers' MT5 never scales, whatever the config says
    scale = False
    c.ignore("tie_word_embeddings", "scale_decoder_outputs")
  elif "scale_decoder_outputs" in c:
    scale = bool(c("scale_decoder_outputs"))
    c.ignore("tie_word_embeddings")
  else:  # transformers 4: tie_word_embeddings=False meant v1.1 (untied and unscaled)
    scale = bool(c("tie_word_embeddings", True))
  if untied and scale:
    raise hf.CheckpointError(f"{c.source}: an untied lm_head with scaled decoder outputs is not "
                             f"a T5 variant transformers implements")
  d_model = c("d_model")
  return ModelConfig(
      family="t5", model_type=model_type, vocab_size=c("vocab_size"), d_model=d_model, d_ff=c("d_ff"),
      num_layers=c("num_layers"), num_decoder_layers=c("num_decoder_layers", None),
      num_heads=c("num_heads"), head_dim=c("d_kv"), norm="rms",
      norm_eps=c("layer_norm_epsilon", 1e-6), position="relative",
      relative_buckets=c("relative_attention_num_buckets", 32),
      relative_max_distance=c("relative_attention_max_distance", 128), attn_scale="none",
      mlp_activation=act, mlp_gated=gated, tie_word_embeddings=not untied, logits_scale=scale,
      pad_token_id=c("pad_token_id", 0), eos_token_id=_first(c("eos_token_id", 1)),
      decoder_start_token_id=c("decoder_start_token_id", 0), embed_init_std=1.0)


def _first(ids):
  return ids[0] if isinstance(ids, (list, tuple)) else ids


def to_hf(cfg: ModelConfig) -> dict:
  ff = ("gated-" if cfg.mlp_gated else "") + {"gelu_new": "gelu"}.get(cfg.mlp_activation,
                                                                       cfg.mlp_activation)
  if cfg.model_type == "mt5":
    out = dict(_t5_hf(cfg, ff), model_type="mt5", architectures=["MT5ForConditionalGeneration"])
    del out["scale_decoder_outputs"]
    return out
  if cfg.logits_scale and not cfg.tie_word_embeddings:
    raise ValueError("T5 with an untied head and scaled outputs has no HF config")
  return _t5_hf(cfg, ff)


def _t5_hf(cfg: ModelConfig, ff: str) -> dict:
  return {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
          "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.dh, "d_ff": cfg.d_ff,
          "num_layers": cfg.num_layers, "num_decoder_layers": cfg.n_decoder_layers,
          "num_heads": cfg.num_heads, "relative_attention_num_buckets": cfg.relative_buckets,
          "relative_attention_max_distance": cfg.relative_max_distance,
          "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": ff,
          "tie_word_embeddings": True, "scale_decoder_outputs": cfg.logits_scale,
          "dropout_rate": 0.0, "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
          "decoder_start_token_id": cfg.decoder_start_token_id, "is_encoder_decoder": True}


def weights(cfg: ModelConfig) -> hf.WeightMap:
  d, dh = cfg.d_model, cfg.dh
  t = [hf.array("shared.weight", ("embed", "embedding"))]
  for stack in ("encoder", "decoder"):
    n, h, _ = cfg.stack_shape(stack)
    t.append(hf.array(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      (stack, "relative_bias", "embedding")))
    t.append(hf.array(f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale")))
    for i in range(n):
      p, o = f"{stack}.block.{i}.layer", (stack, "layers", i)
      attn = [(f"{p}.0.SelfAttention", "attn", f"{p}.0.layer_norm", "attn_norm")]
      if stack == "decoder":
        attn.append((f"{p}.1.EncDecAttention", "cross_attn", f"{p}.1.layer_norm",
                     "cross_attn_norm"))
      for theirs, ours, norm, ours_norm in attn:
        for x in "qkv":
          t.append(hf.linear(f"{theirs}.{x}.weight", o + (ours, x, "kernel"), (d,), (h, dh)))
        t.append(hf.linear(f"{theirs}.o.weight", o + (ours, "o", "kernel"), (h, dh), (d,)))
        t.append(hf.array(f"{norm}.weight", o + (ours_norm, "scale")))
      j = len(attn)
      ff = f"{p}.{j}.DenseReluDense"
      _, _, f = cfg.stack_shape(stack)
      for x in (("wi_0", "wi_1") if cfg.mlp_gated else ("wi",)):
        t.append(hf.linear(f"{ff}.{x}.weight", o + ("mlp", x, "kernel"), (d,), (f,)))
      t.append(hf.linear(f"{ff}.wo.weight", o + ("mlp", "wo", "kernel"), (f,), (d,)))
      t.append(hf.array(f"{p}.{j}.layer_norm.weight", o + ("mlp_norm", "scale")))
  aliases = {"encoder.embed_tokens.weight": "shared.weight",
             "decoder.embed_tokens.weight": "shared.weight"}
  if cfg.tie_word_embeddings:
    aliases["lm_head.weight"] = "shared.weight"
  else:
    t.append(hf.linear("lm_head.weight", ("lm_head", "kernel"), (d,), (cfg.vocab_size,)))
  return hf.WeightMap(t, aliases)


FAMILY = hf.Family("t5", ("t5", "mt5"), from_hf, to_hf, weights, PRESETS)
