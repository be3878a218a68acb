"""An Experiment built from an ml-collections config: vocab, model, method and optimizer configs,
trainer, mesh, and this host's input pipelines. Also the task import and ``model_reference``
(how a checkpoint finds its frozen model again).

The calls into the model, method, trainer and data modules are kept here, in one place.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp

from prompt_tuning import interop
from prompt_tuning import methods as methods_lib
from prompt_tuning import models, optim, sharding
from prompt_tuning.data import files, inputs, synthetic
from prompt_tuning.data.pipeline import DECODER_ONLY, ENCODER_DECODER
from prompt_tuning.run.validate import validate
from prompt_tuning.trainer import Trainer


@dataclasses.dataclass
class Experiment:
  """Everything a run needs. ``train_it`` (this host's training batches) is None and
  ``eval_sets`` (name -> this host's eval batches) empty when built without data."""
  config: Any
  vocab: Any
  model: Any
  method: methods_lib.MethodConfig
  optimizer: optim.OptimizerConfig
  trainer: Trainer
  mesh: Any
  train_it: Any = None
  eval_sets: dict = dataclasses.field(default_factory=dict)

  @property
  def model_type(self) -> str:
    return ENCODER_DECODER if self.model.cfg.is_encoder_decoder else DECODER_ONLY


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
    ref = {"hf_checkpoint": interop.hub.reference(config.model.hf_checkpoint)}
    return dict(ref, random_init_seed=config.seed) if config.model.random_init else ref
  return {"preset": config.model.preset, "init_seed": config.seed}


# ------------------------------------------------------------------------------ model
def build_model(config, mesh=None, rules=None):
  """(frozen model, vocabulary). The model is a HF checkpoint directory (read before its
  tokenizer, so a broken checkpoint is the error reported), that checkpoint's architecture with
  random weights (model.random_init: the no-pretraining baseline), or a randomly initialised
  preset (validate() has checked that exactly one is asked for and allowed)."""
  m = config.model
  compute = dict(dtype=m.dtype, remat=m.remat, scan_layers=m.scan_layers,
                 attention_impl=m.attention_impl, dropout_rate=m.dropout_rate)
  if m.hf_checkpoint:
    if m.random_init:
      model = models.build(models.checkpoint_config(m.hf_checkpoint, **compute), seed=config.seed)
    else:
      model = models.load(m.hf_checkpoint, mesh=mesh, rules=rules, **compute)
    vocab = load_vocab(config)
  else:
    vocab = load_vocab(config)
    cfg = models.preset(m.preset, **compute)
    if vocab.vocab_size > cfg.vocab_size:
      cfg = cfg.replace(vocab_size=vocab.vocab_size)
    model = models.build(cfg, seed=config.seed)
  if vocab.vocab_size > model.cfg.vocab_size:
    raise ValueError(f"vocabulary has {vocab.vocab_size} ids but the model only "
                     f"{model.cfg.vocab_size}")
  return model, vocab


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


def is_synthetic(name: str) -> bool:
  return synthetic.mixture_parts(name) is not None   # a synthetic task or a "+" mixture of them


def check_task(name: str, download: bool):
  """Unknown task names fail here, in one line, before any data is read; TFDS data that is not
  on disk fails fast unless downloading is asked for."""
  if is_synthetic(name):
    return
  try:
    tasks = import_tasks()  # needs TensorFlow / seqio
  except ImportError as e:
    raise ValueError(f"unknown task {name!r}: not a synthetic task ({sorted(synthetic.TASKS)}) "
                     f"and the seqio task registry is unavailable ({e}); "
                     f"pip install -e '.[tasks]'") from e
  tasks.check_task_name(name)
  tasks.set_download(download)


def resolve_tasks(config):
  """(train task, extra eval tasks); ``data.domain_shift`` names a registered pair such as
  ``qqp_to_mrpc`` (train on QQP, evaluate zero-shot on MRPC) or a synthetic one
  (``reviews_to_comments``, no TensorFlow needed)."""
  d = config.data
  if files.is_own(d):   # the user's files replace data.task (OwnData names the dev set)
    if d.domain_shift:
      raise ValueError(f"data.domain_shift ({d.domain_shift!r}) names registered tasks; with "
                       f"own data (data.train_file / data.hf_dataset) use data.eval_tasks")
    return "", tuple(d.eval_tasks)
  if d.domain_shift:
    pairs = synthetic.DOMAIN_SHIFT_PAIRS
    if d.domain_shift not in pairs:
      pairs = import_tasks().DOMAIN_SHIFT_PAIRS
    if d.domain_shift not in pairs:
      raise ValueError(f"unknown domain_shift {d.domain_shift!r}; known: "
                       f"{sorted(pairs) + sorted(synthetic.DOMAIN_SHIFT_PAIRS)}")
    src, tgt = pairs[d.domain_shift]
    return src, tuple(t for t in (tgt,) + tuple(d.eval_tasks) if t != src)
  return d.task, tuple(t for t in d.eval_tasks if t != d.task)


# ------------------------------------------------------------------------------ experiment
def start(config):
  """First thing every verb does: validate the config and, for a multi-host run, join the
  cluster (before anything touches a JAX device: locks, checkpoints and models all do)."""
  validate(config)
  sharding.maybe_initialize_distributed(config.mesh.coordinator_address or None,
                                        config.mesh.num_processes or None,
                                        config.mesh.process_id)


def build(config, with_data: bool = True) -> Experiment:
  """Everything a run needs: vocab, model, trainer, mesh and (``with_data``) this host's
  training iterator and eval batches."""
  start(config)
  # The mesh first: a shape that does not fit the devices fails before any model is read.
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  rules = config.mesh.axis_rules
  train_task, eval_tasks = resolve_tasks(config)
  own = None
  if with_data:
    for t in ((train_task,) if train_task else ()) + eval_tasks:
      check_task(t, config.data.download)
    if not train_task:   # own data: read and checked before the model is loaded
      own = files.OwnData(config.data, jax.process_index())
  mcfg = method_config(config)
  ocfg = optimizer_config(config, mcfg)
  model, vocab = build_model(config, mesh, rules)
  methods_lib.attach(model, mcfg, tokenize=vocab.encode)
  interop.init_from(model, mcfg, config.method.init_from)  # a PEFT adapter or a prompt file
  frozen_dtype = jnp.dtype(config.model.frozen_dtype) if config.model.frozen_dtype else None
  trainer = Trainer(model, mcfg, ocfg, mesh=mesh, rules=rules, frozen_dtype=frozen_dtype,
                    z_loss=config.train.z_loss, dropout_seed=config.seed,
                    max_encoder_length=config.train.max_encoder_length)
  d, tc = config.data, config.train
  extra = trainer.extra_length
  if extra + d.max_input_length > tc.max_encoder_length:
    raise ValueError(f"the method's {extra} prompt positions + max_input_length "
                     f"({d.max_input_length}) exceed train.max_encoder_length "
                     f"({tc.max_encoder_length})")
  if d.pack and extra:
    raise ValueError(f"method {mcfg.name!r} adds {extra} prompt positions per row, which cannot "
                     f"serve several packed examples; set data.pack=False")
  data_devices = sharding.data_parallel_size(mesh, trainer.rules)
  if tc.batch_size % data_devices:
    raise ValueError(f"train.batch_size={tc.batch_size} must be a multiple of the "
                     f"{data_devices} data-parallel devices "
                     f"({jax.process_count()} process(es) x {jax.local_device_count()} local "
                     f"devices, mesh.shape={tuple(config.mesh.shape)})")
  exp = Experiment(config=config, vocab=vocab, model=model, method=mcfg, optimizer=ocfg,
                   trainer=trainer, mesh=mesh)
  if not with_data:
    return exp
  P, p = jax.process_count(), jax.process_index()
  lengths = {"inputs": d.max_input_length, "targets": d.max_target_length}
  task_names = methods_lib.get(mcfg.name).task_names(mcfg) or None   # batches carry task_ids
  if own is not None:
    if task_names:
      raise ValueError("per-task prompts (method.prompt.tasks) need registered tasks; own data "
                       "(data.train_file / data.hf_dataset) is one task")
    exp.train_it = own.train_iterator(
        vocab, feature_lengths=lengths, global_batch_size=tc.batch_size, seed=config.seed,
        truncate=d.truncate, pack=d.pack, model_type=exp.model_type, num_processes=P,
        process_index=p, shuffle_buffer_size=d.shuffle_buffer_size)
    exp.eval_sets[own.name] = own.eval_batches(
        vocab, feature_lengths=lengths, global_batch_size=tc.eval_batch_size,
        truncate=d.truncate, num_processes=P, process_index=p, pad_to_multiple=data_devices)
    eval_names = eval_tasks
  else:
    exp.train_it = inputs.train_iterator(
        train_task, vocab=vocab, feature_lengths=lengths, global_batch_size=tc.batch_size,
        seed=config.seed, num_examples=d.num_train, few_shot=d.few_shot,
        instructions=d.instructions, truncate=d.truncate, pack=d.pack,
        model_type=exp.model_type, num_processes=P, process_index=p,
        shuffle_buffer_size=d.shuffle_buffer_size or None, task_names=task_names)
    eval_names = (train_task,) + eval_tasks
  exp.eval_sets.update({t: inputs.eval_batches(
      t, vocab=vocab, feature_lengths=lengths, global_batch_size=tc.eval_batch_size,
      num_examples=d.num_eval, seed=config.seed, instructions=d.instructions,
      truncate=d.truncate, num_processes=P, process_index=p, pad_to_multiple=data_devices,
      task_names=task_names)
      for t in eval_names})
  return exp
