"""Evaluation: loss / perplexity and decoded-output metrics on every eval set; ``evaluate``
scores a stored checkpoint."""
from __future__ import annotations

import os

from prompt_tuning import checkpoint as ckpt_lib
from prompt_tuning.data import synthetic
from prompt_tuning.run.build import build, import_tasks


def evaluate_all(trainer, vocab, eval_sets, params, config) -> dict:
  out = {}
  bs = config.train.eval_batch_size
  for name, ds in eval_sets.items():
    m = trainer.evaluate(params, ds.eval_batches(bs))
    preds = []
    for b in ds.eval_batches(bs):
      pred = trainer.decode(params, {"inputs": b["inputs"]}, config.train.max_decode_length)
      preds += [vocab.decode(p) for p, v in zip(pred, b["valid"]) if v]
    if name in synthetic.TASKS or name not in import_tasks().SPECS:
      # Synthetic tasks and mixtures (no metric of their own): exact-match accuracy.
      targets = [vocab.decode(t) for t in ds.arrays["targets"]]
      m["accuracy"] = sum(p == t for p, t in zip(preds, targets)) / max(len(targets), 1)
    else:
      m.update(import_tasks().score(name, ds.examples, preds))
    out[name] = m
  return out


def evaluate(config, step: int | None = None) -> dict:
  """Metrics of the checkpoint at ``step`` (default: latest) in ``config.output_dir``."""
  exp = build(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"))
  state, _ = ckpt.restore(exp.trainer.init_state(), step)
  return {"step": int(state.step), "eval": evaluate_all(exp.trainer, exp.vocab, exp.eval_sets,
                                                        state.params, config)}
