"""Soft-prompt tuning (Lester et al. 2021): ``length`` trainable vectors in the embedded encoder
input (decoder-only: in the sequence). Initialised from sampled embeddings of the
``init_vocab_size`` most frequent ids (SentencePiece orders ids by frequency), from the class
labels' embeddings, from a text, uniformly, or from another run's trained prompt (prompt
transfer, ``init_from_run``); trained with Adafactor at lr 0.3.

Where the prompt goes: ``placement`` (``prefix`` | ``after_bos`` | ``before_eos``) and ``scope``
(``encoder`` | ``decoder`` | ``both``: separate vectors per stack, the encoder's block first, as
PEFT's num_transformer_submodules=2); see :class:`prompt_tuning.models.core.PromptLayout`.

Multi-task prompts (``tasks``: the task names, whose order defines the ids a batch's ``task_ids``
[B] carries): a shared prompt [parts * shared_length, D] plus a table [num_tasks, parts *
length, D]; each row gets ``shared + table[task]`` (``combine='add'``, same length; the table
starts at zero so every task starts from the shared prompt) or ``shared ++ table[task]``
(``combine='concat'``, per stack; every task's block is initialised like a prompt).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.methods.base import Method, MethodConfig, Tokenize, register
from prompt_tuning.models.core import COMBINES, PLACEMENTS, SCOPES, PromptParam

INITS = ("vocab", "class_labels", "text", "uniform")


@dataclasses.dataclass(frozen=True)
class PromptConfig(MethodConfig):
  length: int = 100                # soft-prompt vectors
  init: str = "vocab"              # "vocab" | "class_labels" | "text" | "uniform"
  init_vocab_size: int = 5000      # sample from the embeddings of the first N ids
  init_text: str = ""              # init="text": the embeddings of this text's tokens
  class_labels: tuple[str, ...] = ()   # init="class_labels": the labels' embeddings first
  placement: str = "prefix"        # "prefix" | "after_bos" | "before_eos"
  scope: str = "encoder"           # "encoder" | "decoder" | "both" (encoder-decoder models)
  tasks: tuple[str, ...] = ()      # multi-task prompts: the task names (order = task ids)
  shared_length: int = 0           # multi-task: the shared prompt's length (0 = length)
  combine: str = "add"             # multi-task: "add" (sum) | "concat" (shared, then task's)
  init_from_run: str = ""          # another prompt run's output_dir: start from its prompt

  def validate(self):
    if self.init not in INITS:
      raise ValueError(f"unknown prompt init {self.init!r}; choose one of {INITS}")
    if self.length <= 0:
      raise ValueError(f"prompt length must be positive, got {self.length}")
    for name, value, options in (("placement", self.placement, PLACEMENTS),
                                 ("scope", self.scope, SCOPES),
                                 ("combine", self.combine, COMBINES)):
      if value not in options:
        raise ValueError(f"unknown prompt {name} {value!r}; choose one of {options}")
    if len(set(self.tasks)) != len(self.tasks) or not all(self.tasks):
      raise ValueError(f"prompt tasks must be distinct non-empty names, got {self.tasks}")
    if self.shared_length < 0:
      raise ValueError(f"prompt shared_length must be >= 0, got {self.shared_length}")
    if self.tasks and self.combine == "add" and self.shared_length not in (0, self.length):
      raise ValueError(f"combine='add' sums the shared and the task prompt: shared_length "
                       f"({self.shared_length}) must equal length ({self.length}) or be 0")
    if self.init_vocab_size <= 0:
      raise ValueError(f"prompt init_vocab_size must be positive, got {self.init_vocab_size}")
    if self.init == "class_labels" and not self.class_labels:
      raise ValueError("prompt init='class_labels' needs class_labels")
    if self.init == "text" and not self.init_text:
      raise ValueError("prompt init='text' needs init_text")


  @property
  def parts(self) -> int:
    """Prompted stacks: 2 for scope='both' (an encoder and a decoder block), else 1."""
    return 2 if self.scope == "both" else 1

  @property
  def shared(self) -> int:
    """Multi-task: the shared prompt's length per stack."""
    return self.shared_length or self.length

  @property
  def total_length(self) -> int:
    """Vectors of each row's prompt per prompted stack."""
    if self.tasks and self.combine == "concat":
      return self.shared + self.length
    return self.length


def init_prompt(cfg: PromptConfig, embedding: np.ndarray, tokenize: Tokenize | None = None,
                *, length: int | None = None, seed: int | None = None) -> np.ndarray:
  """Initial [length, d_model] prompt, following Lester et al. (2021) (``length``, ``seed``:
  other than the config's, for the blocks of multi-stack and multi-task prompts)."""
  count = cfg.length if length is None else length
  emb = np.asarray(embedding, np.float32)
  vocab, d = emb.shape
  rng = np.random.RandomState(cfg.seed if seed is None else seed)

  def sampled(n):
    top = min(cfg.init_vocab_size, vocab)
    return emb[rng.choice(top, size=n, replace=n > top)]

  if cfg.init == "uniform":
    return rng.uniform(-0.5, 0.5, size=(count, d)).astype(np.float32)
  if cfg.init == "vocab":
    return sampled(count)
  if tokenize is None:
    raise ValueError(f"prompt init={cfg.init!r} needs a tokenizer")
  if cfg.init == "class_labels":
    rows = []
    for label in cfg.class_labels:
      ids = list(tokenize(label))
      if not ids:
        raise ValueError(f"class label {label!r} tokenizes to nothing")
      rows.append(emb[ids].mean(axis=0))  # multi-piece labels: mean of their embeddings
    if len(rows) > count:
      raise ValueError(f"{len(rows)} class labels do not fit in prompt length {count}")
    rows = np.stack(rows)
  else:
    ids = list(tokenize(cfg.init_text))
    if not ids:
      raise ValueError("prompt init_text tokenizes to nothing")
    if len(ids) > count:
      raise ValueError(f"prompt init_text is {len(ids)} tokens, longer than the prompt length "
                       f"{count}")
    rows = emb[ids]
  rest = count - rows.shape[0]
  return np.concatenate([rows, sampled(rest)], 0).astype(np.float32) if rest else rows


def init_prompt_from_run(run_dir: str, step: int | None = None) -> np.ndarray:
  """The prompt another prompt-tuning run trained (prompt transfer, Vu et al. 2022): the
  ``prompt`` variable [n, d_model] of the newest usable checkpoint under ``run_dir``/checkpoints
  (``step``: that one), read without building that run's model; for a multi-task run, its
  shared prompt. Arrays are verified against the checkpoint's digests."""
  from prompt_tuning import checkpoint as ckpt_lib   # orbax: only when transferring
  directory = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"init_from_run: {run_dir!r} has no checkpoints directory")
  ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=None)
  try:
    method = ckpt.read_meta(step).get("method", {})
    if method.get("name") != "prompt":
      raise ValueError(f"init_from_run: {run_dir} is not a prompt-tuning run (its method is "
                       f"{method.get('name')!r})")
    params = ckpt.read_params(step)
  finally:
    ckpt.close()
  value = params.get("prompt")
  while isinstance(value, dict) and len(value) == 1:   # an nnx.State leaf may nest as {value}
    value = next(iter(value.values()))
  if value is None or isinstance(value, dict) or np.ndim(value) != 2:
    raise ValueError(f"init_from_run: {run_dir} stores no [length, d_model] prompt")
  return np.asarray(value, np.float32)


def _blocks(cfg: PromptConfig, emb, tokenize, length: int, seed: int) -> np.ndarray:
  """One initial block of ``length`` vectors per prompted stack (encoder first)."""
  return np.concatenate([init_prompt(cfg, emb, tokenize, length=length, seed=seed + s)
                         for s in range(cfg.parts)], 0)


def initial_prompts(cfg: PromptConfig, embedding, tokenize: Tokenize | None = None):
  """(shared or only prompt [parts * L, D], task table [tasks, parts * Lt, D] or None)."""
  emb = np.asarray(embedding, np.float32)
  d = emb.shape[1]
  n = cfg.parts * (cfg.shared if cfg.tasks else cfg.length)
  if cfg.init_from_run:
    first = init_prompt_from_run(cfg.init_from_run)
    if first.shape != (n, d):
      raise ValueError(f"init_from_run: {cfg.init_from_run} has a prompt of shape "
                       f"{first.shape}; this config needs {(n, d)} ("
                       + ("shared_length" if cfg.tasks else "length")
                       + f" {n // cfg.parts}, scope {cfg.scope!r})")
  else:
    first = _blocks(cfg, emb, tokenize, n // cfg.parts, cfg.seed)
  if not cfg.tasks:
    return first, None
  if cfg.combine == "add":   # every task starts from the shared prompt
    table = np.zeros((len(cfg.tasks), cfg.parts * cfg.length, d), np.float32)
  else:
    table = np.stack([_blocks(cfg, emb, tokenize, cfg.length, cfg.seed + 1000 * (t + 1))
                      for t in range(len(cfg.tasks))])
  return first, table


class Prompt(Method):
  name = "prompt"
  Config = PromptConfig

  def attach(self, model, cfg, tokenize=None):
    first, table = initial_prompts(cfg, np.asarray(model.embed.embedding[...]), tokenize)
    layout = dict(placement=cfg.placement, scope=cfg.scope)
    if table is None:
      model.set_prompt(first, **layout)
    else:
      model.set_task_prompts(first, table, combine=cfg.combine, **layout)

  def trainable(self, model, cfg):
    return PromptParam

  def export(self, model, params, cfg):
    # "prompt": the prompt (multi-task: the shared one); "task_prompts": the per-task table.
    return {".".join(map(str, p)): np.asarray(v[...], np.float32)
            for p, v in nnx.to_flat_state(params)}

  def default_optimizer(self, cfg):
    return optim.OptimizerConfig()   # Adafactor, lr 0.3, decay 0.8, clipping 1.0

  def extra_encoder_length(self, cfg):
    return 0 if cfg.scope == "decoder" else cfg.total_length

  def extra_decoder_length(self, cfg):
    return cfg.total_length if cfg.scope in ("decoder", "both") else 0

  def task_names(self, cfg):
    return cfg.tasks

  def check_mixable(self, cfg, theirs):
    if cfg.tasks:
      raise ValueError("mixed-task inference combines single-task prompt runs; this config has "
                       "per-task prompts (method.prompt.tasks)")
    layout = {"placement": cfg.placement, "scope": cfg.scope}
    their_layout = {k: theirs.get(k, v) for k, v in (("placement", "prefix"),
                                                      ("scope", "encoder"))}
    if their_layout != layout or theirs.get("tasks"):
      raise ValueError(f"it has a prompt with {their_layout}"
                       + (" and per-task prompts" if theirs.get("tasks") else "")
                       + f"; this config has {layout} (all prompts in a batch share one layout)")
    if theirs["length"] != cfg.length:
      raise ValueError(f"it has prompt length {theirs['length']}; this config has {cfg.length} "
                       f"(all prompts in a batch must have one length)")

  def example_state(self, params):
    (prompt,) = jax.tree.leaves(params)
    return np.asarray(prompt)

  # --------------------------------------------------------------------------- PEFT
  # PEFT (0.21) stores one tensor ``prompt_embeddings`` [num_virtual_tokens *
  # num_transformer_submodules, token_dim]. ``PeftModelForSeq2SeqLM`` prepends the first
  # ``num_virtual_tokens`` rows to the encoder's input embeddings (attention mask extended with
  # ones) and leaves the decoder alone for prompt tuning whatever ``num_transformer_submodules``
  # says (the second block of rows, when 2, is never used); ``PeftModelForCausalLM`` prepends them
  # to the sequence. That is our placement='prefix', scope='encoder' (positions counted from the
  # first virtual token), so we write ``num_transformer_submodules=1`` and read the first
  # ``num_virtual_tokens`` rows.
  peft_type = "PROMPT_TUNING"

  def to_peft(self, model, cfg):
    layout, per_task = model.prompt_layout, model.task_prompts is not None   # the model's own
    if per_task or (layout.placement, layout.scope) != ("prefix", "encoder"):
      raise ValueError("a PEFT prompt-tuning adapter holds one prompt prepended to the encoder "
                       "input; this one is " + ("per task" if per_task else
                       f"placement={layout.placement!r}, scope={layout.scope!r}")
                       + ": export it as a prompt file (format 'prompt') instead")
    mc = model.cfg
    prompt = np.asarray(model.prompt[...], np.float32)
    _, heads, _ = mc.stack_shape("encoder")
    layers = mc.num_layers + (mc.n_decoder_layers if mc.is_encoder_decoder else 0)
    config = {"num_virtual_tokens": int(prompt.shape[0]), "token_dim": mc.d_model,
              "num_transformer_submodules": 1, "num_attention_heads": heads,
              "num_layers": layers, "prompt_tuning_init": "RANDOM",
              "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
              "tokenizer_kwargs": None, "modules_to_save": None}
    return config, {"prompt_embeddings": prompt}

  def from_peft(self, model, cfg, config, tensors):
    if "prompt_embeddings" not in tensors:
      raise ValueError(f"no 'prompt_embeddings' tensor (has {sorted(tensors)[:4]})")
    emb = tensors["prompt_embeddings"]
    d = model.cfg.d_model
    n = int(config.get("num_virtual_tokens") or 0)
    subs = config.get("num_transformer_submodules") or (2 if model.cfg.is_encoder_decoder else 1)
    if config.get("token_dim", emb.shape[-1]) != d or emb.shape[-1] != d:
      raise ValueError(f"prompt token_dim {emb.shape[-1]} differs from the model's d_model {d}")
    if emb.ndim != 2 or emb.shape[0] != n * subs:
      raise ValueError(f"prompt_embeddings has shape {emb.shape}, expected [{n} * {subs}, {d}]")
    if subs != 1 and not model.cfg.is_encoder_decoder:
      raise ValueError(f"num_transformer_submodules={subs} for a decoder-only model")
    self.from_prompt(model, cfg, emb[:n])   # the rows PEFT's prompt tuning uses (the encoder's)

  def from_prompt(self, model, cfg, value):
    want = tuple(model.prompt.shape)   # [parts * length, d_model]; multi-task: the shared prompt
    if tuple(value.shape) != want:
      what = "length" if value.shape[1:] == want[1:] else "d_model"
      raise ValueError(f"the prompt has shape {tuple(value.shape)} but this run needs "
                       f"[{want[0]}, {want[1]}] (prompt {what} differs)")
    model.set_prompt(value)


register(Prompt())
