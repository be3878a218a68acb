"""The family registry: HF ``model_type`` -> family, preset name -> config, and the entry points
that combine them (``load`` a checkpoint directory, ``save`` one, ``build`` a preset).

A new family is one module (its config reader/writer, presets and HF weight names, see
``hf.Family``) plus one line in FAMILIES.
"""
from __future__ import annotations

import os

import jax.numpy as jnp
from flax import nnx

from prompt_tuning.models import bart, core, decoder, hf, t5

FAMILIES: dict[str, hf.Family] = {f.name: f for f in (t5.FAMILY, bart.FAMILY, decoder.GPT2,
                                                      decoder.LLAMA)}
BY_MODEL_TYPE = {mt: f for f in FAMILIES.values() for mt in f.model_types}
PRESETS: dict[str, core.ModelConfig] = {k: v for f in FAMILIES.values()
                                        for k, v in f.presets.items()}


def for_model_type(model_type, source: str = "checkpoint") -> hf.Family:
  if model_type not in BY_MODEL_TYPE:
    raise hf.CheckpointError(f"{source}: model_type {model_type!r} is not supported; supported: "
                             f"{', '.join(sorted(BY_MODEL_TYPE))}")
  return BY_MODEL_TYPE[model_type]


def preset(name: str, **compute) -> core.ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**compute)


def build(cfg: core.ModelConfig, seed: int = 0) -> core.LanguageModel:
  """A randomly initialised model."""
  return core.build(cfg, nnx.Rngs(seed))


def load(path: str, *, param_dtype=None, **compute) -> core.LanguageModel:
  """Loads a Hugging Face checkpoint directory (config.json + safetensors / .bin, possibly
  sharded) of any supported family, strictly (see hf.py); a Hub model id is read from the local
  Hugging Face cache (interop/hub.py). ``compute`` sets compute options (dtype, remat,
  scan_layers, attention_impl, dropout_rate); ``param_dtype`` casts the weights."""
  from prompt_tuning.interop import hub   # a Hub model id -> its snapshot in the local cache
  path = hub.resolve(path)
  config = hf.read_config(path)
  family = for_model_type(config.get("model_type"), path)
  return hf.load(family, path, config, param_dtype=param_dtype, **compute)


def checkpoint_config(path: str, **compute) -> core.ModelConfig:
  """The architecture of a checkpoint directory (or cached Hub id) without building it: e.g. to
  build the same shape with random weights (the no-pretraining baseline)."""
  from prompt_tuning.interop import hub
  path = hub.resolve(path)
  hf_config = hf.read_config(path)
  family = for_model_type(hf_config.get("model_type"), path)
  return hf.model_config(family, path, hf_config, hf.read_state_dict(path), **compute)


def save(model: core.LanguageModel, out_dir: str, params=None):
  """Writes ``model`` (or its pre-trained weights replaced by ``params``, an nnx.State of them)
  as a Hugging Face checkpoint directory that ``AutoModel*.from_pretrained`` loads."""
  family = FAMILIES[model.cfg.family]
  hf.write_checkpoint(out_dir, family.to_hf(model.cfg), hf.state_dict(family, model, params))
  return os.path.abspath(out_dir)
