"""Strict Hugging Face checkpoint loading and saving, for every family in one place.

A family (``t5.py``, ``bart.py``, ``decoder.py``) describes itself with a :class:`Family`: the HF
``model_type`` values it reads, a config reader and writer, and a :class:`WeightMap` from HF
tensor names to our parameter paths. This module does the rest, strictly:

* every tensor of the checkpoint is consumed (a weight, a tied copy equal to its original, or a
  known non-weight buffer such as GPT-2's causal-mask ``attn.bias``), or the load fails naming
  the leftovers;
* every key of ``config.json`` is read, explicitly ignored as not changing the maths (metadata,
  dropout, generation settings), or the load fails naming it (:class:`ConfigReader`);
* unreadable files (truncated or garbage safetensors, broken JSON) give one clear error.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning.models import core


class CheckpointError(ValueError):
  pass


Path = tuple  # a parameter path in the model's state, e.g. ("decoder", "layers", 0, "attn", ...)


# ----------------------------------------------------------------------------- files
def read_config(path: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
  fn = os.path.join(path, "config.json")
  if not os.path.isdir(path) or not os.path.exists(fn):
    raise FileNotFoundError(f"no config.json in checkpoint directory {path!r}")
  return read_json(fn)


def read_json(fn: str) -> dict:
  """A JSON object file (config.json, adapter_config.json), or one clear CheckpointError."""
  try:
    with open(fn) as f:
      d = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{fn}: not valid JSON ({e})") from e
  if not isinstance(d, dict):
    raise CheckpointError(f"{fn}: expected a JSON object, got {type(d).__name__}")
  return d


def weight_files(path: str) -> list[str]:
  names = os.listdir(path)
  for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if index in names:
      try:
        with open(os.path.join(path, index)) as f:
          shards = sorted(set(json.load(f)["weight_map"].values()))
      except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{os.path.join(path, index)}: not a valid shard index ({e})")
      return [os.path.join(path, s) for s in shards]
  for single in ("model.safetensors", "pytorch_model.bin"):
    if single in names:
      return [os.path.join(path, single)]
  raise FileNotFoundError(
      f"no weights in {path!r}: expected model.safetensors, pytorch_model.bin or a sharded "
      f"index (*.index.json); found {sorted(names)}")


class LazyTensors(collections.abc.Mapping):
  """The tensors of a checkpoint directory by name, each read from its file when asked for
  (safetensors), so a load holds one tensor at a time on the host; ``pytorch_model.bin`` files
  are read whole (torch.load has no per-tensor reads). Names come from the files' headers."""

  def __init__(self, path: str):
    self._where: dict[str, str] = {}
    self._eager: dict[str, np.ndarray] = {}
    for fn in weight_files(path):
      if not os.path.exists(fn):
        raise FileNotFoundError(f"checkpoint shard {fn!r} is missing")
      if fn.endswith(".safetensors"):
        self._where.update(dict.fromkeys(_safetensors_names(fn), fn))
      else:
        self._eager.update(read_torch(fn))

  def __getitem__(self, key: str) -> np.ndarray:
    if key in self._eager:
      return self._eager[key]
    return read_safetensors(self._where[key], key)[key]

  def __iter__(self):
    return iter(list(self._where) + list(self._eager))

  def __len__(self) -> int:
    return len(self._where) + len(self._eager)

  def __contains__(self, key) -> bool:
    return key in self._where or key in self._eager


def _safetensors_names(fn: str) -> list[str]:
  try:
    with open(fn, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(n)) if 0 < n < 1 << 30 else None
  except (OSError, ValueError):
    header = None
  if not isinstance(header, dict):
    raise CheckpointError(f"{fn}: not a readable safetensors file (truncated or corrupt?)")
  return [k for k in header if k != "__metadata__"]


def read_safetensors(fn: str, key: str | None = None) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file (or only ``key``)."""
  from safetensors import SafetensorError, safe_open
  try:
    with safe_open(fn, framework="numpy") as f:
      return {k: f.get_tensor(k) for k in (f.keys() if key is None else [key])}
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    if "bfloat16" in str(e) or "bf16" in str(e).lower():
      return _read_safetensors_bf16(fn, key)
    raise CheckpointError(f"{fn}: not a readable safetensors file (truncated or corrupt?): "
                          f"{' '.join(str(e).split())[:200]}") from e


def _read_safetensors_bf16(fn: str, key: str | None = None) -> dict[str, np.ndarray]:
  """numpy has no bfloat16: read through ml_dtypes (a JAX dependency) and widen to float32."""
  import ml_dtypes
  with open(fn, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    if key is not None:   # one tensor: read its bytes only
      a, b = header[key]["data_offsets"]
      f.seek(8 + n + a)
      header, raw = {key: dict(header[key], data_offsets=(0, b - a))}, f.read(b - a)
      n = -8
    else:
      f.seek(0)
      raw = f.read()
  dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
            "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    a, b = info["data_offsets"]
    arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    out[name] = arr.astype(np.float32) if info["dtype"] == "BF16" else arr.copy()
  return out


def read_torch(fn: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:  # pragma: no cover
    raise CheckpointError(f"reading {fn!r} needs PyTorch (pip install torch)") from e
  try:
    sd = torch.load(fn, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for garbage files
    raise CheckpointError(f"{fn}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                          f"{' '.join(str(e).split())[:200]}") from e
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in sd.items()}


# ----------------------------------------------------------------------------- config keys
_REQUIRED = object()
# Keys of every transformers config that do not change a forward pass: bookkeeping, task heads,
# output switches, training-time dropout / layer drop (the library sets model.dropout_rate
# itself), initialisation, and generation settings (our decoding is greedy).
COMMON_IGNORED = frozenset("""
_name_or_path architectures transformers_version model_type dtype torch_dtype id2label label2id
num_labels problem_type return_dict output_attentions output_hidden_states use_cache
chunk_size_feed_forward is_encoder_decoder tokenizer_class prefix task_specific_params
finetuning_task torchscript use_bfloat16 use_return_dict bos_token_id sep_token_id unk_token_id
cls_token_id mask_token_id forced_bos_token_id forced_eos_token_id gradient_checkpointing
output_past max_length min_length do_sample early_stopping num_beams num_beam_groups
diversity_penalty temperature top_k top_p typical_p repetition_penalty length_penalty
no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences
output_scores return_dict_in_generate remove_invalid_values exponential_decay_length_penalty
suppress_tokens begin_suppress_tokens decoder_layerdrop encoder_layerdrop layerdrop dropout
dropout_rate attention_dropout activation_dropout classifier_dropout attention_probs_dropout_prob
hidden_dropout_prob initializer_range initializer_factor init_std xla_device
_attn_implementation_autoset tf_legacy_loss
""".split())
# Keys that exist on every config but change the model when not at their default.
COMMON_EXPECTED = {"pruned_heads": ({}, None), "tie_encoder_decoder": (False,),
                   "add_cross_attention": (False,), "cross_attention_hidden_size": (None,)}


class ConfigReader:
  """Reads a HF ``config.json`` dict strictly: :meth:`finish` refuses any key that was neither
  read, explicitly ignored, nor a common key known not to change the model."""

  def __init__(self, d: dict, source: str):
    self.d, self.source = dict(d), source
    self.used: set[str] = set()

  def __call__(self, key: str, default=_REQUIRED):
    self.used.add(key)
    if key in self.d and self.d[key] is not None:
      return self.d[key]
    if default is _REQUIRED:
      raise CheckpointError(f"{self.source}: config.json lacks {key!r}")
    return default

  def __contains__(self, key: str) -> bool:
    return key in self.d

  def expect(self, key: str, *allowed, why: str = "is not implemented"):
    """Accepts ``key`` only with one of the ``allowed`` values (or absent)."""
    self.used.add(key)
    if key in self.d and self.d[key] not in allowed:
      raise CheckpointError(f"{self.source}: config {key}={self.d[key]!r} {why} (supported: "
                            f"{', '.join(map(repr, allowed))})")

  def ignore(self, *keys: str):
    """Keys read elsewhere or known not to change the maths for this family."""
    self.used.update(keys)

  def finish(self):
    for key, allowed in COMMON_EXPECTED.items():
      self.expect(key, *allowed)
    left = sorted(k for k in self.d if k not in self.used and k not in COMMON_IGNORED)
    if left:
      raise CheckpointError(
          f"{self.source}: config key(s) not supported by this library's "
          f"{self.d.get('model_type')!r} implementation: "
          + ", ".join(f"{k}={self.d[k]!r}"[:80] for k in left))


# ----------------------------------------------------------------------------- weight maps
@dataclasses.dataclass(frozen=True)
class Tensor:
  """One HF tensor <-> one or more of our parameters."""
  hf: str
  ours: tuple[Path, ...]
  load: Callable[[np.ndarray], tuple]     # HF array -> our arrays (one per path)
  save: Callable[..., np.ndarray]         # our arrays -> HF array


def linear(hf: str, ours: Path, in_shape, out_shape) -> Tensor:
  """torch ``nn.Linear`` weight [out, in] <-> our kernel ``in_shape + out_shape``."""
  i, o = math.prod(in_shape), math.prod(out_shape)
  return Tensor(hf, (ours,), lambda w: (w.T.reshape(tuple(in_shape) + tuple(out_shape)),),
                lambda k: np.ascontiguousarray(k.reshape(i, o).T))


def conv1d(hf: str, ours: Path, in_shape, out_shape) -> Tensor:
  """GPT-2's ``Conv1D`` weight [in, out] (no transpose)."""
  i, o = math.prod(in_shape), math.prod(out_shape)
  return Tensor(hf, (ours,), lambda w: (w.reshape(tuple(in_shape) + tuple(out_shape)),),
                lambda k: k.reshape(i, o))


def array(hf: str, ours: Path, shape=None, hf_shape=None) -> Tensor:
  """A tensor copied as is (embeddings, norms, biases), reshaped between the two layouts."""
  return Tensor(hf, (ours,), lambda w: (w if shape is None else w.reshape(shape),),
                lambda v: v if hf_shape is None else v.reshape(hf_shape))


@dataclasses.dataclass
class WeightMap:
  tensors: list[Tensor]
  # Tied copies some checkpoints carry: HF name -> the HF name it must equal.
  aliases: dict[str, str] = dataclasses.field(default_factory=dict)
  # Regexes of non-weight tensors (causal-mask buffers, rotary inv_freq) that carry nothing.
  buffers: tuple[str, ...] = ()
  # HF names of tensors that may be missing (HF fills them with zeros too: BART's
  # final_logits_bias in BartModel checkpoints).
  optional_zeros: tuple[str, ...] = ()
  # Prefix of the LM-head model's names that bare base-model checkpoints lack.
  prefix: str = ""
  # The HF projections store their weights [in, out] (GPT-2's Conv1D), not nn.Linear's [out, in].
  fan_in_fan_out: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
  """What a model family contributes: see t5.py, bart.py, decoder.py."""
  name: str
  model_types: tuple[str, ...]
  from_hf: Callable[[ConfigReader, dict], core.ModelConfig]   # (config, tensors) -> config
  to_hf: Callable[[core.ModelConfig], dict]                    # config -> config.json dict
  weights: Callable[[core.ModelConfig], WeightMap]
  presets: dict = dataclasses.field(default_factory=dict)


class _Renamed(collections.abc.Mapping):
  """``sd``'s tensors under other names ({new: old}); reads a tensor only when asked for it, as
  :class:`LazyTensors` does."""

  def __init__(self, sd, names: dict[str, str]):
    self._sd, self._names = sd, names

  def __getitem__(self, key: str):
    return self._sd[self._names[key]]

  def __iter__(self):
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)

  def __contains__(self, key) -> bool:   # Mapping's own would read the tensor to find out
    return key in self._names


def _normalise_names(sd, wm: WeightMap, expected: set[str]):
  """Bare base-model checkpoints (e.g. the official ``gpt2``) lack the LM model's prefix."""
  if not wm.prefix or any(k in expected for k in sd):
    return sd
  return _Renamed(sd, {(wm.prefix + k if wm.prefix + k in expected or wm.prefix + k in wm.aliases
                        else k): k for k in sd})


def params_from_hf(family: Family, cfg: core.ModelConfig, sd, source: str, put=None) -> dict:
  """Maps a HF state dict (a dict or :class:`LazyTensors`) to {our path: array}, consuming
  every tensor or failing. ``put(path, numpy value)`` places each value as it is made (on the
  devices), so the host holds one tensor at a time."""
  wm = family.weights(cfg)
  expected = {t.hf for t in wm.tensors}
  sd = _normalise_names(sd, wm, expected)
  out: dict[Path, np.ndarray] = {}
  used = set()
  for t in wm.tensors:
    used.add(t.hf)
    if t.hf not in sd:
      if t.hf not in wm.optional_zeros:
        raise CheckpointError(f"{source}: checkpoint lacks tensor {t.hf!r} that this "
                              f"{family.name} config needs")
      out.update({path: None for path in t.ours})   # zeros, as transformers does
      continue
    w = np.asarray(sd[t.hf])
    try:
      values = t.load(w)
    except ValueError as e:
      raise CheckpointError(f"{source}: tensor {t.hf!r} has shape {w.shape}, which does not fit "
                            f"the config ({e})") from e
    out.update((path, v if put is None else put(path, v)) for path, v in zip(t.ours, values))
  for alias, original in wm.aliases.items():
    if alias in sd:
      if original not in sd or not np.array_equal(sd[alias], sd[original]):
        raise CheckpointError(f"{source}: tensor {alias!r} differs from {original!r}, but this "
                              f"config ties them")
      used.add(alias)
  buffers = [re.compile(b) for b in wm.buffers]
  used.update(k for k in sd if any(b.fullmatch(k) for b in buffers))
  left = sorted(set(sd) - used)
  if left:
    raise CheckpointError(f"{source}: {len(left)} checkpoint tensor(s) this {family.name} config "
                          f"does not use: {left[:8]}{' ...' if len(left) > 8 else ''}")
  return out


def fill_model(abstract: nnx.Module, values: dict, dtype=None, source: str = "checkpoint"):
  """Sets every Param of ``abstract`` from ``values`` (None: zeros, for tensors a weight map
  allows to be missing); checks that nothing is missing and every shape matches."""
  graphdef, state = nnx.split(abstract)
  for path, var in nnx.to_flat_state(state):
    target = dtype if dtype is not None else var.dtype
    if path not in values:
      raise CheckpointError(f"{source}: no value for model parameter {'/'.join(map(str, path))}")
    v = values[path]
    v = np.zeros(var.shape, np.float32) if v is None else v if isinstance(v, jax.Array) \
        else np.asarray(v)
    if tuple(v.shape) != tuple(var.shape):
      raise CheckpointError(f"{source}: shape mismatch for {'/'.join(map(str, path))}: checkpoint "
                            f"{tuple(v.shape)}, model {tuple(var.shape)}")
    var.set_value(v.astype(target) if isinstance(v, jax.Array) else jnp.asarray(v, dtype=target))
  return nnx.merge(graphdef, state)


def model_config(family: Family, path: str, hf_config: dict, sd: dict,
                 **compute) -> core.ModelConfig:
  """The ModelConfig of a checkpoint directory of ``family`` (config.json read strictly; the
  state dict tells tied from untied heads), with compute options applied."""
  unknown = set(compute) - set(core.ModelConfig.COMPUTE_OPTIONS)
  if unknown:
    raise ValueError(f"only compute options {core.ModelConfig.COMPUTE_OPTIONS} can be set when "
                     f"loading a checkpoint, got {sorted(unknown)}")
  reader = ConfigReader(hf_config, os.path.join(path, "config.json"))
  cfg = family.from_hf(reader, sd)
  reader.finish()
  return cfg.replace(**compute)


def load(family: Family, path: str, hf_config: dict, *, param_dtype=None, mesh=None, rules=None,
         **compute):
  """Loads a checkpoint directory of ``family`` (see families.load for the dispatch), tensor by
  tensor: each is read, converted to ``param_dtype`` and placed on the devices before the next
  is read; with ``mesh`` straight into its sharded layout (its logical axes under ``rules``),
  each device receiving only its shard, so no device ever holds a whole unsharded model."""
  sd = LazyTensors(path)
  cfg = model_config(family, path, hf_config, sd, **compute)
  abstract = nnx.eval_shape(lambda: core.build(cfg, nnx.Rngs(0)))
  variables = dict(nnx.to_flat_state(nnx.state(abstract)))

  def put(p, value):
    var = variables.get(p)
    if var is None or tuple(value.shape) != tuple(var.shape):
      return value   # fill_model reports it
    value = np.asarray(value, param_dtype or var.dtype)
    if mesh is None:
      return jnp.asarray(value)
    from prompt_tuning import sharding
    spec = sharding.logical_to_spec(var.get_metadata().get("axes"), rules, mesh, value.shape)
    return jax.make_array_from_callback(value.shape, jax.sharding.NamedSharding(mesh, spec),
                                        lambda index: value[index])

  values = params_from_hf(family, cfg, sd, path, put)
  return fill_model(abstract, values, dtype=param_dtype, source=path)


# ----------------------------------------------------------------------------- saving
def state_dict(family: Family, model, params: Any = None) -> dict[str, np.ndarray]:
  """Our model (or its ``params`` state) as a HF state dict of float32 numpy arrays."""
  state = nnx.state(model, core.base_params()) if params is None else params
  flat = {path: np.asarray(v[...] if hasattr(v, "get_value") or hasattr(v, "value") else v,
                           np.float32)
          for path, v in nnx.to_flat_state(state)}
  out = {}
  for t in family.weights(model.cfg).tensors:
    missing = [p for p in t.ours if p not in flat]
    if missing:
      raise CheckpointError(f"cannot export {t.hf!r}: the model has no {missing[0]}")
    out[t.hf] = np.ascontiguousarray(t.save(*[flat[p] for p in t.ours]), np.float32)
  return out


def write_checkpoint(out_dir: str, config: dict, tensors: dict[str, np.ndarray]):
  """Writes config.json + model.safetensors into ``out_dir`` (each file atomically)."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, f".model.safetensors.tmp{os.getpid()}")
  save_file(tensors, tmp, metadata={"format": "pt"})
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600; a checkpoint is for sharing
  os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
  tmp = os.path.join(out_dir, f".config.json.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(out_dir, "config.json"))
