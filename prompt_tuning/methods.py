"""Tuning methods behind one interface.

A method (1) attaches its extra variables to a model (soft prompt, LoRA factors) and (2) says
which variables are trainable. :func:`split` then separates the trainable state (gets gradients,
optimizer state and checkpoints) from the frozen state (shared, never copied per task).

  * ``prompt``: soft prompt of ``prompt_length`` vectors prepended to the embedded input;
  * ``lora``:   low-rank adapters on attention q/k/v/o and the MLP (scale alpha/r, B = 0);
  * ``full``:   every pre-trained weight;
  * ``layers``: only the weights under chosen module paths (e.g. the last k blocks).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning.models.layers import BASE_PARAMS, DenseGeneral, LoRAParam, PromptParam

METHODS = ("prompt", "lora", "full", "layers")
PROMPT_INITS = ("vocab", "class_labels", "text", "uniform")
LORA_TARGETS = ("q", "k", "v", "o", "mlp")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  name: str = "prompt"
  # Soft prompt.
  prompt_length: int = 100
  prompt_init: str = "vocab"
  prompt_init_vocab_size: int = 5000       # sample from the embeddings of the first N ids
  prompt_init_text: str = ""
  class_labels: tuple[str, ...] = ()
  # LoRA.
  lora_rank: int = 4
  lora_alpha: float = 8.0
  lora_targets: tuple[str, ...] = LORA_TARGETS
  # Layer subset: dotted path prefixes (e.g. "decoder.blocks.5") and/or the last k blocks of
  # each stack.
  layers: tuple[str, ...] = ()
  last_k_blocks: int = 0
  seed: int = 0

  def __post_init__(self):
    if self.name not in METHODS:
      raise ValueError(f"unknown tuning method {self.name!r}; choose one of {METHODS}")
    if self.name == "prompt":
      if self.prompt_init not in PROMPT_INITS:
        raise ValueError(f"unknown prompt_init {self.prompt_init!r}; choose one of {PROMPT_INITS}")
      if self.prompt_length <= 0:
        raise ValueError(f"prompt_length must be positive, got {self.prompt_length}")
      if self.prompt_init == "class_labels" and not self.class_labels:
        raise ValueError("prompt_init='class_labels' needs class_labels")
      if self.prompt_init == "text" and not self.prompt_init_text:
        raise ValueError("prompt_init='text' needs prompt_init_text")
    if self.name == "lora":
      if self.lora_rank <= 0:
        raise ValueError(f"lora_rank must be positive, got {self.lora_rank}")
      bad = set(self.lora_targets) - set(LORA_TARGETS)
      if bad or not self.lora_targets:
        raise ValueError(f"unknown lora_targets {sorted(bad)}; choose from {LORA_TARGETS}")
    if self.name == "layers" and not self.layers and self.last_k_blocks <= 0:
      raise ValueError("method 'layers' needs `layers` (path prefixes) or last_k_blocks > 0")

  def replace(self, **kw) -> "MethodConfig":
    unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown method option(s) {sorted(unknown)}")
    return dataclasses.replace(self, **kw)


# ------------------------------------------------------------------------------ prompt init
def init_prompt(cfg: MethodConfig, embedding: np.ndarray,
                tokenize: Callable[[str], Sequence[int]] | None = None) -> np.ndarray:
  """Initial [prompt_length, d_model] prompt, following Lester et al. (2021)."""
  emb = np.asarray(embedding, np.float32)
  vocab, d = emb.shape
  length = cfg.prompt_length
  rng = np.random.RandomState(cfg.seed)

  def sampled(n):
    top = min(cfg.prompt_init_vocab_size, vocab)
    ids = rng.choice(top, size=n, replace=n > top)
    return emb[ids]

  if cfg.prompt_init == "uniform":
    return rng.uniform(-0.5, 0.5, size=(length, d)).astype(np.float32)
  if cfg.prompt_init == "vocab":
    return sampled(length)
  if tokenize is None:
    raise ValueError(f"prompt_init={cfg.prompt_init!r} needs a tokenizer")
  if cfg.prompt_init == "class_labels":
    rows = []
    for label in cfg.class_labels:
      ids = [i for i in tokenize(label)]
      if not ids:
        raise ValueError(f"class label {label!r} tokenizes to nothing")
      rows.append(emb[ids].mean(axis=0))  # multi-piece labels: mean of their embeddings
    if len(rows) > length:
      raise ValueError(f"{len(rows)} class labels do not fit in prompt_length={length}")
    rows = np.stack(rows)
  else:  # text
    ids = list(tokenize(cfg.prompt_init_text))
    if len(ids) > length:
      raise ValueError(f"prompt_init_text is {len(ids)} tokens, longer than prompt_length={length}")
    if not ids:
      raise ValueError("prompt_init_text tokenizes to nothing")
    rows = emb[ids]
  rest = length - rows.shape[0]
  return np.concatenate([rows, sampled(rest)], 0).astype(np.float32) if rest else rows


# ------------------------------------------------------------------------------ apply / split
def _dense_modules(model):
  it = nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules()
  for path, mod in it:
    if isinstance(mod, DenseGeneral):
      yield ".".join(map(str, path)), mod


def _lora_target(path: str, targets) -> bool:
  name = path.rsplit(".", 1)[-1]
  if "attn" in path and name in targets:
    return True
  return "mlp" in targets and ".mlp." in f".{path}." and name in ("wi", "wi_0", "wi_1", "wo")


def apply(model, cfg: MethodConfig, tokenize: Callable[[str], Sequence[int]] | None = None):
  """Attaches the method's variables to ``model`` (in place) and returns it."""
  if cfg.name == "prompt":
    emb = np.asarray(model.shared.embedding[...], np.float32)
    model.set_prompt(init_prompt(cfg, emb, tokenize))
  elif cfg.name == "lora":
    rngs = nnx.Rngs(params=cfg.seed)
    n = 0
    for path, mod in _dense_modules(model):
      if _lora_target(path, cfg.lora_targets):
        mod.add_lora(cfg.lora_rank, cfg.lora_alpha, rngs)
        n += 1
    if n == 0:
      raise ValueError(f"no LoRA target modules matched {cfg.lora_targets}")
  return model


def _layer_prefixes(model, cfg: MethodConfig) -> list[str]:
  prefixes = list(cfg.layers)
  if cfg.last_k_blocks:
    stacks = [("encoder.", getattr(getattr(model, "encoder", None), "blocks", None)),
              ("decoder.", getattr(getattr(model, "decoder", None), "blocks", None)),
              ("", getattr(model, "blocks", None))]  # decoder-only models
    for prefix, blocks in stacks:
      if blocks is None:
        continue
      n = len(blocks)
      prefixes += [f"{prefix}blocks.{i}" for i in range(max(0, n - cfg.last_k_blocks), n)]
  return prefixes


def trainable_filter(model, cfg: MethodConfig):
  if cfg.name == "prompt":
    return PromptParam
  if cfg.name == "lora":
    return LoRAParam
  if cfg.name == "full":
    return BASE_PARAMS
  prefixes = _layer_prefixes(model, cfg)
  all_paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  for pre in prefixes:
    if not any(p == pre or p.startswith(pre + ".") for p in all_paths):
      raise ValueError(f"layer prefix {pre!r} matches no parameter; e.g. {all_paths[:3]}")
  pattern = re.compile("|".join(re.escape(p) + r"(\.|$)" for p in prefixes))

  def in_layers(path, value):
    return bool(pattern.match(".".join(map(str, path))))

  return nnx.All(BASE_PARAMS, in_layers)


def split(model, cfg: MethodConfig, frozen_dtype=None):
  """(graphdef, trainable, frozen). Trainable variables are float32; the frozen state may be
  cast to ``frozen_dtype`` (e.g. bfloat16) once, shared by every task."""
  graphdef, trainable, frozen = nnx.split(model, trainable_filter(model, cfg), ...)
  if not jax.tree.leaves(trainable):
    raise ValueError(f"method {cfg.name!r} selected no trainable parameters")
  trainable = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), trainable)
  if frozen_dtype is not None:
    frozen = jax.tree.map(
        lambda x: x.astype(frozen_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, frozen)
  return graphdef, trainable, frozen


def count_params(state) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(state)))
