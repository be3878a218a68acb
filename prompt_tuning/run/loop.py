"""The training loop: resume (with the data iterator's state), log (loss, tokens/s, TFLOP/s,
MFU), guard against non-finite and diverging runs, evaluate, keep the best checkpoint.

Multi-host: every process runs this loop on its own rows; only process 0 writes metrics,
TensorBoard events and the progress line. Checkpoints are written by all processes (orbax),
each with its own data-iterator state.

Stopping and resuming: SIGTERM / SIGINT stop the run after the current step with a checkpoint
(prompt_tuning/run/stop.py); an evaluation due at that step is left to the resumed run. A run
directory with step directories is always resumed, never started over (no usable step: one
error). Each checkpoint records the run's id and the frozen model's files
(prompt_tuning/provenance.py), checked on resume; ``metrics.jsonl`` is cut back to the resumed
step, so each step is logged once.
"""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

from prompt_tuning import checkpoint as ckpt_lib
from prompt_tuning import events as events_lib
from prompt_tuning import flops as flops_lib
from prompt_tuning import methods, provenance, runlock, sharding
from prompt_tuning.run import jsonl
from prompt_tuning.run.build import build, model_reference, start
from prompt_tuning.run.evaluate import evaluate_all
from prompt_tuning.run.jsonl import append as append_jsonl   # sweep imports it from here
from prompt_tuning.run.stop import Preempted, StopSignals
from prompt_tuning.run.validate import as_json, check_stored_run
from prompt_tuning.trainer import global_norm


class TrainingError(RuntimeError):
  pass


def run_meta(exp, run_id: str) -> dict:
  """What every checkpoint records about its run (JSON data): the run's id, the method, the
  frozen model by reference and by content, the config."""
  return json.loads(json.dumps({"run_id": run_id, "method": methods.describe(exp.method),
                                "model": model_reference(exp.config),
                                "model_files": provenance.model_fingerprint(exp.config),
                                "config": as_json(exp.config)}))


class DivergenceGuard:
  """Stops a run whose loss explodes or whose trainable parameters run away, before anything
  of it is logged as good or saved.

  Diverged: the logged loss stays above ``factor`` times the lowest loss logged so far for
  ``patience`` logs in a row, or the trainable parameters' norm grows ``PARAM_GROWTH`` fold
  from its value at the start (lr 1e30 with Adafactor's clipped updates keeps everything
  finite while prompts reach 1e30)."""
  PARAM_GROWTH = 1e4

  def __init__(self, factor: float, patience: int, start_norm: float):
    self.factor, self.patience = factor, patience
    self.best_loss = math.inf
    self.first_norm = max(start_norm, 1e-12)
    self.bad = 0

  def check(self, step: int, loss: float, param_norm: float) -> str | None:
    if not math.isfinite(loss):
      return f"loss became {loss} at step {step}"
    if not math.isfinite(param_norm):
      return f"parameters became non-finite at step {step}"
    if param_norm > self.PARAM_GROWTH * self.first_norm:
      growth = param_norm / self.first_norm
      return (f"parameters diverged at step {step} (norm {param_norm:.3g}, {growth:.3g} times "
              f"its value {self.first_norm:.3g} at the start)")
    self.bad = self.bad + 1 if loss > self.factor * self.best_loss else 0
    if self.bad >= self.patience:
      return (f"loss diverged at step {step} ({loss:.4g}, above {self.factor:g} x the best "
              f"{self.best_loss:.4g} for {self.patience} logs)")
    self.best_loss = min(self.best_loss, loss)
    return None


def restore_data_state(it, data_state, step: int, allow_changed):
  """Puts the training iterator where the checkpoint's left it. Without a saved state
  (checkpoints from before data states), or when data keys were changed on purpose, an
  in-memory iterator is moved to ``step`` (its batches depend only on the step)."""
  changed_data = any(k == "all" or k.startswith("data.") for k in allow_changed)
  if data_state is not None and not changed_data:
    it.set_state(data_state)
  elif hasattr(it, "skip_to"):
    it.skip_to(step)
  else:
    raise TrainingError(f"checkpoint step {step} has no usable data-iterator state, so the "
                        f"streamed training data cannot resume where it stopped")


def train(config, allow_changed=()) -> dict:
  """Runs (or resumes) training; returns the final evaluation metrics. Holds output_dir's run
  lock throughout: a second run writing the same output_dir is refused."""
  start(config)
  with runlock.RunLock(config.output_dir), StopSignals() as signals:
    return _train(config, allow_changed, signals)


def resume(exp, ckpt, allow_changed):
  """(state, its meta) of the newest usable step, the data iterator moved there. Raises when
  no step is usable: starting over would overwrite steps that may still be recoverable."""
  config = exp.config
  try:
    stored = ckpt.read_meta()
    check_stored_run(stored, config, allow_changed, "resume")
    state, stored, data_state = ckpt.restore(exp.trainer.init_state(), with_data_state=True)
  except ckpt_lib.CheckpointError as e:
    raise ckpt_lib.CheckpointError(
        f"{e}. Not starting the run over, which would overwrite these steps: repair or move "
        f"{ckpt.directory} away, or use another output_dir") from None
  restore_data_state(exp.train_it, data_state, int(state.step), allow_changed)
  return state, stored


def _train(config, allow_changed, signals: StopSignals) -> dict:
  exp = build(config)
  trainer, tc = exp.trainer, config.train
  main = sharding.is_main_process()
  os.makedirs(config.output_dir, exist_ok=True)
  log_path = os.path.join(config.output_dir, "metrics.jsonl")
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"),
                               max_to_keep=tc.max_to_keep)
  newest = lambda: ckpt.read_meta() if ckpt.latest_step() is not None else None
  run_id = provenance.ensure_run_id(config.output_dir, newest)
  ckpt.bind_run(run_id)
  meta = run_meta(exp, run_id)
  # The checkpoint with the lowest perplexity on the training task's dev split.
  best = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "best"), max_to_keep=1,
                               run_id=run_id)
  best_ppl = best.read_meta().get("dev_perplexity", math.inf) \
      if best.latest_step() is not None else math.inf
  main_task = next(iter(exp.eval_sets))
  state, stored = trainer.init_state(), {}
  if ckpt.stored_steps():
    state, stored = resume(exp, ckpt, allow_changed)
    if main:
      print(f"resumed from step {int(state.step)}", flush=True)
  if main:   # the steps after the resumed one are trained (and logged) again
    jsonl.keep_through(log_path, int(state.step), drop_eval_at_step=stored.get("eval_pending"))
  if main:
    print(f"method={trainer.method.name} trainable={trainer.num_trainable:,} "
          f"frozen={trainer.num_frozen:,} devices={jax.device_count()} "
          f"processes={jax.process_count()}", flush=True)
  start = int(state.step)
  tb = events_lib.EventWriter(os.path.join(config.output_dir, "tensorboard")) if main else None
  bar = events_lib.Progress(tc.num_steps, start, enabled=main, label="train")
  guard = DivergenceGuard(tc.divergence_factor, tc.divergence_patience,
                          float(global_norm(state.params)))
  base_fraction = trainer.num_base_trainable / max(trainer.num_base, 1)
  peak = flops_lib.peak_flops()
  t0, tokens, step_flops, timed = time.time(), 0, 0.0, 0

  def stop(reason: str):
    last = ckpt.latest_step()
    ckpt.close()
    best.close()
    raise TrainingError(f"{reason}; stopped. Last good checkpoint: "
                        f"{'none' if last is None else f'step {last}'} in {ckpt.directory}")

  def preempted(s: int, note: str = ""):
    if tb is not None:
      tb.close()
    ckpt.close()
    best.close()
    where = (f"checkpoint saved in {ckpt.directory}; run the same command again to resume from "
             f"step {s}") if s else "nothing saved; run the same command again to start"
    raise Preempted(f"stopped by {signals.name} after step {s}{note}: {where}")

  def evaluate_and_log(s: int):
    nonlocal best_ppl
    metrics = evaluate_all(exp, state.params)
    if main:
      append_jsonl(log_path, {"step": s, "eval": metrics})
      tb.scalars(s, {f"eval/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()})
      bar.log(f"eval step {s}: " + "; ".join(
          f"{t}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items())
          for t, m in metrics.items()))
    ppl = metrics[main_task]["perplexity"]
    if ppl < best_ppl:
      best_ppl = ppl
      best.save(state, dict(meta, dev_perplexity=ppl, eval=metrics), force=True)

  if signals.requested():   # during the load or the restore: stop before training on
    bar.close()
    preempted(start, " (before training on)")
  if stored.get("eval_pending"):   # stopped at an evaluation step before evaluating it
    evaluate_and_log(start)

  for step in range(start, tc.num_steps):
    batch = next(exp.train_it)
    if tc.record_batches:  # debugging / tests: this host's rows of every step
      np.savez(os.path.join(config.output_dir, f"batch_{step}_p{jax.process_index()}.npz"),
               **batch)
    placed = trainer.place(batch)
    state, aux = trainer.step(state, placed)
    if step == start:  # the first step compiles: throughput counts the steps after it
      jax.block_until_ready(aux["loss"])
      t0 = time.time()
    else:
      step_flops += flops_lib.train_step_flops(exp.model.cfg, *trainer.padded_tokens(placed),
                                               base_fraction)
      tokens = tokens + aux["real_tokens"]   # on device: no sync per step
      timed += 1
    s = step + 1
    bar.update(s)
    stopping = signals.requested()   # multi-host: every process stops after the same step
    scheduled = s % tc.checkpoint_every == 0 or s == tc.num_steps
    save_now = scheduled or stopping
    log_now = s % tc.log_every == 0 or s == tc.num_steps
    if save_now or log_now:
      # Checked before anything is logged or saved: a diverged state never reaches a checkpoint.
      loss = float(aux["loss"])
      reason = guard.check(s, loss, float(aux["param_norm"]))
      if reason is None and not bool(aux["finite"]):
        reason = f"parameters became non-finite at step {s}"
      if reason:
        stop(reason)
    if log_now:
      dt = max(time.time() - t0, 1e-9)
      rec = {"step": s, "loss": loss, "grad_norm": float(aux["grad_norm"]),
             "param_norm": float(aux["param_norm"])}
      if timed:  # throughput of the steps since the last log (none: only the compiling step)
        rec.update(tokens_per_s=float(tokens) / dt, tflops_per_s=step_flops / dt / 1e12)
        if peak:
          rec["mfu"] = step_flops / dt / peak
      if main:
        speed = "" if not timed else (
            f"  {rec['tokens_per_s']:,.0f} tok/s  {rec['tflops_per_s']:.3g} TFLOP/s"
            + (f"  MFU {rec['mfu']:.1%}" if peak else ""))
        bar.update(s, loss=loss)
        bar.log(f"step {s:6d}  loss {loss:.4f}{speed}")
        append_jsonl(log_path, rec)
        tb.scalars(s, {f"train/{k}": v for k, v in rec.items() if k != "step"})
      t0, tokens, step_flops, timed = time.time(), 0, 0.0, 0
    if save_now:
      eval_due = scheduled and (s % tc.eval_every == 0 or s == tc.num_steps)
      if eval_due and not stopping:
        evaluate_and_log(s)
      # Stopping: save first (the grace period is short); the resumed run evaluates.
      ckpt.save(state, dict(meta, eval_pending=True) if eval_due and stopping else meta,
                data_state=exp.train_it.get_state())
      t0 = time.time()   # evaluation and saving are not training time
    if stopping:
      bar.close()
      preempted(s)
  bar.close()
  if signals.requested():   # during the last step's evaluation or saving: all steps are saved
    preempted(tc.num_steps, " (all steps done; the final evaluation was not run)")
  if tb is not None:
    tb.close()
  final = evaluate_all(exp, state.params)
  ckpt.close()
  result = {"step": int(state.step), "eval": final, "trainable_params": trainer.num_trainable,
            "model_params": trainer.num_base}
  if best.latest_step() is not None:
    result["best"] = {"step": best.latest_step(), "dev_perplexity": best_ppl}
  best.close()
  return result
