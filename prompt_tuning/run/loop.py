"""The training loop: resume from the latest checkpoint, log (metrics.jsonl, TensorBoard,
progress), stop on a non-finite loss before it is saved, evaluate, keep the best checkpoint."""
from __future__ import annotations

import json
import math
import os
import time

import jax

from prompt_tuning import checkpoint as ckpt_lib
from prompt_tuning import events as events_lib
from prompt_tuning import methods, runlock
from prompt_tuning.run.build import build, model_reference
from prompt_tuning.run.evaluate import evaluate_all


class TrainingError(RuntimeError):
  pass


def append_jsonl(path, record):
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def train(config) -> dict:
  """Runs (or resumes) training; returns the final evaluation metrics. Holds output_dir's run
  lock throughout: a second run writing the same output_dir is refused."""
  with runlock.RunLock(config.output_dir):
    return _train(config)


def _train(config) -> dict:
  exp = build(config)
  vocab, trainer, train_ds, eval_sets = exp.vocab, exp.trainer, exp.train_ds, exp.eval_sets
  os.makedirs(config.output_dir, exist_ok=True)
  log_path = os.path.join(config.output_dir, "metrics.jsonl")
  meta = json.loads(json.dumps({"method": methods.describe(trainer.method),
                                "model": model_reference(config),
                                "config": json.loads(config.to_json())}))
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"),
                               max_to_keep=config.train.max_to_keep)
  # The checkpoint with the lowest perplexity on the training task's dev split.
  best = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "best"), max_to_keep=1)
  best_ppl = best.read_meta().get("dev_perplexity", float("inf")) \
      if best.latest_step() is not None else float("inf")
  main_task = next(iter(eval_sets))
  state = trainer.init_state()
  if ckpt.latest_step() is not None:
    old = ckpt.read_meta()
    if old.get("method") != meta["method"] or old.get("model") != meta["model"]:
      raise ValueError(f"{config.output_dir}: existing checkpoints were made with another "
                       f"model/method ({old.get('model')}, {old.get('method', {}).get('name')}); "
                       f"use a new output_dir")
    state, _ = ckpt.restore(state)
    print(f"resumed from step {int(state.step)}", flush=True)
  print(f"method={trainer.method.name} trainable={trainer.num_trainable:,} "
        f"frozen={trainer.num_frozen:,} devices={jax.device_count()}", flush=True)
  tc = config.train
  start = int(state.step)
  tb = events_lib.EventWriter(os.path.join(config.output_dir, "tensorboard"))
  bar = events_lib.Progress(tc.num_steps, start)
  t0, tokens = time.time(), 0.0
  for step in range(start, tc.num_steps):
    batch = train_ds.train_batch(step, tc.batch_size)
    state, aux = trainer.train_step(state, batch)
    tokens += batch["inputs"].size + batch["targets"].size
    s = step + 1
    save_now = s % tc.checkpoint_every == 0 or s == tc.num_steps
    if save_now or s % tc.log_every == 0:
      # Checked before anything is logged or saved: a non-finite loss never reaches a checkpoint.
      loss = float(aux["loss"])
      if not math.isfinite(loss) or not bool(aux["finite"]):
        last = ckpt.latest_step()
        ckpt.close()
        what = f"loss became {loss}" if not math.isfinite(loss) else "parameters became non-finite"
        raise TrainingError(f"{what} at step {s}; stopped. Last good checkpoint: "
                            f"{'none' if last is None else f'step {last}'} in {ckpt.directory}")
    if s % tc.log_every == 0 or s == tc.num_steps:
      dt = time.time() - t0
      rec = {"step": s, "loss": loss, "grad_norm": float(aux["grad_norm"]),
             "tokens_per_s": tokens / max(dt, 1e-9)}
      if bar.enabled:
        bar.update(s, loss=loss, tok_s=rec["tokens_per_s"])
      else:
        print(f"step {s:6d}  loss {loss:.4f}  {rec['tokens_per_s']:,.0f} tok/s", flush=True)
      append_jsonl(log_path, rec)
      tb.scalars(s, {f"train/{k}": v for k, v in rec.items() if k != "step"})
      t0, tokens = time.time(), 0.0
    if save_now:
      metrics = None
      if s % tc.eval_every == 0 or s == tc.num_steps:
        metrics = evaluate_all(trainer, vocab, eval_sets, state.params, config)
        append_jsonl(log_path, {"step": s, "eval": metrics})
        tb.scalars(s, {f"eval/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()})
        bar.close()
        print(f"eval step {s}: " + "; ".join(
            f"{t}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items())
            for t, m in metrics.items()), flush=True)
        ppl = metrics[main_task]["perplexity"]
        if ppl < best_ppl:
          best_ppl = ppl
          best.save(state, dict(meta, dev_perplexity=ppl, eval=metrics), force=True)
      ckpt.save(state, meta)
  bar.close()
  tb.close()
  final = evaluate_all(trainer, vocab, eval_sets, state.params, config)
  ckpt.close()
  result = {"step": int(state.step), "eval": final, "trainable_params": trainer.num_trainable}
  if best.latest_step() is not None:
    result["best"] = {"step": best.latest_step(), "dev_perplexity": best_ppl}
  best.close()
  return result
