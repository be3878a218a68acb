"""Hugging Face checkpoint loading (safetensors or PyTorch state dicts) into our NNX models."""
from __future__ import annotations

import json
import os
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class CheckpointError(ValueError):
  pass


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads all tensors of a HF checkpoint directory (or a single weights file) as numpy."""
  if os.path.isfile(path):
    files = [path]
  elif os.path.isdir(path):
    names = os.listdir(path)
    if "model.safetensors.index.json" in names or "pytorch_model.bin.index.json" in names:
      index = ("model.safetensors.index.json" if "model.safetensors.index.json" in names
               else "pytorch_model.bin.index.json")
      with open(os.path.join(path, index)) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      files = [os.path.join(path, s) for s in shards]
    elif "model.safetensors" in names:
      files = [os.path.join(path, "model.safetensors")]
    elif "pytorch_model.bin" in names:
      files = [os.path.join(path, "pytorch_model.bin")]
    else:
      raise FileNotFoundError(
          f"no weights in {path!r}: expected model.safetensors, pytorch_model.bin or a sharded "
          f"index (*.index.json); found {sorted(names)}")
  else:
    raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
  out: dict[str, np.ndarray] = {}
  for fn in files:
    if not os.path.exists(fn):
      raise FileNotFoundError(f"checkpoint shard {fn!r} is missing")
    if fn.endswith(".safetensors"):
      from safetensors import safe_open
      with safe_open(fn, framework="numpy") as f:
        for k in f.keys():
          out[k] = f.get_tensor(k)
    else:
      try:
        import torch
      except ImportError as e:  # pragma: no cover
        raise CheckpointError(f"reading {fn!r} needs PyTorch (pip install torch)") from e
      sd = torch.load(fn, map_location="cpu", weights_only=True)
      for k, v in sd.items():
        out[k] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
  return out


def read_hf_config(path: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
  fn = os.path.join(path, "config.json") if os.path.isdir(path) else None
  if fn is None or not os.path.exists(fn):
    raise FileNotFoundError(f"no config.json in checkpoint directory {path!r}")
  with open(fn) as f:
    return json.load(f)


def build_abstract(make: Callable[[], nnx.Module]):
  """Creates a model without allocating (or randomly initialising) its weights."""
  return nnx.eval_shape(make)


def fill_model(abstract_model: nnx.Module, values: dict[tuple, np.ndarray], dtype=None,
               source: str = "checkpoint") -> nnx.Module:
  """Sets every Param of ``abstract_model`` from ``values`` (keyed by state path tuples),
  checking that nothing is missing and every shape matches."""
  graphdef, state = nnx.split(abstract_model)
  flat = dict(nnx.to_flat_state(state))
  missing = [p for p in flat if p not in values]
  if missing:
    raise CheckpointError(f"{source}: no value for model parameter(s) "
                          f"{['/'.join(map(str, p)) for p in missing[:8]]}"
                          f"{' ...' if len(missing) > 8 else ''}")
  for p, var in flat.items():
    v = np.asarray(values[p])
    if tuple(v.shape) != tuple(var.shape):
      raise CheckpointError(f"{source}: shape mismatch for {'/'.join(map(str, p))}: checkpoint "
                            f"{tuple(v.shape)}, model {tuple(var.shape)}")
    target = dtype if dtype is not None else var.dtype
    var.set_value(jnp.asarray(v, dtype=target))
  return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------------ T5
def t5_params_from_hf(sd: dict[str, np.ndarray], cfg) -> dict[tuple, np.ndarray]:
  """Maps a HF T5 state dict to our parameter paths."""
  h, k, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  out: dict[tuple, np.ndarray] = {}
  used = set()

  def get(name):
    if name not in sd:
      raise CheckpointError(f"HF checkpoint lacks tensor {name!r}")
    used.add(name)
    return np.asarray(sd[name])

  shared = get("shared.weight") if "shared.weight" in sd else get("encoder.embed_tokens.weight")
  used.update({"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"})
  out[("shared", "embedding")] = shared

  def attn(prefix, ours):
    out[ours + ("q", "kernel")] = get(prefix + ".q.weight").T.reshape(d, h, k)
    out[ours + ("k", "kernel")] = get(prefix + ".k.weight").T.reshape(d, h, k)
    out[ours + ("v", "kernel")] = get(prefix + ".v.weight").T.reshape(d, h, k)
    out[ours + ("o", "kernel")] = get(prefix + ".o.weight").T.reshape(h, k, d)

  def mlp(prefix, ours):
    names = ("wi_0", "wi_1") if cfg.is_gated else ("wi",)
    for n in names:
      out[ours + (n, "kernel")] = get(f"{prefix}.{n}.weight").T
    out[ours + ("wo", "kernel")] = get(prefix + ".wo.weight").T

  for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.n_decoder_layers)):
    out[(stack, "relative_attention_bias", "embedding")] = get(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    out[(stack, "final_norm", "scale")] = get(f"{stack}.final_layer_norm.weight")
    for i in range(n_layers):
      p = f"{stack}.block.{i}.layer"
      ours = (stack, "blocks", i)
      attn(f"{p}.0.SelfAttention", ours + ("self_attn",))
      out[ours + ("self_attn_norm", "scale")] = get(f"{p}.0.layer_norm.weight")
      j = 1
      if stack == "decoder":
        attn(f"{p}.1.EncDecAttention", ours + ("cross_attn",))
        out[ours + ("cross_attn_norm", "scale")] = get(f"{p}.1.layer_norm.weight")
        j = 2
      mlp(f"{p}.{j}.DenseReluDense", ours + ("mlp",))
      out[ours + ("mlp_norm", "scale")] = get(f"{p}.{j}.layer_norm.weight")
  if not cfg.tie_word_embeddings:
    if "lm_head.weight" not in sd:
      raise CheckpointError("config says the output head is untied but the checkpoint has no "
                            "'lm_head.weight'")
    out[("lm_head", "kernel")] = get("lm_head.weight").T
  used.add("lm_head.weight")
  unused = [n for n in sd if n not in used and not re.search(r"relative_attention_bias", n)]
  if unused:
    raise CheckpointError(f"HF checkpoint has tensors this T5 config does not use: {unused[:8]}")
  return out


def load_t5(path: str, param_dtype=None, **config_overrides):
  """Loads a HF T5 checkpoint directory (config.json + weights) into :class:`T5`.

  ``param_dtype`` (e.g. ``jnp.bfloat16``) casts the weights; ``config_overrides`` set compute
  options such as ``dtype="bfloat16"``, ``remat="full"``, ``dropout_rate``.
  """
  from prompt_tuning.models.t5 import T5, T5Config
  hf = read_hf_config(path)
  if hf.get("model_type") not in (None, "t5", "mt5"):
    raise CheckpointError(f"{path!r} holds a {hf.get('model_type')!r} model, not T5")
  sd = read_state_dict(path)
  # transformers 4 checkpoints of v1.1 carry an untied lm_head; transformers 5 ties always.
  if "scale_decoder_outputs" not in hf and not hf.get("tie_word_embeddings", True) \
      and "lm_head.weight" not in sd:
    hf = dict(hf, tie_word_embeddings=True, scale_decoder_outputs=False)
  cfg = T5Config.from_hf_dict(hf, **config_overrides)
  abstract = build_abstract(lambda: T5(cfg, rngs=nnx.Rngs(0)))
  return fill_model(abstract, t5_params_from_hf(sd, cfg), dtype=param_dtype, source=path)


# ------------------------------------------------------------------------------ decoder-only
def _strip(sd, prefix):
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def gpt2_params_from_hf(sd: dict[str, np.ndarray], cfg) -> dict[tuple, np.ndarray]:
  sd = _strip(sd, "transformer.")
  d, h, dh = cfg.d_model, cfg.num_heads, cfg.dh
  out = {("embed", "embedding"): sd["wte.weight"], ("positions", "embedding"): sd["wpe.weight"],
         ("final_norm", "scale"): sd["ln_f.weight"], ("final_norm", "bias"): sd["ln_f.bias"]}
  for i in range(cfg.num_layers):
    p, o = f"h.{i}.", ("blocks", i)
    w, b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]  # Conv1D: [in, out]
    for j, n in enumerate("qkv"):
      out[o + ("attn", n, "kernel")] = w[:, j * d:(j + 1) * d].reshape(d, h, dh)
      out[o + ("attn", n, "bias")] = b[j * d:(j + 1) * d].reshape(h, dh)
    out[o + ("attn", "o", "kernel")] = sd[p + "attn.c_proj.weight"].reshape(h, dh, d)
    out[o + ("attn", "o", "bias")] = sd[p + "attn.c_proj.bias"]
    out[o + ("mlp", "wi", "kernel")] = sd[p + "mlp.c_fc.weight"]
    out[o + ("mlp", "wi", "bias")] = sd[p + "mlp.c_fc.bias"]
    out[o + ("mlp", "wo", "kernel")] = sd[p + "mlp.c_proj.weight"]
    out[o + ("mlp", "wo", "bias")] = sd[p + "mlp.c_proj.bias"]
    for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
      out[o + (ours, "scale")] = sd[f"{p}{theirs}.weight"]
      out[o + (ours, "bias")] = sd[f"{p}{theirs}.bias"]
  return out


def llama_params_from_hf(sd: dict[str, np.ndarray], cfg) -> dict[tuple, np.ndarray]:
  d, h, k, dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dh
  out = {("embed", "embedding"): sd["model.embed_tokens.weight"],
         ("final_norm", "scale"): sd["model.norm.weight"]}
  if not cfg.tie_word_embeddings:
    out[("lm_head", "kernel")] = sd["lm_head.weight"].T
  for i in range(cfg.num_layers):
    p, o = f"model.layers.{i}.", ("blocks", i)
    heads = {"q": h, "k": k, "v": k}
    for n, nh in heads.items():
      out[o + ("attn", n, "kernel")] = sd[f"{p}self_attn.{n}_proj.weight"].T.reshape(d, nh, dh)
      if cfg.attention_bias:
        out[o + ("attn", n, "bias")] = sd[f"{p}self_attn.{n}_proj.bias"].reshape(nh, dh)
    out[o + ("attn", "o", "kernel")] = sd[p + "self_attn.o_proj.weight"].T.reshape(h, dh, d)
    if cfg.attention_bias:
      out[o + ("attn", "o", "bias")] = sd[p + "self_attn.o_proj.bias"]
    for ours, theirs in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")):
      out[o + ("mlp", ours, "kernel")] = sd[f"{p}mlp.{theirs}.weight"].T
      if cfg.mlp_bias:
        out[o + ("mlp", ours, "bias")] = sd[f"{p}mlp.{theirs}.bias"]
    out[o + ("attn_norm", "scale")] = sd[p + "input_layernorm.weight"]
    out[o + ("mlp_norm", "scale")] = sd[p + "post_attention_layernorm.weight"]
  return out


def load_decoder(path: str, param_dtype=None, **config_overrides):
  """Loads a HF GPT2LMHeadModel or LlamaForCausalLM checkpoint into :class:`DecoderLM`."""
  from prompt_tuning.models.decoder import DecoderLM, config_from_hf
  hf = read_hf_config(path)
  cfg = config_from_hf(hf, **config_overrides)
  sd = read_state_dict(path)
  conv = gpt2_params_from_hf if cfg.flavour == "gpt2" else llama_params_from_hf
  try:
    values = conv(sd, cfg)
  except KeyError as e:
    raise CheckpointError(f"{path}: HF checkpoint lacks tensor {e}") from e
  abstract = build_abstract(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
  return fill_model(abstract, values, dtype=param_dtype, source=path)


def load(path: str, **kw):
  """Loads any supported HF checkpoint directory (T5, GPT-2, Llama-style)."""
  mt = read_hf_config(path).get("model_type")
  if mt in ("t5", "mt5"):
    return load_t5(path, **kw)
  if mt in ("gpt2", "llama", "mistral", "qwen2"):
    return load_decoder(path, **kw)
  if mt == "bart":
    from prompt_tuning.models.bart import load_bart
    return load_bart(path, **kw)
  raise CheckpointError(f"{path}: unsupported model_type {mt!r}")
