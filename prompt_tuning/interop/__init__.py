"""Hugging Face and PEFT artifacts in and out.

Out (a model with its tuned parameters in place, e.g. after ``nnx.update(model, params)``):

* :func:`export_peft`: a PEFT adapter directory that ``peft.PeftModel.from_pretrained(base,
  dir)`` loads on the transformers model of the same checkpoint (what it holds is the method's
  ``to_peft``; :mod:`.peft_format` writes the files);
* :func:`export_merged`: a Hugging Face checkpoint with LoRA merged into the kernels (or the
  weights full / layers tuning changed), plus the tokenizer files;
* :func:`export_prompt`: the soft prompt as ``prompt.npy`` / ``prompt.safetensors`` +
  ``prompt.json`` (see :mod:`.prompt_files`).

In: :func:`init_from` sets a run's initial trainable state from a PEFT adapter directory (the
method's ``from_peft``) or a prompt file (continued training, SPoT-style prompt transfer); the run
config's ``method.init_from`` names it.

Also :mod:`.hub` (Hub model ids through the local cache) and :mod:`.tokenizer` (the checkpoint's
own tokenizer as the run's vocabulary).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
from flax import nnx

from prompt_tuning.interop import hub, peft_format, prompt_files
from prompt_tuning.interop.tokenizer import TOKENIZER_FILES, run_vocab
from prompt_tuning.models import core

__all__ = ["export_merged", "export_peft", "export_prompt", "hub", "init_from",
           "merged_params", "run_vocab"]


# ----------------------------------------------------------------------------- out
def export_peft(model, method, out_dir: str, base_model: str | None = None) -> list[str]:
  """Writes the model's tuned state (``method``: its MethodConfig) as a PEFT adapter."""
  from prompt_tuning import methods
  impl = methods.get(method.name)
  fields, tensors = impl.to_peft(model, method)
  return peft_format.write(out_dir, peft_format.adapter_config(model, impl.peft_type, fields,
                                                               base_model), tensors)


def merged_params(model) -> nnx.State:
  """The pre-trained weights with every Dense adapter merged into its kernel (an adapter merges
  through ``merged_kernel(dense)`` or ``delta(dense)``), as a state for ``models.save``. Refuses
  models whose tuned variables cannot live in a plain checkpoint (a soft prompt, ...)."""
  if model.prompt is not None:
    raise ValueError("a soft prompt cannot be merged into a Hugging Face checkpoint; export it "
                     "as a PEFT adapter (format 'peft') or a prompt file (format 'prompt')")
  flat = {tuple(p): np.asarray(v[...], np.float32)
          for p, v in nnx.to_flat_state(nnx.state(model, core.base_params()))}
  merged = []
  for path, dense in nnx.iter_modules(model):
    if not isinstance(dense, core.Dense) or dense.adapter is None:
      continue
    ad, key = dense.adapter, tuple(path) + ("kernel",)
    if hasattr(ad, "merged_kernel"):
      flat[key] = np.asarray(ad.merged_kernel(dense), np.float32)
    elif hasattr(ad, "delta"):
      flat[key] = flat[key] + np.asarray(ad.delta(dense), np.float32)
    else:
      raise ValueError(f"the {type(ad).__name__} adapter of {'.'.join(map(str, path))} cannot "
                       f"be merged into its weights")
    merged.append(tuple(path))
  extra = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(
      nnx.state(model, nnx.All(nnx.Param, nnx.Not(core.base_params()))))
           if not any(tuple(p[:len(m)]) == m for m in merged)]
  if extra:
    raise ValueError(f"tuned variables that a Hugging Face checkpoint cannot hold: {extra[:4]}")
  return nnx.from_flat_state(sorted(flat.items(), key=lambda kv: tuple(map(str, kv[0]))))


def export_merged(model, out_dir: str, tokenizer_from: str | None = None) -> list[str]:
  """A Hugging Face checkpoint directory of the tuned model (config.json, model.safetensors)
  plus the tokenizer files found in ``tokenizer_from`` (a checkpoint directory or a vocabulary
  file: a SentencePiece model is copied as spiece.model, a tokenizer.json as such)."""
  from prompt_tuning import models
  models.save(model, out_dir, params=merged_params(model))
  written = [os.path.join(out_dir, "config.json"), os.path.join(out_dir, "model.safetensors")]
  return written + copy_tokenizer(tokenizer_from, out_dir)


def copy_tokenizer(source: str | None, out_dir: str) -> list[str]:
  out = []
  if not source or not os.path.exists(source):
    return out
  if os.path.isdir(source):
    files = [(os.path.join(source, n), n) for n in TOKENIZER_FILES
             if os.path.isfile(os.path.join(source, n))]
  elif source.endswith(".json"):
    files = [(source, "tokenizer.json")] + [
        (os.path.join(os.path.dirname(source), n), n) for n in TOKENIZER_FILES[1:3]
        if os.path.isfile(os.path.join(os.path.dirname(source), n))]
  else:
    files = [(source, "spiece.model")]
  os.makedirs(out_dir, exist_ok=True)
  for src, name in files:
    dst = os.path.join(out_dir, name)
    shutil.copyfile(src, dst)
    out.append(dst)
  return out


def export_prompt(model, out_dir: str, info: dict | None = None) -> list[str]:
  if model.prompt is None:
    raise ValueError("the model has no soft prompt to export (method is not 'prompt')")
  if model.task_prompts is not None:
    raise ValueError("per-task prompts (method.prompt.tasks) are a shared prompt and a table, "
                     "not one prompt file")
  cfg = model.cfg
  info = dict(info or {}, family=cfg.family, model_type=cfg.model_type or cfg.family,
              architecture=cfg.architecture)
  return prompt_files.save_prompt(np.asarray(model.prompt[...]), out_dir, info)


# ----------------------------------------------------------------------------- in
def init_from(model, method, path: str) -> str | None:
  """Sets the trainable state of ``model`` (its method ``method`` already attached) from
  ``path``: a PEFT adapter directory, or a prompt file / directory (.npy, .safetensors,
  prompt.json). Shapes and targets must match; returns what was loaded."""
  from prompt_tuning import methods
  if not path:
    return None
  if not os.path.exists(path):
    raise FileNotFoundError(f"method.init_from {path!r} does not exist")
  impl = methods.get(method.name)
  if peft_format.is_adapter_dir(path):
    config, tensors = peft_format.read_adapter(path)
    kind = config.get("peft_type")
    want = impl.peft_type
    if kind != want:
      raise ValueError(f"method.init_from {path!r} is a {kind} adapter; method {method.name!r} "
                       f"{'takes ' + want if want else 'cannot start from a PEFT adapter'}")
    peft_format.check_task(config, model, path)
    try:
      impl.from_peft(model, method, config, tensors)
    except ValueError as e:
      raise ValueError(f"method.init_from {path}: {e}") from None
    return f"PEFT {kind} adapter {path}"
  value, _ = prompt_files.load_prompt(path)
  try:
    impl.from_prompt(model, method, value)
  except ValueError as e:
    raise ValueError(f"method.init_from {path!r} is a prompt file: {e}") from None
  return f"prompt file {path}"
