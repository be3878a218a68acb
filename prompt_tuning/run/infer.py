"""Inference: decode texts with a stored run, or a mixed-task batch in which every example uses
the soft prompt of its own task's run on one shared frozen model."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from prompt_tuning import checkpoint as ckpt_lib
from prompt_tuning.data import arrays as arrays_lib
from prompt_tuning.run.build import build, model_reference


def infer(config, texts, step: int | None = None) -> list[str]:
  exp = build(config, with_data=False)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"))
  state, _ = ckpt.restore(exp.trainer.init_state(), step)
  return decode_texts(config, exp.vocab, exp.trainer, state.params, texts)


def infer_mixed(config, prompt_runs: dict[str, str], inputs: list[tuple[str, str]],
                step: int | None = None) -> list[str]:
  """Mixed-task inference: one shared frozen model; example i uses the soft prompt stored by
  the run of its task ``inputs[i][0]`` (``prompt_runs[task]`` = that run's output_dir)."""
  exp = build(config, with_data=False)
  trainer = exp.trainer
  if trainer.method.name != "prompt":
    raise ValueError("mixed-task inference needs method.name='prompt'")
  ref = json.loads(json.dumps(model_reference(config)))
  table, index = [], {}
  for task, run_dir in prompt_runs.items():
    ckpt = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"))
    meta = ckpt.read_meta(step)
    if meta.get("method", {}).get("name") != "prompt":
      raise ValueError(f"{run_dir} is not a prompt-tuning run")
    if meta.get("model") != ref:
      raise ValueError(f"{run_dir} was tuned on another frozen model ({meta.get('model')}), "
                       f"not {ref}")
    length = meta["method"]["length"]
    if length != exp.method.length:
      raise ValueError(f"{run_dir} has prompt length {length}; this config has "
                       f"{exp.method.length} (all prompts in a batch must have one length)")
    state, _ = ckpt.restore(trainer.init_state(), step)
    (prompt,) = jax.tree.leaves(state.params)
    index[task] = len(table)
    table.append(np.asarray(prompt))
    ckpt.close()
  unknown = sorted({t for t, _ in inputs} - set(index))
  if unknown:
    raise ValueError(f"no prompt run given for task(s) {unknown}; have {sorted(index)}")
  prompts = np.stack(table)[[index[t] for t, _ in inputs]]
  template = trainer.init_state().params  # the prompt slot is unused: per-example prompts win
  return decode_texts(config, exp.vocab, trainer, template, [text for _, text in inputs], prompts)


def decode_texts(config, vocab, trainer, params, texts, prompts=None) -> list[str]:
  """Greedy decodes of ``texts`` (``prompts``: optional per-example soft prompts)."""
  ex = [{"inputs": t, "targets": ""} for t in texts]
  arr = arrays_lib.encode_examples(ex, vocab, config.data.max_input_length, 1, config.data.truncate)
  pred = trainer.decode(params, {"inputs": arr["inputs"], "input_mask": arr["input_mask"]},
                        config.train.max_decode_length, prompts=prompts)
  return [vocab.decode(p) for p in pred]
