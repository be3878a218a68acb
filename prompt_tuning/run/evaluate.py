"""Evaluation over exactly the dev examples: loss / perplexity / teacher-forced sequence
accuracy, and decoded-output metrics (the task's own, or exact-match accuracy for synthetic
tasks and mixtures), every metric in percent. Padding rows of the last batch never count; on
several hosts each host evaluates its rows and the predictions are gathered by example index
before scoring. ``evaluate`` scores a stored checkpoint."""
from __future__ import annotations

import os
import sys

import numpy as np

from prompt_tuning import checkpoint as ckpt_lib
from prompt_tuning import events, metrics, provenance, sharding
from prompt_tuning.data import files, synthetic
from prompt_tuning.run.build import build, import_tasks, is_synthetic, resolve_tasks, start
from prompt_tuning.run.validate import check_stored_run


def label_set(name: str) -> tuple[str, ...]:
  """The class labels of a classification task (empty: not one, e.g. ReCoRD, translation)."""
  if is_synthetic(name):
    return tuple(synthetic.CLASS_LABELS.get(name, ()))
  if "+" in name:
    return ()
  spec = import_tasks().SPECS.get(name)
  return tuple(spec.labels) if spec is not None else ()


def run_labels(config) -> tuple[str, ...]:
  """The class labels of a run's training task (own data: its label set)."""
  if files.is_own(config.data):
    return files.OwnData(config.data).labels
  return label_set(resolve_tasks(config)[0])   # data.domain_shift: its training task


def score(name: str, examples: list[dict], predictions: list[str]) -> dict:
  """The task's metrics; synthetic tasks and mixtures: exact-match accuracy."""
  if is_synthetic(name) or "+" in name:
    return metrics.accuracy(examples, predictions)
  tasks = import_tasks()
  if name not in tasks.SPECS:  # a registered mixture has no metric of its own
    return metrics.accuracy(examples, predictions)
  return tasks.score(name, examples, predictions)


def decode_by_index(exp, params, batch: dict, prompts=None) -> dict[int, str]:
  """Greedy decodes of this host's rows of a global batch, gathered from every host:
  {example index: text} for the rows with ``batch["index"] >= 0``."""
  pred = exp.trainer.decode(params, batch, exp.config.train.max_decode_length, prompts)
  # The indices take the predictions' path through the mesh: on several hosts the global row
  # order follows the mesh, not the process order.
  index = sharding.gather(sharding.shard_batch({"index": batch["index"]}, exp.mesh,
                                               exp.trainer.rules)["index"])
  return {int(i): exp.vocab.decode(p) for i, p in zip(index, pred) if i >= 0}


def encode_labels(exp, labels) -> tuple[np.ndarray, np.ndarray]:
  """Each label as a whole target row (EOS appended, never truncated): tokens and weights
  [num_labels, T], T the longest label."""
  ids = [list(exp.vocab.encode(label)) + [exp.vocab.eos_id] for label in labels]
  t = max(len(x) for x in ids)
  tokens = np.full((len(labels), t), exp.vocab.pad_id, np.int32)
  weights = np.zeros((len(labels), t), np.float32)
  for j, x in enumerate(ids):
    tokens[j, :len(x)], weights[j, :len(x)] = x, 1.0
  return tokens, weights


def rank_by_index(exp, params, batch: dict, labels) -> dict[int, tuple[str, list[float]]]:
  """Rank classification (T5X score_batch style): every row scored with each candidate label
  as its target; {example index: (best label, [log-likelihood per label])}."""
  tokens, weights = encode_labels(exp, labels)
  n = len(batch["inputs"])
  scores = []
  for row, w in zip(tokens, weights):
    b = {"inputs": batch["inputs"], "input_mask": batch["input_mask"],
         "targets": np.tile(row, (n, 1)), "target_weights": np.tile(w, (n, 1))}
    scores.append(sharding.gather(exp.trainer.score(params, b)))
  scores = np.stack(scores, axis=1)
  index = sharding.gather(sharding.shard_batch({"index": batch["index"]}, exp.mesh,
                                               exp.trainer.rules)["index"])
  return {int(i): (labels[int(np.argmax(s))], s.tolist()) for i, s in zip(index, scores)
          if i >= 0}


def evaluate_set(exp, name: str, ev, params) -> dict:
  trainer = exp.trainer
  # Own data carries its label set and metrics; registered tasks are looked up by name.
  labels = ev.labels if getattr(ev, "labels", None) is not None else label_set(name)
  scorer = getattr(ev, "scorer", None) or (lambda ex, pred: score(name, ex, pred))
  sums = None
  by_index: dict[int, tuple] = {}
  ranked: dict[int, str] = {}
  # Plain progress lines only for long evaluations (every 30 s) when not on a terminal.
  bar = events.Progress(getattr(ev, "num_batches", 0), label=f"eval {name}",
                        unit="batches", interval=30.0, stream=sys.stderr,
                        enabled=sharding.is_main_process())
  for batch, raw in ev:
    out = {k: sharding.gather(v) for k, v in trainer.eval_step(params, batch).items()}
    sums = out if sums is None else {k: sums[k] + out[k] for k in out}
    valid_local = [int(i) for i in batch["index"] if i >= 0]
    raw_by_index = dict(zip(sharding.allgather_objects(valid_local),
                            sharding.allgather_objects(raw)))
    for i, text in decode_by_index(exp, params, batch).items():
      by_index[i] = (raw_by_index[i], text)
    if labels:
      ranked.update({i: best for i, (best, _) in rank_by_index(exp, params, batch,
                                                               labels).items()})
    bar.update(bar.n + 1)
  bar.close()
  if sums is None or int(sums["count"]) == 0:
    raise ValueError(f"eval set {name!r} has no examples")
  order = sorted(by_index)
  if order != list(range(len(order))):
    raise RuntimeError(f"eval set {name!r}: examples {len(order)} seen, indices not 0..n-1")
  loss = float(sums["loss_sum"]) / max(float(sums["weight_sum"]), 1.0)
  m = {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
       "sequence_accuracy": 100.0 * float(sums["seq_correct"]) / int(sums["count"]),
       "num_examples": len(order)}
  examples = [by_index[i][0] for i in order]
  m.update(scorer(examples, [by_index[i][1] for i in order]))
  if labels:  # next to the decoded metrics: the same metrics of the rank-classified labels
    m.update({f"rank_{k}": v for k, v in
              scorer(examples, [ranked[i] for i in order]).items()})
  return m


def evaluate_all(exp, params) -> dict:
  return {name: evaluate_set(exp, name, ev, params) for name, ev in exp.eval_sets.items()}


def evaluate(config, step: int | None = None, allow_changed=()) -> dict:
  """Metrics of the checkpoint at ``step`` (default: latest) in ``config.output_dir``."""
  start(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"),
                               run_id=provenance.read_run_id(config.output_dir))
  check_stored_run(ckpt.read_meta(step), config, allow_changed, "evaluate")
  exp = build(config)
  state, _ = ckpt.restore(exp.trainer.init_state(), step)
  ckpt.close()
  return {"step": int(state.step), "eval": evaluate_all(exp, state.params)}
