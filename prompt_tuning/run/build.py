"""An Experiment built from an ml-collections config: vocab, model, method and optimizer
configs, trainer, mesh and datasets. Also the model factory, the task import and
``model_reference`` (how a checkpoint finds its frozen model again).

The calls into the model, method, trainer and data modules are kept here, in one place.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax.numpy as jnp

from prompt_tuning import interop
from prompt_tuning import methods as methods_lib
from prompt_tuning import optim, sharding
from prompt_tuning.data import arrays as arrays_lib
from prompt_tuning.data import synthetic, vocab as vocab_lib
from prompt_tuning import models
from prompt_tuning.trainer import Trainer


@dataclasses.dataclass
class Experiment:
  """Everything a run needs. ``train_ds`` is None and ``eval_sets`` empty when built without
  data (inference)."""
  config: Any
  vocab: Any
  model: Any
  method: methods_lib.MethodConfig
  optimizer: optim.OptimizerConfig
  trainer: Trainer
  mesh: Any
  train_ds: Any = None
  eval_sets: dict = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------ configs
def method_config(config) -> methods_lib.MethodConfig:
  name = config.method.name
  methods_lib.get(name)  # unknown method: one clear error before reading its section
  section = config.method[name].to_dict() if name in config.method else {}
  return methods_lib.make(name, seed=config.seed, **section)


def optimizer_config(config, method: methods_lib.MethodConfig) -> optim.OptimizerConfig:
  base = methods_lib.get(method.name).default_optimizer(method)
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
  # data.vocab, else the checkpoint's own tokenizer (ids checked against it), else the bundled one.
  return interop.run_vocab(config)


def model_reference(config) -> dict:
  """How the frozen model is found again (it is never stored in tuning checkpoints)."""
  if config.model.hf_checkpoint:  # a directory (absolute path) or a Hub id (as given)
    return {"hf_checkpoint": interop.hub.reference(config.model.hf_checkpoint)}
  return {"preset": config.model.preset, "init_seed": config.seed}


# ------------------------------------------------------------------------------ model
def build_model(config, vocab):
  """The frozen model: a HF checkpoint directory, or a randomly initialised preset."""
  m = config.model
  compute = dict(dtype=m.dtype, remat=m.remat, scan_layers=m.scan_layers,
                 attention_impl=m.attention_impl, dropout_rate=m.dropout_rate)
  if m.hf_checkpoint:
    model = models.load(m.hf_checkpoint, **compute)
  else:
    cfg = models.preset(m.preset, **compute)
    if vocab.vocab_size > cfg.vocab_size:
      cfg = cfg.replace(vocab_size=vocab.vocab_size)
    model = models.build(cfg, seed=config.seed)
  if vocab.vocab_size > model.cfg.vocab_size:
    raise ValueError(f"vocabulary has {vocab.vocab_size} ids but the model only "
                     f"{model.cfg.vocab_size}")
  return model


# ------------------------------------------------------------------------------ tasks
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


# ------------------------------------------------------------------------------ experiment
def build(config, with_data: bool = True) -> Experiment:
  """Everything a run needs: vocab, model, trainer, mesh and (``with_data``) the datasets."""
  sharding.maybe_initialize_distributed(config.mesh.coordinator_address or None,
                                        config.mesh.num_processes or None,
                                        config.mesh.process_id)
  vocab = load_vocab(config)
  mcfg = method_config(config)
  ocfg = optimizer_config(config, mcfg)
  model = build_model(config, vocab)
  methods_lib.attach(model, mcfg, tokenize=vocab.encode)
  interop.init_from(model, mcfg, config.method.get("init_from", ""))  # PEFT adapter / prompt file
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  frozen_dtype = jnp.dtype(config.model.frozen_dtype) if config.model.frozen_dtype else None
  trainer = Trainer(model, mcfg, ocfg, mesh=mesh, frozen_dtype=frozen_dtype,
                    z_loss=config.train.z_loss, dropout_seed=config.seed,
                    max_encoder_length=config.train.max_encoder_length)
  d = config.data
  extra = trainer.extra_length
  if extra + d.max_input_length > config.train.max_encoder_length:
    raise ValueError(f"the method's {extra} prompt positions + max_input_length "
                     f"({d.max_input_length}) exceed train.max_encoder_length "
                     f"({config.train.max_encoder_length})")
  exp = Experiment(config=config, vocab=vocab, model=model, method=mcfg, optimizer=ocfg,
                   trainer=trainer, mesh=mesh)

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
    return exp
  train_task, eval_tasks = resolve_tasks(config)
  exp.train_ds = dataset(train_task, "train", d.num_train)
  exp.eval_sets = {t: dataset(t, "validation", d.num_eval) for t in (train_task,) + eval_tasks}
  return exp
