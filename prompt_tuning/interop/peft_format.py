"""PEFT's on-disk adapter format (``adapter_config.json`` + ``adapter_model.safetensors``), for
prompt tuning and LoRA, written and read without PEFT or PyTorch installed.

What PEFT (0.21) stores and how it maps to ours:

* Prompt tuning: one tensor ``prompt_embeddings`` [num_virtual_tokens * num_transformer_submodules,
  token_dim]. ``PeftModelForSeq2SeqLM`` prepends the first ``num_virtual_tokens`` rows to the
  encoder's input embeddings (attention mask extended with ones) and leaves the decoder alone
  for prompt tuning whatever ``num_transformer_submodules`` says (the second block of rows, when
  2, is never used); ``PeftModelForCausalLM`` prepends them to the sequence. That is what we do
  (encoder only; positions counted from the first virtual token), so we write
  ``num_transformer_submodules=1`` and read the first ``num_virtual_tokens`` rows.
* LoRA: ``base_model.model.<module>.lora_A.weight`` [r, fan_in] and ``...lora_B.weight``
  [fan_out, r] (torch ``nn.Linear`` layout, also for GPT-2's ``Conv1D`` modules), output
  ``W x + (lora_alpha / r) B A x``. Our factors are ``a`` [in..., r] and ``b`` [r, out...] with
  scale ``alpha / rank``: A = a.reshape(fan_in, r).T, B = b.reshape(r, fan_out).T. Our LoRA
  targets projections by role in self- and cross-attention; PEFT's ``target_modules`` are
  module-name suffixes, chosen here as the shortest suffixes that select exactly our modules
  (e.g. GPT-2 ``attn.c_proj`` when the MLP is not targeted, since its MLP has a ``c_proj`` too).
  GPT-2 fuses q, k, v in one ``c_attn``: our n targeted of q/k/v LoRAs of rank r are one LoRA of
  rank n*r there, A = concat(A_q, A_k, A_v) and B block-diagonal (zero rows for an untargeted
  part), with ``rank_pattern`` / ``alpha_pattern`` {c_attn: n*r / n*alpha} so alpha/r is kept.
  Reading goes back, and also accepts a general rank-r ``c_attn`` LoRA (each of q/k/v gets A and
  its rows of B). A different alpha (or rsLoRA's alpha/sqrt(r)) is folded into B, exactly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning.methods.lora import LoRAAdapter
from prompt_tuning.models import core, families

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
TASK_TYPES = {True: "SEQ_2_SEQ_LM", False: "CAUSAL_LM"}   # by is_encoder_decoder


@dataclasses.dataclass(frozen=True)
class Site:
  """One Hugging Face projection module and the Dense paths of ours it holds (GPT-2's fused
  ``c_attn`` holds q, k and v)."""
  name: str
  parts: tuple[tuple, ...]


def sites(model) -> tuple[dict[str, Site], dict[tuple, tuple[Site, int]], set[str]]:
  """(HF module name -> Site, our Dense path -> (Site, part index), every HF module name that has
  parameters) from the family's weight map."""
  wm = families.FAMILIES[model.cfg.family].weights(model.cfg)
  by_name, by_path, modules = {}, {}, set()
  for t in wm.tensors:
    module = t.hf.rsplit(".", 1)[0]
    modules.add(module)
    if t.hf.endswith(".weight") and all(p[-1] == "kernel" for p in t.ours):
      site = Site(module, tuple(p[:-1] for p in t.ours))
      by_name[module] = site
      for j, p in enumerate(site.parts):
        by_path[p] = (site, j)
  return by_name, by_path, modules


def _target_names(modules: set[str], chosen: set[str]) -> list[str]:
  """The shortest module-name suffixes that select exactly ``chosen`` among ``modules`` with
  PEFT's rule (a name equal to a target, or ending in "." + target)."""
  depth = max(len(m.split(".")) for m in chosen)
  for k in range(1, depth + 1):
    names = {".".join(m.split(".")[-k:]) for m in chosen}
    picked = {m for m in modules if any(m == n or m.endswith("." + n) for n in names)}
    if picked == chosen:
      return sorted(names)
  return sorted(chosen)


def _module(model, path):
  node = model
  for p in path:
    node = node[p] if isinstance(p, int) else getattr(node, p)
  return node


def _lora_adapters(model) -> dict[tuple, core.Dense]:
  return {tuple(p): m for p, m in nnx.iter_modules(model)
          if isinstance(m, core.Dense) and isinstance(m.adapter, LoRAAdapter)}


def _fan(shape) -> int:
  return int(math.prod(shape))


def _write(out_dir: str, config: dict, tensors: dict) -> list[str]:
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, WEIGHTS), os.path.join(out_dir, CONFIG)]
  tmp = f"{paths[0]}.tmp{os.getpid()}"
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, tmp,
            metadata={"format": "pt"})
  os.replace(tmp, paths[0])
  tmp = f"{paths[1]}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  os.replace(tmp, paths[1])
  return paths


# ----------------------------------------------------------------------------- writing
def export_prompt(model, out_dir: str, base_model: str | None = None) -> list[str]:
  """The model's soft prompt as a PEFT prompt-tuning adapter."""
  if model.prompt is None:
    raise ValueError("the model has no soft prompt to export")
  cfg = model.cfg
  prompt = np.asarray(model.prompt[...], np.float32)
  _, heads, _ = cfg.stack_shape("encoder")
  layers = cfg.num_layers + (cfg.n_decoder_layers if cfg.is_encoder_decoder else 0)
  config = {"peft_type": "PROMPT_TUNING", "task_type": TASK_TYPES[cfg.is_encoder_decoder],
            "num_virtual_tokens": int(prompt.shape[0]), "token_dim": cfg.d_model,
            "num_transformer_submodules": 1, "num_attention_heads": heads, "num_layers": layers,
            "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
            "tokenizer_name_or_path": None, "tokenizer_kwargs": None,
            "base_model_name_or_path": base_model, "revision": None, "inference_mode": True,
            "modules_to_save": None}
  return _write(out_dir, config, {"prompt_embeddings": prompt})


def export_lora(model, rank: int, alpha: float, out_dir: str,
                base_model: str | None = None) -> list[str]:
  """The model's LoRA factors (rank ``rank``, scale ``alpha / rank``) as a PEFT LoRA adapter."""
  adapters = _lora_adapters(model)
  if not adapters:
    raise ValueError("the model has no LoRA adapters to export")
  by_name, by_path, modules = sites(model)
  missing = sorted(".".join(map(str, p)) for p in adapters if p not in by_path)
  if missing:
    raise ValueError(f"no Hugging Face module holds LoRA'd projection(s) {missing[:4]}")
  chosen = {by_path[p][0].name for p in adapters}
  tensors, fused = {}, {}
  for name in sorted(chosen):
    site = by_name[name]
    denses = [_module(model, p) for p in site.parts]
    picked = [j for j, p in enumerate(site.parts) if p in adapters]
    r_total = rank * len(picked)
    fan_in = _fan(denses[0].in_shape)
    outs = [_fan(d.out_shape) for d in denses]
    a_mat = np.zeros((r_total, fan_in), np.float32)
    b_mat = np.zeros((sum(outs), r_total), np.float32)
    for s, j in enumerate(picked):
      ad = denses[j].adapter
      a = np.asarray(ad.a[...], np.float32).reshape(fan_in, rank)
      b = np.asarray(ad.b[...], np.float32).reshape(rank, outs[j])
      if not math.isclose(ad.scale, alpha / rank, rel_tol=1e-6):
        raise ValueError(f"{name}: the adapter's scale {ad.scale} is not alpha/rank "
                         f"({alpha}/{rank})")
      off = sum(outs[:j])
      a_mat[s * rank:(s + 1) * rank] = a.T
      b_mat[off:off + outs[j], s * rank:(s + 1) * rank] = b.T
    if len(site.parts) > 1:
      fused[name] = len(picked)
    tensors[f"{PREFIX}{name}.lora_A.weight"] = a_mat
    tensors[f"{PREFIX}{name}.lora_B.weight"] = b_mat
  targets = _target_names(modules, chosen)
  rank_pattern, alpha_pattern = {}, {}
  n = max(fused.values(), default=1)   # targets are roles: every fused module has the same parts
  if n > 1:
    for key in _target_names(modules, set(fused)):
      rank_pattern[key], alpha_pattern[key] = rank * n, alpha * n
  config = {"peft_type": "LORA", "task_type": TASK_TYPES[model.cfg.is_encoder_decoder],
            "r": int(rank), "lora_alpha": _num(alpha), "target_modules": targets,
            "rank_pattern": {k: int(v) for k, v in rank_pattern.items()},
            "alpha_pattern": {k: _num(v) for k, v in alpha_pattern.items()},
            "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False,
            "lora_bias": False, "fan_in_fan_out": model.cfg.family == "gpt2",
            "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
            "layers_pattern": None, "base_model_name_or_path": base_model, "revision": None,
            "inference_mode": True}
  return _write(out_dir, config, tensors)


def _num(x):
  return int(x) if float(x).is_integer() else float(x)


# ----------------------------------------------------------------------------- reading
def is_adapter_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG))


def read_adapter(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(adapter_config.json, {tensor name: float32 array}) of a PEFT adapter directory."""
  from prompt_tuning.models import hf
  fn = os.path.join(path, CONFIG)
  try:
    with open(fn) as f:
      config = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{fn}: not valid JSON ({e})") from e
  if not isinstance(config, dict):
    raise ValueError(f"{fn}: expected a JSON object")
  weights = os.path.join(path, WEIGHTS)
  if os.path.exists(weights):
    tensors = hf._read_safetensors(weights)
  elif os.path.exists(os.path.join(path, "adapter_model.bin")):
    tensors = hf._read_torch(os.path.join(path, "adapter_model.bin"))
  else:
    raise FileNotFoundError(f"PEFT adapter {path!r} has no {WEIGHTS} (or adapter_model.bin)")
  return config, {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def _check_task(config: dict, model, path: str):
  task = config.get("task_type")
  want = TASK_TYPES[model.cfg.is_encoder_decoder]
  if task is not None and task != want:
    raise ValueError(f"{path}: adapter task_type {task!r} does not fit this "
                     f"{model.cfg.architecture} model (expected {want!r})")


def read_prompt(path: str, model) -> np.ndarray:
  """The [num_virtual_tokens, d_model] prompt of a PEFT prompt-tuning adapter (checked against
  ``model``)."""
  config, tensors = read_adapter(path)
  kind = config.get("peft_type")
  if kind != "PROMPT_TUNING":
    raise ValueError(f"{path}: a {kind} adapter, not PROMPT_TUNING (soft prompts)")
  _check_task(config, model, path)
  if "prompt_embeddings" not in tensors:
    raise ValueError(f"{path}: no 'prompt_embeddings' tensor (has {sorted(tensors)[:4]})")
  emb = tensors["prompt_embeddings"]
  n = int(config.get("num_virtual_tokens") or 0)
  subs = config.get("num_transformer_submodules") or (2 if model.cfg.is_encoder_decoder else 1)
  if config.get("token_dim", emb.shape[-1]) != model.cfg.d_model or emb.shape[-1] != \
      model.cfg.d_model:
    raise ValueError(f"{path}: prompt token_dim {emb.shape[-1]} differs from the model's "
                     f"d_model {model.cfg.d_model}")
  if emb.ndim != 2 or emb.shape[0] != n * subs:
    raise ValueError(f"{path}: prompt_embeddings has shape {emb.shape}, expected "
                     f"[{n} * {subs}, {model.cfg.d_model}]")
  if subs != 1 and not model.cfg.is_encoder_decoder:
    raise ValueError(f"{path}: num_transformer_submodules={subs} for a decoder-only model")
  return emb[:n]   # the rows PEFT's prompt tuning uses (the encoder's)


_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])"
                  r"(?:\.[A-Za-z0-9_-]+)?\.weight$")


def _pattern(patterns: dict, name: str, default):
  """PEFT's get_pattern_key: the first key k with name matching (.*\\.)?(k)$."""
  for k, v in patterns.items():
    if re.match(rf"(.*\.)?({k})$", name):
      return v
  return default


def load_lora(model, path: str, rank: int, alpha: float):
  """Sets the model's LoRA factors (rank ``rank``, scale alpha/rank) from a PEFT LoRA adapter.
  The adapter must hold exactly the modules our targets cover, at this rank."""
  config, tensors = read_adapter(path)
  kind = config.get("peft_type")
  if kind != "LORA":
    raise ValueError(f"{path}: a {kind} adapter, not LORA")
  _check_task(config, model, path)
  for key, ok in (("use_dora", (False, None)), ("lora_bias", (False, None)),
                  ("bias", ("none", None)), ("modules_to_save", (None, [])),
                  ("trainable_token_indices", (None,)), ("target_parameters", (None, [])),
                  ("layer_replication", (None,))):
    if config.get(key) not in ok:
      raise ValueError(f"{path}: adapter_config {key}={config[key]!r} is not plain LoRA and "
                       f"cannot be loaded into this library's lora method")
  by_name, by_path, _ = sites(model)
  wm_prefix = families.FAMILIES[model.cfg.family].weights(model.cfg).prefix
  pairs: dict[str, dict] = {}
  bad = []
  for k, v in tensors.items():
    m = _KEY.match(k)
    if not m:
      bad.append(k)
      continue
    module = m.group("module")
    if module not in by_name and wm_prefix + module in by_name:
      module = wm_prefix + module   # an adapter of the bare base model (GPT2Model, LlamaModel)
    pairs.setdefault(module, {})[m.group("ab")] = v
  if bad:
    raise ValueError(f"{path}: tensors that are not LoRA A/B weights: {sorted(bad)[:4]}")
  unknown = sorted(n for n in pairs if n not in by_name)
  if unknown:
    raise ValueError(f"{path}: LoRA on modules this {model.cfg.family} model has no projection "
                     f"for: {unknown[:4]}")
  adapters = _lora_adapters(model)
  ours = {by_path[p][0].name for p in adapters if p in by_path}
  if set(pairs) != ours:
    only_file = sorted(set(pairs) - ours)
    only_ours = sorted(ours - set(pairs))
    raise ValueError(f"{path}: the adapter's LoRA modules differ from this run's lora targets: "
                     f"only in the adapter {only_file[:3]}{' ...' if len(only_file) > 3 else ''}"
                     f" ({len(only_file)}), only in the run {only_ours[:3]}"
                     f"{' ...' if len(only_ours) > 3 else ''} ({len(only_ours)})")
  scale = alpha / rank
  values: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
  for name, ab in sorted(pairs.items()):
    if set(ab) != {"A", "B"}:
      raise ValueError(f"{path}: {name} lacks lora_{'B' if 'A' in ab else 'A'}")
    a_mat, b_mat = ab["A"], ab["B"]
    r_file = a_mat.shape[0]
    site = by_name[name]
    denses = [_module(model, p) for p in site.parts]
    fan_in, outs = _fan(denses[0].in_shape), [_fan(d.out_shape) for d in denses]
    if a_mat.shape != (r_file, fan_in) or b_mat.shape != (sum(outs), r_file):
      raise ValueError(f"{path}: {name} has lora_A {a_mat.shape} / lora_B {b_mat.shape}; this "
                       f"model needs [r, {fan_in}] / [{sum(outs)}, r]")
    alpha_file = _pattern(config.get("alpha_pattern") or {}, name, config.get("lora_alpha", 8))
    denom = math.sqrt(r_file) if config.get("use_rslora") else r_file
    b_mat = b_mat * (float(alpha_file) / denom / scale)   # fold the adapter's scale into B
    picked = [j for j, p in enumerate(site.parts) if p in adapters]
    offs = np.cumsum([0] + outs)
    for j in range(len(site.parts)):
      if j not in picked and np.any(b_mat[offs[j]:offs[j + 1]]):
        raise ValueError(f"{path}: {name} changes part {j} ({'.'.join(map(str, site.parts[j]))}) "
                         f"that this run's lora targets do not cover")
    n = len(picked)
    blocks = r_file == rank * n and all(
        not np.any(np.delete(b_mat[offs[j]:offs[j + 1]], np.s_[s * rank:(s + 1) * rank], axis=1))
        for s, j in enumerate(picked))
    if blocks:     # our own layout: part s uses rank rows s*r:(s+1)*r
      for s, j in enumerate(picked):
        rows = slice(s * rank, (s + 1) * rank)
        values[site.parts[j]] = (a_mat[rows], b_mat[offs[j]:offs[j + 1], rows])
    elif r_file == rank:   # a general LoRA on a fused module: every part shares A
      for j in picked:
        values[site.parts[j]] = (a_mat, b_mat[offs[j]:offs[j + 1]])
    else:
      want = f"{rank}" if n == 1 else f"{rank} or {rank * n} (block-diagonal)"
      raise ValueError(f"{path}: {name} has LoRA rank {r_file}; this run's lora rank needs "
                       f"{want}")
  for p, (a_mat, b_mat) in values.items():
    dense = adapters[p]
    dense.adapter.a.set_value(jnp.asarray(a_mat.T.reshape(dense.in_shape + (rank,))))
    dense.adapter.b.set_value(jnp.asarray(b_mat.T.reshape((rank,) + dense.out_shape)))
  return sorted(pairs)
