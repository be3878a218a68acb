"""The family registry: HF ``model_type`` -> family, preset name -> config, and the entry points
that combine them (``load`` a checkpoint directory, ``save`` one, ``build`` a preset).

A new family is one module (its config reader/writer, presets and HF weight names, see
``hf.Family``) plus one line in FAMILIES.
"""
from __future__ import annotations

import hashlib
import os
import shutil

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


def load(path: str, *, param_dtype=None, mesh=None, rules=None, **compute) -> core.LanguageModel:
  """Loads a Hugging Face checkpoint directory (config.json + safetensors / .bin, possibly
  sharded) of any supported family, strictly (see hf.py); a Hub model id is read from the local
  Hugging Face cache (interop/hub.py). ``compute`` sets compute options (dtype, remat,
  scan_layers, attention_impl, dropout_rate); ``param_dtype`` casts the weights; ``mesh`` (and
  ``rules``) reads each tensor straight into its sharded layout (hf.load)."""
  from prompt_tuning.interop import hub   # a Hub model id -> its snapshot in the local cache
  path = hub.resolve(path)
  config = hf.read_config(path)
  family = for_model_type(config.get("model_type"), path)
  return hf.load(family, path, config, param_dtype=param_dtype, mesh=mesh, rules=rules,
                 **compute)


def checkpoint_config(path: str, *, weights: bool = True, **compute) -> core.ModelConfig:
  """The architecture of a checkpoint directory (or cached Hub id) without building it: e.g. to
  build the same shape with random weights (the no-pretraining baseline). ``weights=False``
  reads config.json alone: enough for token ids and shapes, but a T5 head then reads as tied
  (only the weights tell a transformers-4 untied head apart)."""
  from prompt_tuning.interop import hub
  path = hub.resolve(path)
  hf_config = hf.read_config(path)
  family = for_model_type(hf_config.get("model_type"), path)
  sd = hf.LazyTensors(path) if weights else {}   # from_hf reads the few tensors it looks at
  return hf.model_config(family, path, hf_config, sd, **compute)


def save(model: core.LanguageModel, out_dir: str, params=None):
  """Writes ``model`` (or its pre-trained weights replaced by ``params``, an nnx.State of them)
  as a Hugging Face checkpoint directory that ``AutoModel*.from_pretrained`` loads."""
  family = FAMILIES[model.cfg.family]
  hf.write_checkpoint(out_dir, family.to_hf(model.cfg), hf.state_dict(family, model, params))
  return os.path.abspath(out_dir)


def truncate(path: str, out_dir: str, num_layers: int,
             num_decoder_layers: int | None = None) -> str:
  """Writes the checkpoint ``path`` cut to its first ``num_layers`` layers (encoder-decoder: the
  first ``num_layers`` encoder and ``num_decoder_layers`` decoder layers, default the same) as a
  Hugging Face checkpoint directory ``out_dir``, with the tokenizer files of ``path``. The layers
  kept, embeddings and final norms are the pretrained ones, not re-trained at the new depth: a
  smaller model that shares the pretraining, where no smaller pretrained sibling exists."""
  from prompt_tuning.interop import hub
  src = hub.resolve(path)
  model = load(src)
  cfg = model.cfg
  n_dec = num_decoder_layers if num_decoder_layers is not None else num_layers
  depths = [(num_layers, cfg.num_layers, "num_layers")]
  if cfg.is_encoder_decoder:
    depths.append((n_dec, cfg.n_decoder_layers, "num_decoder_layers"))
  for n, full, name in depths:
    if not 1 <= n <= full:
      raise ValueError(f"{name}={n}: {src} has {full}; keep between 1 and {full}")
  small = cfg.replace(
      num_layers=num_layers, num_decoder_layers=n_dec if cfg.is_encoder_decoder else None,
      sliding_layers=None if cfg.sliding_layers is None else cfg.sliding_layers[:num_layers])
  family = FAMILIES[cfg.family]
  tensors = hf.state_dict(family, model)
  hf.write_checkpoint(out_dir, family.to_hf(small),
                      {t.hf: tensors[t.hf] for t in family.weights(small).tensors})
  weights = {os.path.basename(f) for f in hf.weight_files(src)}
  for name in sorted(os.listdir(src)):   # tokenizer files (spiece.model, tokenizer.json, ...)
    if name not in weights and name != "config.json" and not name.endswith(".index.json") \
        and os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(out_dir, name))
  return os.path.abspath(out_dir)


def truncated(path: str, num_layers: int, num_decoder_layers: int | None = None,
              cache_dir: str | None = None) -> str:
  """The copy of ``path`` cut by :func:`truncate`, made once into the cache
  (``$PROMPT_TUNING_CACHE``, else ~/.cache/prompt_tuning) under a name derived from the source's
  files, so that a config can name it; returns its directory."""
  from prompt_tuning.data.vocab import default_cache_dir
  from prompt_tuning.interop import hub
  src = hub.resolve(path)
  digest = hashlib.sha256()
  for fn in [os.path.join(src, "config.json")] + hf.weight_files(src):
    with open(fn, "rb") as f:
      digest.update(f.read())
  depth = f"L{num_layers}" + ("" if num_decoder_layers is None else f"-D{num_decoder_layers}")
  name = f"{os.path.basename(os.path.normpath(src))}-{digest.hexdigest()[:12]}-{depth}"
  out = os.path.join(cache_dir or default_cache_dir(), "truncated", name)
  if not os.path.exists(os.path.join(out, "config.json")):
    tmp = f"{out}.tmp{os.getpid()}"
    truncate(src, tmp, num_layers, num_decoder_layers)
    try:
      os.replace(tmp, out)   # atomic: a concurrent maker of the same copy may win
    except OSError:
      shutil.rmtree(tmp, ignore_errors=True)
      if not os.path.exists(os.path.join(out, "config.json")):
        raise
  return os.path.abspath(out)
