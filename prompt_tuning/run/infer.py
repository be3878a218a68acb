"""Inference: decode texts with a stored run, or a mixed-task batch in which every example uses
the soft prompt of its own task's run on one shared frozen model. On several hosts every
process receives the same inputs, decodes its share of the rows, and the outputs are gathered."""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

from prompt_tuning import checkpoint as ckpt_lib, sharding
from prompt_tuning.data import arrays as arrays_lib
from prompt_tuning.data.pipeline import host_rows, round_up
from prompt_tuning.run.build import build, model_reference, start
from prompt_tuning.run.evaluate import decode_by_index, label_set, rank_by_index
from prompt_tuning.run.validate import check_drift


def check_texts(texts) -> list[str]:
  if not texts:
    raise ValueError("infer needs at least one --input")
  for i, t in enumerate(texts):
    if not t.strip():
      raise ValueError(f"--input number {i + 1} is empty")
    try:
      t.encode("utf-8")
    except UnicodeEncodeError as e:
      raise ValueError(f"--input number {i + 1} is not valid UTF-8 text ({e.reason} at "
                       f"position {e.start}); pass UTF-8 encoded text") from e
  return list(texts)


def infer(config, texts, step: int | None = None, allow_changed=(),
          rank: bool = False) -> dict:
  """{"outputs": greedy decodes}; with ``rank``, also "ranked": each text's best class label of
  the run's task by log-likelihood, and every label's score."""
  texts = check_texts(texts)
  start(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"))
  check_drift(ckpt.read_meta(step).get("config", {}), config, allow_changed, "infer")
  exp = build(config, with_data=False)
  state, _ = ckpt.restore(exp.trainer.init_state(), step)
  ckpt.close()
  out = {"outputs": decode_texts(exp, state.params, texts)}
  if rank:
    labels = label_set(config.data.task)
    if not labels:
      raise ValueError(f"task {config.data.task!r} has no class labels to rank")
    batch = host_batch(exp, texts)
    ranked = rank_by_index(exp, state.params, batch, labels)
    out["ranked"] = [{"label": ranked[i][0], "scores": dict(zip(labels, ranked[i][1]))}
                     for i in range(len(texts))]
  return out


def infer_mixed(config, prompt_runs: dict[str, str], inputs: list[tuple[str, str]],
                step: int | None = None) -> list[str]:
  """Mixed-task inference: one shared frozen model; example i uses the soft prompt stored by
  the run of its task ``inputs[i][0]`` (``prompt_runs[task]`` = that run's output_dir)."""
  texts = check_texts([text for _, text in inputs])
  exp = build(config, with_data=False)
  trainer = exp.trainer
  if exp.method.name != "prompt":
    raise ValueError("mixed-task inference needs method.name='prompt'")
  if exp.method.tasks:
    raise ValueError("mixed-task inference combines single-task prompt runs; this config has "
                     "per-task prompts (method.prompt.tasks)")
  layout = {"placement": exp.method.placement, "scope": exp.method.scope}
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
    theirs = {k: meta["method"].get(k, v) for k, v in (("placement", "prefix"),
                                                         ("scope", "encoder"))}
    if theirs != layout or meta["method"].get("tasks"):
      raise ValueError(f"{run_dir} has a prompt with {theirs}"
                       + (" and per-task prompts" if meta["method"].get("tasks") else "")
                       + f"; this config has {layout} (all prompts in a batch share one layout)")
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
  return decode_texts(exp, template, texts, prompts)


def host_batch(exp, texts) -> dict:
  """This host's rows of the texts as a batch: the rows are padded to a multiple of the
  data-parallel devices (padding repeats the last text, with index -1: never reported)."""
  cfg = exp.config
  n = len(texts)
  g = round_up(n, math.lcm(sharding.data_parallel_size(exp.mesh, exp.trainer.rules),
                           jax.process_count()))
  ex = [{"inputs": t, "targets": ""} for t in texts]
  arr = arrays_lib.encode_examples(ex, exp.vocab, cfg.data.max_input_length, 1,
                                   cfg.data.truncate)
  first, stop = host_rows(g, jax.process_count(), jax.process_index())
  rows = np.arange(first, stop)
  take = np.minimum(rows, n - 1)
  return {"inputs": arr["inputs"][take], "input_mask": arr["input_mask"][take],
          "index": np.where(rows < n, rows, -1).astype(np.int32), "take": take}


def decode_texts(exp, params, texts, prompts=None) -> list[str]:
  """Greedy decodes of ``texts`` (``prompts``: optional per-example soft prompts); each host
  decodes its share of the rows."""
  batch = host_batch(exp, texts)
  by_index = decode_by_index(exp, params, batch,
                             None if prompts is None else prompts[batch["take"]])
  return [by_index[i] for i in range(len(texts))]
