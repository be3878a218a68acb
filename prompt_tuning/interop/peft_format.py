"""PEFT's on-disk adapter format (``adapter_config.json`` + ``adapter_model.safetensors``),
written and read without PEFT or PyTorch installed, and the map between Hugging Face module names
and our projections. What each method stores there is the method's own business
(``Method.to_peft`` / ``Method.from_peft`` in prompt_tuning.methods); this module only does the
file I/O, the fields every adapter has, and the module names.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import numpy as np

from prompt_tuning.models import families

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


def fan_in_fan_out(model) -> bool:
  """Whether the family's HF projections store [in, out] (GPT-2's Conv1D), PEFT's flag."""
  return families.FAMILIES[model.cfg.family].weights(model.cfg).fan_in_fan_out


def target_names(modules: set[str], chosen: set[str]) -> list[str]:
  """The shortest module-name suffixes that select exactly ``chosen`` among ``modules`` with
  PEFT's rule (a name equal to a target, or ending in "." + target)."""
  depth = max(len(m.split(".")) for m in chosen)
  for k in range(1, depth + 1):
    names = {".".join(m.split(".")[-k:]) for m in chosen}
    picked = {m for m in modules if any(m == n or m.endswith("." + n) for n in names)}
    if picked == chosen:
      return sorted(names)
  return sorted(chosen)


def module(model, path):
  node = model
  for p in path:
    node = node[p] if isinstance(p, int) else getattr(node, p)
  return node


def fan(shape) -> int:
  return int(math.prod(shape))


def num(x):
  return int(x) if float(x).is_integer() else float(x)


def pattern(patterns: dict, name: str, default):
  """PEFT's get_pattern_key: the first key k with name matching (.*\\.)?(k)$."""
  for k, v in patterns.items():
    if re.match(rf"(.*\.)?({k})$", name):
      return v
  return default


def module_tensors(model, tensors: dict, kinds: tuple[str, ...]) -> dict[str, dict]:
  """{HF module name: {kind: array}} of an adapter's tensors named
  ``[base_model.model.]<module>.<kind>[.<adapter name>][.weight]`` (``kinds``: e.g. lora_A);
  names of a bare base model (GPT2Model, LlamaModel) get the LM model's prefix. Every tensor
  must be one of ``kinds`` on a projection of ``model``."""
  by_name, _, _ = sites(model)
  prefix = families.FAMILIES[model.cfg.family].weights(model.cfg).prefix
  key = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>"
                   + "|".join(map(re.escape, kinds)) + r")(?:\.[A-Za-z0-9_-]+)?(?:\.weight)?$")
  out: dict[str, dict] = {}
  bad = []
  for k, v in tensors.items():
    m = key.match(k)
    if not m:
      bad.append(k)
      continue
    name = m.group("module")
    if name not in by_name and prefix + name in by_name:
      name = prefix + name
    out.setdefault(name, {})[m.group("kind")] = np.asarray(v, np.float32)
  if bad:
    raise ValueError(f"tensors that are not {'/'.join(kinds)} weights: {sorted(bad)[:4]}")
  unknown = sorted(n for n in out if n not in by_name)
  if unknown:
    raise ValueError(f"{'/'.join(kinds)} on modules this {model.cfg.family} model has no "
                     f"projection for: {unknown[:4]}")
  return out


def write(out_dir: str, config: dict, tensors: dict) -> list[str]:
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


def adapter_config(model, peft_type: str, fields: dict, base_model: str | None) -> dict:
  """A whole adapter_config.json: the method's ``fields`` plus those every adapter has."""
  return {"peft_type": peft_type, "task_type": TASK_TYPES[model.cfg.is_encoder_decoder],
          **fields, "base_model_name_or_path": base_model, "revision": None,
          "inference_mode": True}


def is_adapter_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG))


def read_adapter(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(adapter_config.json, {tensor name: float32 array}) of a PEFT adapter directory."""
  from prompt_tuning.models import hf
  config = hf.read_json(os.path.join(path, CONFIG))
  weights = os.path.join(path, WEIGHTS)
  if os.path.exists(weights):
    tensors = hf.read_safetensors(weights)
  elif os.path.exists(os.path.join(path, "adapter_model.bin")):
    tensors = hf.read_torch(os.path.join(path, "adapter_model.bin"))
  else:
    raise FileNotFoundError(f"PEFT adapter {path!r} has no {WEIGHTS} (or adapter_model.bin)")
  return config, {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def check_task(config: dict, model, path: str):
  task = config.get("task_type")
  want = TASK_TYPES[model.cfg.is_encoder_decoder]
  if task is not None and task != want:
    raise ValueError(f"{path}: adapter task_type {task!r} does not fit this "
                     f"{model.cfg.architecture} model (expected {want!r})")
