"""Inference: decode texts with a stored run, or a mixed-task batch in which every example uses
the soft prompt of its own task's run on one shared frozen model. On several hosts every
process receives the same inputs, decodes its share of the rows, and the outputs are gathered."""
from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np

from prompt_tuning import checkpoint as ckpt_lib
from prompt_tuning import events, methods, provenance, sharding
from prompt_tuning.data import arrays as arrays_lib
from prompt_tuning.data import files
from prompt_tuning.data.pipeline import host_rows, round_up
from prompt_tuning.run.build import build, model_reference, start
from prompt_tuning.run.evaluate import decode_by_index, rank_by_index, run_labels
from prompt_tuning.run.validate import check_stored_run


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


def restore(config, step: int | None = None, allow_changed=()):
  """(Experiment without data, the run's trained params at ``step``, that step)."""
  start(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"),
                               run_id=provenance.read_run_id(config.output_dir))
  try:
    check_stored_run(ckpt.read_meta(step), config, allow_changed, "infer")
    exp = build(config, with_data=False)
    state, _ = ckpt.restore(exp.trainer.init_state(), step)
  finally:
    ckpt.close()
  return exp, state.params, int(state.step)


def ranked_texts(exp, params, texts, labels) -> list[dict]:
  """Each text's best label by log-likelihood and every label's score."""
  ranked = rank_by_index(exp, params, host_batch(exp, texts), labels)
  return [{"label": ranked[i][0], "scores": dict(zip(labels, ranked[i][1]))}
          for i in range(len(texts))]


def infer(config, texts, step: int | None = None, allow_changed=(),
          rank: bool = False) -> dict:
  """{"outputs": greedy decodes}; with ``rank``, also "ranked": each text's best class label of
  the run's task by log-likelihood, and every label's score."""
  texts = check_texts(texts)
  labels = run_labels(config) if rank else ()
  if rank and not labels:
    raise ValueError(f"task {config.data.task!r} has no class labels to rank")
  exp, params, _ = restore(config, step, allow_changed)
  out = {"outputs": decode_texts(exp, params, texts)}
  if rank:
    out["ranked"] = ranked_texts(exp, params, texts, labels)
  return out


def read_records(path: str, template: str = "") -> list[tuple[dict, str]]:
  """(record, input text) per non-empty line of a jsonl file ('-': stdin): an object with an
  "inputs" string, or a JSON string. With ``template`` (an own-data run's data.input_template,
  "{field}" placeholders), an object without "inputs" is formatted as training formatted it. A
  bad line is one error naming the file and line."""
  name = "stdin" if path == "-" else repr(path)
  if path != "-" and not os.path.isfile(path):
    raise FileNotFoundError(f"--input_file {path!r} does not exist")
  f = sys.stdin if path == "-" else open(path, encoding="utf-8")
  out = []
  try:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{name} line {n} is not JSON ({e.msg}); each line must be "
                         f'{{"inputs": TEXT}} or a JSON string') from e
      if isinstance(rec, str):
        rec = {"inputs": rec}
      if template and isinstance(rec, dict) and "inputs" not in rec:
        missing = [f for f in files.template_fields(template) if rec.get(f) is None]
        if missing:
          raise ValueError(f"{name} line {n} has no {missing[0]!r} field for the run's input "
                           f"template {template!r}")
        rec = dict(rec, inputs=template.format(**rec))
      if not isinstance(rec, dict) or not isinstance(rec.get("inputs"), str):
        raise ValueError(f'{name} line {n} has no "inputs" string; each line must be '
                         f'{{"inputs": TEXT}} or a JSON string')
      if not rec["inputs"].strip():
        raise ValueError(f'{name} line {n}: "inputs" is empty')
      out.append((rec, rec["inputs"]))
  except UnicodeDecodeError as e:
    raise ValueError(f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from e
  finally:
    if f is not sys.stdin:
      f.close()
  if not out:
    raise ValueError(f"{name} holds no inputs")
  return out


def infer_file(config, input_file: str, output_file: str = "-", step: int | None = None,
               allow_changed=()) -> dict | None:
  """Decodes every record of a jsonl file, in batches of train.eval_batch_size, and writes each
  record with "output" (and, when the run's task has class labels, "ranked": the best label by
  log-likelihood and every label's score) to ``output_file`` ('-': stdout). Returns a summary
  (None when the records went to stdout)."""
  own = files.OwnData(config.data) if files.is_own(config.data) else None
  records = read_records(input_file, own.format.template if own else "")
  labels = own.labels if own else run_labels(config)
  exp, params, at = restore(config, step, allow_changed)
  size = config.train.eval_batch_size
  to_stdout = output_file == "-"
  bar = events.Progress(len(records), label="infer", unit="examples", interval=30.0,
                        stream=sys.stderr, enabled=sharding.is_main_process())
  f = sys.stdout if to_stdout else open(output_file, "w", encoding="utf-8")
  try:
    for i in range(0, len(records), size):
      chunk = records[i:i + size]
      texts = [t for _, t in chunk]
      outputs = decode_texts(exp, params, texts)
      ranked = ranked_texts(exp, params, texts, labels) if labels else [None] * len(texts)
      if sharding.is_main_process():
        for (rec, _), output, r in zip(chunk, outputs, ranked):
          f.write(json.dumps(dict(rec, output=output, **({"ranked": r} if r else {})),
                             ensure_ascii=False) + "\n")
        f.flush()
      bar.update(i + len(chunk))
  finally:
    bar.close()
    if not to_stdout:
      f.close()
  if to_stdout:
    return None
  return {"output_file": os.path.abspath(output_file), "num_examples": len(records),
          "step": at, "ranked": bool(labels)}


def infer_mixed(config, prompt_runs: dict[str, str], inputs: list[tuple[str, str]],
                step: int | None = None) -> list[str]:
  """Mixed-task inference: one shared frozen model; example i uses the soft prompt stored by
  the run of its task ``inputs[i][0]`` (``prompt_runs[task]`` = that run's output_dir)."""
  texts = check_texts([text for _, text in inputs])
  exp = build(config, with_data=False)
  trainer = exp.trainer
  impl = methods.get(exp.method.name)
  impl.check_mixable(exp.method, exp.method.options())
  ref = json.loads(json.dumps(model_reference(config)))
  table, index = [], {}
  for task, run_dir in prompt_runs.items():
    ckpt = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"),
                                 run_id=provenance.read_run_id(run_dir))
    try:
      meta = ckpt.read_meta(step)
      theirs = meta.get("method", {})
      if theirs.get("name") != exp.method.name:
        raise ValueError(f"{run_dir} is a {theirs.get('name')} run, not {exp.method.name}")
      if meta.get("model") != ref:
        raise ValueError(f"{run_dir} was tuned on another frozen model ({meta.get('model')}), "
                         f"not {ref}")
      run_config = config.copy_and_resolve_references()
      run_config.output_dir = run_dir   # the error names the run whose base model differs
      provenance.check_model(meta, run_config, what="infer")   # same path, same files?
      try:
        impl.check_mixable(exp.method, theirs)
      except ValueError as e:
        raise ValueError(f"{run_dir}: {e}") from None
      state, _ = ckpt.restore(trainer.init_state(), step)
    finally:
      ckpt.close()
    index[task] = len(table)
    table.append(impl.example_state(state.params))
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
