"""The vocabulary of a run: ``data.vocab`` when set, else the tokenizer of ``model.hf_checkpoint``
(``tokenizer.json``: BPE for GPT-2, BART, Llama ...; or a SentencePiece ``spiece.model``: T5),
else the bundled tiny SentencePiece model. With a checkpoint, the vocabulary's EOS and padding
ids must be the model's (``config.json``), or the run stops with one error naming both."""
from __future__ import annotations

import os
import sys

from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.interop import hub
from prompt_tuning.models import core, families

# What save_pretrained writes for a tokenizer (copied next to exported checkpoints).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "spiece.model", "tokenizer.model", "vocab.json", "merges.txt",
                   "added_tokens.json")


def checkpoint_vocab(path: str, cfg: core.ModelConfig):
  """The tokenizer stored with a checkpoint, with the model's EOS / padding where the tokenizer
  declares none; None when the directory holds no tokenizer."""
  fn = os.path.join(path, "tokenizer.json")
  if os.path.exists(fn):
    vocab = vocab_lib.HFTokenizerVocab(fn, eos_id=_undeclared(path, "eos_token", cfg.eos_token_id),
                                       pad_id=_undeclared(path, "pad_token", cfg.pad_token_id))
    for what, i in (("eos_token_id", vocab.eos_id), ("pad_token_id", vocab.pad_id)):
      if vocab.tok.id_to_token(i) is None:
        raise ValueError(f"the model's {what}={i} ({path}/config.json) is not a token of {fn}")
    return vocab
  if os.path.exists(os.path.join(path, "spiece.model")):
    return vocab_lib.SentencePieceVocab(os.path.join(path, "spiece.model"))
  return None


def _undeclared(path, key, model_id):
  """The model's id for a special token the tokenizer files do not declare (else None: the
  tokenizer's own declaration is used and checked against the model)."""
  return None if key in vocab_lib.tokenizer_special_tokens(path) else model_id


def check_agreement(vocab, cfg: core.ModelConfig, source: str):
  """EOS ends every sequence and decoding; padding decides the masks the model derives from ids:
  both must be the model's."""
  name = getattr(vocab, "path", "the bundled vocabulary")
  for what, v_id, m_id, key in (("EOS", vocab.eos_id, cfg.eos_token_id, "eos_token_id"),
                                ("padding", vocab.pad_id, cfg.pad_token_id, "pad_token_id")):
    if v_id != m_id:
      raise ValueError(
          f"the vocabulary's {what} id {v_id} ({name}) differs from the model's {key}={m_id} "
          f"({source}/config.json); use the checkpoint's own tokenizer (leave data.vocab empty) "
          f"or a vocabulary with the same special ids")


def run_vocab(config):
  """The vocabulary a run uses (see the module docstring)."""
  ckpt = config.model.hf_checkpoint
  if config.data.vocab:
    vocab = vocab_lib.load(config.data.vocab)
    if ckpt:
      path = hub.resolve(ckpt)
      cfg = families.checkpoint_config(path, weights=False)
      if isinstance(vocab, vocab_lib.HFTokenizerVocab) and not vocab.has_pad:
        vocab.pad_id = cfg.pad_token_id   # no pad token of its own: pad as the model does
      check_agreement(vocab, cfg, path)
    return vocab
  if not ckpt:
    return vocab_lib.default_vocab()
  path = hub.resolve(ckpt)
  cfg = families.checkpoint_config(path, weights=False)
  vocab = checkpoint_vocab(path, cfg)
  if vocab is None:
    print(f"warning: {path} has no tokenizer (tokenizer.json or spiece.model); using the bundled "
          f"tiny vocabulary (set data.vocab to choose one)", file=sys.stderr, flush=True)
    vocab = vocab_lib.default_vocab()
  check_agreement(vocab, cfg, path)
  return vocab
