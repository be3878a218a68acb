"""BART (``BartForConditionalGeneration``): config, presets and Hugging Face names.

Wiring: learned positions offset by 2, layernorm on the embeddings, post-norm LayerNorm blocks,
biased projections, ``1/sqrt(head_dim)`` attention scaling, GELU MLP, tied head plus
``final_logits_bias``. mBART (pre-norm, final layer norms) is a different model_type and is
refused, as are BART config switches that would turn it into one.
"""
from __future__ import annotations

import math

from prompt_tuning.models import hf
from prompt_tuning.models.core import ModelConfig

POS_OFFSET = 2


def config(d_model, layers, heads, d_ff, *, vocab_size=50265, max_positions=1024, **kw):
  base = dict(family="bart", vocab_size=vocab_size, d_model=d_model, num_layers=layers,
              num_heads=heads, d_ff=d_ff, mlp_activation="gelu", norm="layer", norm_eps=1e-5,
              norm_position="post", final_norm=False, embed_norm=True, position="learned",
              max_position_embeddings=max_positions, position_offset=POS_OFFSET,
              q_bias=True, k_bias=True, v_bias=True, o_bias=True, mlp_bias=True,
              tie_word_embeddings=True, final_logits_bias=True, init_std=0.02,
              embed_init_std=0.02, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
  base.update(kw)
  return ModelConfig(**base)


PRESETS = {
    "bart-base": config(768, 6, 12, 3072),
    "bart-large": config(1024, 12, 16, 4096),
    # Random-init test model. Fan-in initialisation (T5's) instead of BART's std 0.02: with
    # 0.02 a tiny random model's outputs barely depend on its input, and a method tuned on
    # top of it (prompt, LoRA) has nothing to steer.
    "tiny-bart": config(64, 2, 4, 128, vocab_size=256, max_positions=256, pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0, init_std=None,
                        embed_init_std=1.0),
}


def from_hf(c: hf.ConfigReader, tensors: dict) -> ModelConfig:
  # Switches of the shared BART code path that make it another model (mBART, Marian ...).
  c.expect("normalize_before", False)
  c.expect("add_final_layer_norm", False)
  c.expect("add_bias_logits", False)
  c.expect("normalize_embedding", True)
  c.expect("static_position_embeddings", False)
  c.expect("extra_pos_embeddings", POS_OFFSET)
  c.expect("is_decoder", False)
  c.expect("tie_word_embeddings", True, why="(an untied BART head) is not implemented")
  d = c("d_model")
  enc_layers = c("encoder_layers")
  c.expect("num_hidden_layers", enc_layers)
  return ModelConfig(
      family="bart", vocab_size=c("vocab_size"), d_model=d, num_layers=enc_layers,
      num_decoder_layers=c("decoder_layers"), num_heads=c("encoder_attention_heads"),
      decoder_num_heads=c("decoder_attention_heads"), d_ff=c("encoder_ffn_dim"),
      decoder_d_ff=c("decoder_ffn_dim"), mlp_activation=c("activation_function", "gelu"),
      norm="layer", norm_eps=1e-5, norm_position="post", final_norm=False, embed_norm=True,
      embed_scale=math.sqrt(d) if c("scale_embedding", False) else 1.0, position="learned",
      max_position_embeddings=c("max_position_embeddings"), position_offset=POS_OFFSET,
      q_bias=True, k_bias=True, v_bias=True, o_bias=True, mlp_bias=True,
      tie_word_embeddings=True, final_logits_bias=True, init_std=0.02, embed_init_std=0.02,
      pad_token_id=c("pad_token_id", 1), eos_token_id=c("eos_token_id", 2),
      decoder_start_token_id=c("decoder_start_token_id", 2))


def to_hf(cfg: ModelConfig) -> dict:
  _, dec_heads, dec_ff = cfg.stack_shape("decoder")
  return {"model_type": "bart", "architectures": ["BartForConditionalGeneration"],
          "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
          "encoder_layers": cfg.num_layers, "decoder_layers": cfg.n_decoder_layers,
          "encoder_attention_heads": cfg.num_heads, "decoder_attention_heads": dec_heads,
          "encoder_ffn_dim": cfg.d_ff, "decoder_ffn_dim": dec_ff,
          "max_position_embeddings": cfg.max_position_embeddings,
          "activation_function": cfg.mlp_activation, "scale_embedding": cfg.embed_scale != 1.0,
          "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
          "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
          "decoder_start_token_id": cfg.decoder_start_token_id, "forced_eos_token_id": None,
          "is_encoder_decoder": True, "tie_word_embeddings": True}


def weights(cfg: ModelConfig) -> hf.WeightMap:
  d = cfg.d_model
  t = [hf.array("model.shared.weight", ("embed", "embedding")),
       hf.array("final_logits_bias", ("final_logits_bias",), (cfg.vocab_size,),
                (1, cfg.vocab_size))]

  def norm(theirs, ours):
    t.append(hf.array(f"{theirs}.weight", ours + ("scale",)))
    t.append(hf.array(f"{theirs}.bias", ours + ("bias",)))

  for stack in ("encoder", "decoder"):
    n, h, f = cfg.stack_shape(stack)
    dh = cfg.head_dim or d // h
    s = f"model.{stack}"
    t.append(hf.array(f"{s}.embed_positions.weight", (stack, "positions", "embedding")))
    norm(f"{s}.layernorm_embedding", (stack, "embed_norm"))
    for i in range(n):
      p, o = f"{s}.layers.{i}", (stack, "layers", i)
      attn = [("self_attn", "attn", "self_attn_layer_norm", "attn_norm")]
      if stack == "decoder":
        attn.append(("encoder_attn", "cross_attn", "encoder_attn_layer_norm", "cross_attn_norm"))
      for theirs, ours, theirs_norm, ours_norm in attn:
        for x in "qkv":
          t.append(hf.linear(f"{p}.{theirs}.{x}_proj.weight", o + (ours, x, "kernel"), (d,),
                             (h, dh)))
          t.append(hf.array(f"{p}.{theirs}.{x}_proj.bias", o + (ours, x, "bias"), (h, dh), (h * dh,)))
        t.append(hf.linear(f"{p}.{theirs}.out_proj.weight", o + (ours, "o", "kernel"), (h, dh),
                           (d,)))
        t.append(hf.array(f"{p}.{theirs}.out_proj.bias", o + (ours, "o", "bias")))
        norm(f"{p}.{theirs_norm}", o + (ours_norm,))
      t.append(hf.linear(f"{p}.fc1.weight", o + ("mlp", "wi", "kernel"), (d,), (f,)))
      t.append(hf.array(f"{p}.fc1.bias", o + ("mlp", "wi", "bias")))
      t.append(hf.linear(f"{p}.fc2.weight", o + ("mlp", "wo", "kernel"), (f,), (d,)))
      t.append(hf.array(f"{p}.fc2.bias", o + ("mlp", "wo", "bias")))
      norm(f"{p}.final_layer_norm", o + ("mlp_norm",))
  aliases = {"model.encoder.embed_tokens.weight": "model.shared.weight",
             "model.decoder.embed_tokens.weight": "model.shared.weight",
             "lm_head.weight": "model.shared.weight"}
  return hf.WeightMap(t, aliases, optional_zeros=("final_logits_bias",), prefix="model.")


FAMILY = hf.Family("bart", ("bart",), from_hf, to_hf, weights, PRESETS)
