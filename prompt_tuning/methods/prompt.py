"""Soft-prompt tuning (Lester et al. 2021): ``length`` trainable vectors prepended to the
embedded encoder input (decoder-only: to the sequence). Initialised from sampled embeddings of
the ``init_vocab_size`` most frequent ids (SentencePiece orders ids by frequency), from the class
labels' embeddings, from a text, or uniformly; trained with Adafactor at lr 0.3."""
from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.methods.base import Method, MethodConfig, Tokenize, register
from prompt_tuning.models.core import PromptParam

INITS = ("vocab", "class_labels", "text", "uniform")


@dataclasses.dataclass(frozen=True)
class PromptConfig(MethodConfig):
  length: int = 100
  init: str = "vocab"
  init_vocab_size: int = 5000      # sample from the embeddings of the first N ids
  init_text: str = ""
  class_labels: tuple[str, ...] = ()

  def validate(self):
    if self.init not in INITS:
      raise ValueError(f"unknown prompt init {self.init!r}; choose one of {INITS}")
    if self.length <= 0:
      raise ValueError(f"prompt length must be positive, got {self.length}")
    if self.init_vocab_size <= 0:
      raise ValueError(f"prompt init_vocab_size must be positive, got {self.init_vocab_size}")
    if self.init == "class_labels" and not self.class_labels:
      raise ValueError("prompt init='class_labels' needs class_labels")
    if self.init == "text" and not self.init_text:
      raise ValueError("prompt init='text' needs init_text")


def init_prompt(cfg: PromptConfig, embedding: np.ndarray,
                tokenize: Tokenize | None = None) -> np.ndarray:
  """Initial [length, d_model] prompt, following Lester et al. (2021)."""
  emb = np.asarray(embedding, np.float32)
  vocab, d = emb.shape
  rng = np.random.RandomState(cfg.seed)

  def sampled(n):
    top = min(cfg.init_vocab_size, vocab)
    return emb[rng.choice(top, size=n, replace=n > top)]

  if cfg.init == "uniform":
    return rng.uniform(-0.5, 0.5, size=(cfg.length, d)).astype(np.float32)
  if cfg.init == "vocab":
    return sampled(cfg.length)
  if tokenize is None:
    raise ValueError(f"prompt init={cfg.init!r} needs a tokenizer")
  if cfg.init == "class_labels":
    rows = []
    for label in cfg.class_labels:
      ids = list(tokenize(label))
      if not ids:
        raise ValueError(f"class label {label!r} tokenizes to nothing")
      rows.append(emb[ids].mean(axis=0))  # multi-piece labels: mean of their embeddings
    if len(rows) > cfg.length:
      raise ValueError(f"{len(rows)} class labels do not fit in prompt length {cfg.length}")
    rows = np.stack(rows)
  else:
    ids = list(tokenize(cfg.init_text))
    if not ids:
      raise ValueError("prompt init_text tokenizes to nothing")
    if len(ids) > cfg.length:
      raise ValueError(f"prompt init_text is {len(ids)} tokens, longer than the prompt length "
                       f"{cfg.length}")
    rows = emb[ids]
  rest = cfg.length - rows.shape[0]
  return np.concatenate([rows, sampled(rest)], 0).astype(np.float32) if rest else rows


class Prompt(Method):
  name = "prompt"
  Config = PromptConfig

  def attach(self, model, cfg, tokenize=None):
    model.set_prompt(init_prompt(cfg, np.asarray(model.embed.embedding[...]), tokenize))

  def trainable(self, model, cfg):
    return PromptParam

  def export(self, model, params, cfg):
    (prompt,) = [np.asarray(v[...], np.float32) for _, v in nnx.to_flat_state(params)]
    return {"prompt": prompt}

  def default_optimizer(self, cfg):
    return optim.OptimizerConfig()   # Adafactor, lr 0.3, decay 0.8, clipping 1.0

  def extra_encoder_length(self, cfg):
    return cfg.length


register(Prompt())
