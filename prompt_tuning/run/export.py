"""``prompt-tuning export``: a finished run's tuned parameters as files other tools read.

  --format peft    PEFT adapter directory (prompt, lora, dora, pissa, prefix, ia3):
                   adapter_config.json + adapter_model.safetensors, for
                   peft.PeftModel.from_pretrained(base, DIR)
  --format hf      Hugging Face checkpoint of the tuned model (LoRA / DoRA / PiSSA merged, or
                   the weights full / layers tuning changed) + the base's tokenizer files
  --format prompt  the soft prompt: prompt.npy, prompt.safetensors, prompt.json

The run is read as ``infer`` reads it: the config (the same flags as training) and the latest
checkpoint of ``output_dir`` (or ``--step``). The library logic is in prompt_tuning.interop.
"""
from __future__ import annotations

import copy
import json
import os

from flax import nnx

from prompt_tuning import checkpoint as ckpt_lib
from prompt_tuning import interop, methods, provenance
from prompt_tuning.run.build import build, build_model, model_reference, start
from prompt_tuning.run.validate import check_stored_run

FORMATS = ("peft", "hf", "prompt")


def export(config, out_dir: str, fmt: str, step: int | None = None, allow_changed=()) -> dict:
  """Writes the run's tuned parameters to ``out_dir`` in format ``fmt``; returns a summary."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
  if not out_dir:
    raise ValueError("export needs --out DIR")
  start(config)
  config = copy.deepcopy(config)
  if "init_from" in config.method:
    config.method.init_from = ""   # the checkpoint holds the state; the start file may be gone
  for section in config.method.values():   # likewise a run it started from (prompt transfer)
    if hasattr(section, "keys") and "init_from_run" in section:
      section.init_from_run = ""
  exp = build(config, with_data=False)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"),
                               run_id=provenance.read_run_id(config.output_dir))
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory} to export")
    check_stored_run(ckpt.read_meta(step), config,
                     tuple(allow_changed) + ("method.init_from",), "export")
    ref = json.loads(json.dumps(model_reference(config)))
    state, _ = ckpt.restore(exp.trainer.init_state(), step)
  finally:
    ckpt.close()
  model = exp.model
  nnx.update(model, state.params)   # the tuned values into the model (frozen weights as loaded)
  base = ref.get("hf_checkpoint")
  result = {"format": fmt, "out": os.path.abspath(out_dir), "step": int(state.step),
            "method": exp.method.name}
  if fmt == "peft":
    files = []
    if base is None:  # a random-init preset: write the base too, so PEFT has something to load
      base_dir = os.path.join(out_dir, "base_model")
      files += interop.export_merged(_without_method(config), base_dir,
                                     getattr(exp.vocab, "path", None))
      base = os.path.abspath(base_dir)
    files = interop.export_peft(model, exp.method, out_dir, base) + files
  elif fmt == "hf":
    files = interop.export_merged(model, out_dir, _tokenizer_source(config, exp.vocab))
  else:
    files = interop.export_prompt(model, out_dir, {"base_model": ref, "step": int(state.step),
                                                   "method": methods.describe(exp.method)})
  result["files"] = sorted(os.path.relpath(f, out_dir) for f in files)
  return result


def _tokenizer_source(config, vocab) -> str | None:
  """The checkpoint directory when the run uses its tokenizer, else the vocabulary file."""
  if config.model.hf_checkpoint and not config.data.vocab:
    path = interop.hub.resolve(config.model.hf_checkpoint)
    if any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "spiece.model")):
      return path
  return getattr(vocab, "path", None)


def _without_method(config):
  """The frozen base model of a preset run (built as the run builds it, no method attached)."""
  return build_model(config)[0]
