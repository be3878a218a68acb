"""Train / evaluate / infer driver. ``python -m prompt_tuning.train`` runs the embedded default.

  python -m prompt_tuning.train --config configs/tiny.py --config.method.name=lora
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning import checkpoint as ckpt_lib
from prompt_tuning import events as events_lib
from prompt_tuning import methods as methods_lib
from prompt_tuning import optim, runlock, sharding
from prompt_tuning.data import arrays as arrays_lib
from prompt_tuning.data import synthetic, vocab as vocab_lib
from prompt_tuning.models import convert, t5
from prompt_tuning.trainer import Trainer


class TrainingError(RuntimeError):
  pass


# ------------------------------------------------------------------------------ building
def _dataclass_from(cls, section, **extra):
  d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  d.update(extra)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(d) - names
  if unknown:
    raise ValueError(f"unknown {cls.__name__} option(s): {sorted(unknown)}")
  for k, v in d.items():
    if isinstance(v, list):
      d[k] = tuple(v)
  return cls(**d)


def method_config(config) -> methods_lib.MethodConfig:
  return _dataclass_from(methods_lib.MethodConfig, config.method, seed=config.seed)


def optimizer_config(config, method_name: str) -> optim.OptimizerConfig:
  base = optim.default_for(method_name)
  o = config.optimizer
  over = {k: v for k, v in o.to_dict().items() if k not in ("name", "learning_rate")}
  if o.name:
    over["name"] = o.name
  over["learning_rate"] = o.learning_rate if o.learning_rate else base.learning_rate
  if o.name and o.name != base.name and not o.learning_rate:
    raise ValueError(f"optimizer.name={o.name!r} differs from the method default; also set "
                     f"optimizer.learning_rate")
  over["total_steps"] = config.train.num_steps
  return base.replace(**over)


def load_vocab(config):
  return vocab_lib.load(config.data.vocab) if config.data.vocab else vocab_lib.default_vocab()


def model_reference(config) -> dict:
  """How the frozen model is found again (it is never stored in tuning checkpoints)."""
  if config.model.hf_checkpoint:
    return {"hf_checkpoint": os.path.abspath(config.model.hf_checkpoint)}
  return {"preset": config.model.preset, "init_seed": config.seed}


def build_model(config, vocab):
  m = config.model
  over = dict(dtype=m.dtype, remat=m.remat, attention_impl=m.attention_impl,
              dropout_rate=m.dropout_rate)
  from prompt_tuning.models import bart as bart_lib, decoder as decoder_lib
  if m.hf_checkpoint:
    if convert.read_hf_config(m.hf_checkpoint).get("model_type") in ("t5", "mt5"):
      model = convert.load_t5(m.hf_checkpoint, **over)
    else:
      over.pop("attention_impl")
      model = convert.load(m.hf_checkpoint, **over)
  else:
    families = [(bart_lib.PRESETS, bart_lib.get_config, bart_lib.Bart, False),
                (decoder_lib.PRESETS, decoder_lib.get_config, decoder_lib.DecoderLM, False),
                (t5.PRESETS, t5.get_config, t5.T5, True)]
    match = [f for f in families if m.preset in f[0]]
    if not match:
      known = sorted(p for f in families for p in f[0])
      raise ValueError(f"unknown model preset {m.preset!r}; known: {known}")
    _, get_cfg, cls, has_attention_impl = match[0]
    if not has_attention_impl:
      over.pop("attention_impl")
    cfg = get_cfg(m.preset, **over)
    if vocab.vocab_size > cfg.vocab_size:
      cfg = cfg.replace(vocab_size=vocab.vocab_size)
    model = cls(cfg, rngs=nnx.Rngs(config.seed))
  if vocab.vocab_size > model.cfg.vocab_size:
    raise ValueError(f"vocabulary has {vocab.vocab_size} ids but the model only "
                     f"{model.cfg.vocab_size}")
  return model


def import_tasks():
  """Imports the seqio task layer with TensorFlow's C++ start-up logging silenced (it writes
  straight to file descriptor 2, before absl logging is configured)."""
  if "prompt_tuning.tasks" in sys.modules:
    return sys.modules["prompt_tuning.tasks"]
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    from prompt_tuning import tasks
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
  return tasks


def task_examples(name: str, split: str, n: int, seed: int, shuffle: bool = False,
                  instructions: bool = False):
  if name in synthetic.TASKS:
    return synthetic.get_examples(name, n, seed + (0 if split == "train" else 10_000))
  try:
    tasks = import_tasks()  # needs TensorFlow / seqio
  except ImportError as e:
    raise ValueError(f"unknown task {name!r}: not a synthetic task ({sorted(synthetic.TASKS)}) "
                     f"and the seqio task registry is unavailable ({e})") from e
  return tasks.text_examples(name, split, n, seed=seed, shuffle=shuffle,
                             instructions=instructions)


def build(config, with_data: bool = True):
  """Everything a run needs: vocab, trainer, datasets."""
  sharding.maybe_initialize_distributed(config.mesh.coordinator_address or None,
                                        config.mesh.num_processes or None,
                                        config.mesh.process_id)
  vocab = load_vocab(config)
  mcfg = method_config(config)
  ocfg = optimizer_config(config, mcfg.name)
  model = build_model(config, vocab)
  methods_lib.apply(model, mcfg, tokenize=vocab.encode)
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  frozen_dtype = jnp.dtype(config.model.frozen_dtype) if config.model.frozen_dtype else None
  trainer = Trainer(model, mcfg, ocfg, mesh=mesh, frozen_dtype=frozen_dtype,
                    z_loss=config.train.z_loss, dropout_seed=config.seed,
                    max_encoder_length=config.train.max_encoder_length)
  d = config.data
  prompt_len = mcfg.prompt_length if mcfg.name == "prompt" else 0
  if prompt_len + d.max_input_length > config.train.max_encoder_length:
    raise ValueError(f"prompt_length ({prompt_len}) + max_input_length ({d.max_input_length}) "
                     f"exceeds train.max_encoder_length ({config.train.max_encoder_length})")

  def dataset(task, split, n):
    few_shot = split == "train" and d.few_shot
    ex = task_examples(task, split, n, config.seed, shuffle=few_shot,
                       instructions=d.instructions)
    ds = arrays_lib.ArrayDataset(
        arrays_lib.encode_examples(ex, vocab, d.max_input_length, d.max_target_length, d.truncate),
        seed=config.seed)
    ds.examples = ex
    ds.task = task
    return ds

  if not with_data:
    return vocab, trainer, None, {}
  train_task, eval_tasks = resolve_tasks(config)
  train_ds = dataset(train_task, "train", d.num_train)
  eval_sets = {t: dataset(t, "validation", d.num_eval) for t in (train_task,) + eval_tasks}
  return vocab, trainer, train_ds, eval_sets


def resolve_tasks(config):
  """(train task, extra eval tasks); ``data.domain_shift`` names a registered pair such as
  ``qqp_to_mrpc`` (train on QQP, evaluate zero-shot on MRPC)."""
  d = config.data
  if d.domain_shift:
    tasks = import_tasks()
    if d.domain_shift not in tasks.DOMAIN_SHIFT_PAIRS:
      raise ValueError(f"unknown domain_shift {d.domain_shift!r}; known: "
                       f"{sorted(tasks.DOMAIN_SHIFT_PAIRS)}")
    src, tgt = tasks.DOMAIN_SHIFT_PAIRS[d.domain_shift]
    return src, tuple(t for t in (tgt,) + tuple(d.eval_tasks) if t != src)
  return d.task, tuple(t for t in d.eval_tasks if t != d.task)


# ------------------------------------------------------------------------------ evaluation
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


def _log(path, record):
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------ train
def train(config) -> dict:
  """Runs (or resumes) training; returns the final evaluation metrics. Holds output_dir's run
  lock throughout: a second run writing the same output_dir is refused."""
  with runlock.RunLock(config.output_dir):
    return _train(config)


def _train(config) -> dict:
  vocab, trainer, train_ds, eval_sets = build(config)
  os.makedirs(config.output_dir, exist_ok=True)
  log_path = os.path.join(config.output_dir, "metrics.jsonl")
  meta = json.loads(json.dumps({"method": dataclasses.asdict(trainer.method),
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
      _log(log_path, rec)
      tb.scalars(s, {f"train/{k}": v for k, v in rec.items() if k != "step"})
      t0, tokens = time.time(), 0.0
    if save_now:
      metrics = None
      if s % tc.eval_every == 0 or s == tc.num_steps:
        metrics = evaluate_all(trainer, vocab, eval_sets, state.params, config)
        _log(log_path, {"step": s, "eval": metrics})
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


def evaluate(config, step: int | None = None) -> dict:
  vocab, trainer, _, eval_sets = build(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"))
  state, _ = ckpt.restore(trainer.init_state(), step)
  return {"step": int(state.step), "eval": evaluate_all(trainer, vocab, eval_sets, state.params,
                                                        config)}


def infer_mixed(config, prompt_runs: dict[str, str], inputs: list[tuple[str, str]],
                step: int | None = None) -> list[str]:
  """Mixed-task inference: one shared frozen model; example i uses the soft prompt stored by
  the run of its task ``inputs[i][0]`` (``prompt_runs[task]`` = that run's output_dir)."""
  vocab, trainer, _, _ = build(config, with_data=False)
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
    length = meta["method"]["prompt_length"]
    if length != trainer.prompt_length:
      raise ValueError(f"{run_dir} has prompt_length {length}; this config has "
                       f"{trainer.prompt_length} (all prompts in a batch must have one length)")
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
  return _decode_texts(config, vocab, trainer, template, [text for _, text in inputs], prompts)


def infer(config, texts, step: int | None = None) -> list[str]:
  vocab, trainer, _, _ = build(config, with_data=False)
  ckpt = ckpt_lib.Checkpointer(os.path.join(config.output_dir, "checkpoints"))
  state, _ = ckpt.restore(trainer.init_state(), step)
  return _decode_texts(config, vocab, trainer, state.params, texts)


def _decode_texts(config, vocab, trainer, params, texts, prompts=None) -> list[str]:
  ex = [{"inputs": t, "targets": ""} for t in texts]
  arr = arrays_lib.encode_examples(ex, vocab, config.data.max_input_length, 1, config.data.truncate)
  pred = trainer.decode(params, {"inputs": arr["inputs"], "input_mask": arr["input_mask"]},
                        config.train.max_decode_length, prompts=prompts)
  return [vocab.decode(p) for p in pred]


# ------------------------------------------------------------------------------ sweeps
def apply_overrides(config, overrides: dict):
  """Returns a copy of ``config`` with dotted-key overrides ("method.prompt_length": 50)."""
  import copy
  c = copy.deepcopy(config)
  c.unlock()
  for key, value in overrides.items():
    node, parts = c, key.split(".")
    for p in parts[:-1]:
      node = node[p]
    if parts[-1] not in node:
      raise ValueError(f"sweep override names unknown config key {key!r}")
    node[parts[-1]] = value
  c.lock()
  return c


def summarize(results: dict[str, dict], groups: dict[str, str]) -> dict:
  """Mean and (population) std of every numeric eval metric over the runs of each group."""
  by_group: dict[str, list] = {}
  for name, res in results.items():
    by_group.setdefault(groups.get(name, name), []).append(res)
  out = {}
  for g, runs in by_group.items():
    vals: dict[str, list] = {}
    for r in runs:
      for task, m in r["eval"].items():
        for k, v in m.items():
          vals.setdefault(f"{task}/{k}", []).append(float(v))
    out[g] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
              for k, v in vals.items()}
  return out


def sweep(config, runs: list[dict]) -> dict:
  """Trains every run of a sweep into output_dir/<name>; writes results.jsonl and summary.json."""
  if not runs:
    raise ValueError("the config's get_sweep() returned no runs")
  base_dir = config.output_dir
  os.makedirs(base_dir, exist_ok=True)
  results, groups = {}, {}
  for run in runs:
    run = dict(run)
    name = run.pop("name")
    groups[name] = run.pop("group", name)
    c = apply_overrides(config, dict(run, output_dir=os.path.join(base_dir, name)))
    print(f"=== sweep run {name}: {run}", flush=True)
    results[name] = train(c)
    _log(os.path.join(base_dir, "results.jsonl"), {"run": name, "overrides": run, **results[name]})
  summary = summarize(results, groups)
  with open(os.path.join(base_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  return {"runs": list(results), "summary": summary}


def _load_sweep(config_path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("_sweep_config", config_path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  if not hasattr(mod, "get_sweep"):
    raise ValueError(f"{config_path} defines no get_sweep()")
  return mod.get_sweep()


# ------------------------------------------------------------------------------ CLI
def _parse(argv, command):
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  default = os.path.join(os.path.dirname(__file__), "default_config.py")
  config_flags.DEFINE_config_file("config", default, "experiment config file", flag_values=fv,
                                  lock_config=True)
  flags.DEFINE_integer("step", None, "checkpoint step (default: latest)", flag_values=fv)
  flags.DEFINE_multi_string("input", [], "input text for `infer` (repeatable)", flag_values=fv)
  flags.DEFINE_multi_string("prompt_run", [], "TASK=RUN_DIR: mixed-task `infer` with the prompt "
                            "stored in each run (inputs then are TASK::TEXT)", flag_values=fv)
  fv(argv)
  return fv


def main(argv=None, command: str = "train") -> int:
  argv = list(sys.argv if argv is None else argv)
  try:
    fv = _parse(argv, command)
    config = fv.config
    if command == "train":
      result = train(config)
    elif command == "eval":
      result = evaluate(config, fv.step)
    elif command == "sweep":
      result = sweep(config, _load_sweep(fv["config"].config_filename))
    elif command == "infer":
      if not fv.input:
        raise ValueError("infer needs at least one --input")
      if fv.prompt_run:  # mixed-task batch: --prompt_run TASK=DIR, --input TASK::TEXT
        runs = dict(r.split("=", 1) for r in fv.prompt_run)
        pairs = []
        for text in fv.input:
          if "::" not in text:
            raise ValueError(f"with --prompt_run, inputs are TASK::TEXT; got {text!r}")
          pairs.append(tuple(text.split("::", 1)))
        result = {"outputs": infer_mixed(config, runs, pairs, fv.step)}
      else:
        result = {"outputs": infer(config, fv.input, fv.step)}
    else:
      raise ValueError(f"unknown command {command!r}; use train, eval, infer or sweep")
  except (ValueError, KeyError, OSError, TrainingError, AttributeError) as e:
    text = str(e) if isinstance(e, OSError) or not e.args else str(e.args[0])
    text = " ".join(line.strip().strip("'") for line in text.splitlines() if line.strip())
    if isinstance(e, AttributeError):  # ml_collections: unknown config key
      text = f"unknown config key {text}"
    print(f"error: {type(e).__name__}: {text}", file=sys.stderr)
    return 2
  except Exception as e:  # flags errors and the like: still one line
    from absl import flags
    if isinstance(e, flags.Error):
      print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
      return 2
    raise
  print(json.dumps(result, indent=1, sort_keys=True), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
