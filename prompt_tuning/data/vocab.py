"""SentencePiece vocabulary (T5 conventions: pad=0, eos=1, unk=2) without TensorFlow."""
from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

import sentencepiece as spm

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
BUNDLED_CORPUS = os.path.join(ASSETS, "tiny_corpus.txt")
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class SentencePieceVocab:

  def __init__(self, model_path: str):
    if not os.path.exists(model_path):
      raise FileNotFoundError(f"SentencePiece model {model_path!r} does not exist")
    self.path = model_path
    try:
      self.sp = spm.SentencePieceProcessor(model_file=model_path)
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{model_path!r} is not a SentencePiece model ({e}); give a .model file "
                       f"written by SentencePiece, or a tokenizer.json") from e
    if self.sp.pad_id() != PAD_ID or self.sp.eos_id() != EOS_ID:
      raise ValueError(f"{model_path!r}: expected T5 conventions pad=0, eos=1, got pad="
                       f"{self.sp.pad_id()}, eos={self.sp.eos_id()}")

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

  def encode(self, text: str) -> list[int]:
    return list(self.sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i != PAD_ID and 0 <= i < self.vocab_size:  # ids past the vocab (padded embedding
        out.append(i)                              # tables) decode to nothing
    return self.sp.decode(out)


def train_sentencepiece(texts: Iterable[str], out_dir: str, vocab_size: int = 200) -> str:
  """Trains a unigram model with T5's special ids; writes ``out_dir/spiece.model`` atomically
  (the layout ``transformers.T5Tokenizer.from_pretrained(out_dir)`` reads)."""
  os.makedirs(out_dir, exist_ok=True)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size,
      model_type="unigram", pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      character_coverage=1.0, num_threads=1, minloglevel=2, hard_vocab_limit=False)
  path = os.path.join(out_dir, "spiece.model")
  tmp = path + f".tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(buf.getvalue())
  os.replace(tmp, path)
  return path


def default_cache_dir() -> str:
  return os.environ.get("PROMPT_TUNING_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "prompt_tuning"))


def default_vocab(vocab_size: int = 200, cache_dir: str | None = None) -> SentencePieceVocab:
  """The embedded default: a SentencePiece model trained on the bundled corpus (cached)."""
  d = os.path.join(cache_dir or default_cache_dir(), f"spm_tiny_{vocab_size}")
  path = os.path.join(d, "spiece.model")
  if not os.path.exists(path):
    spm.set_random_generator_seed(0)
    with open(BUNDLED_CORPUS) as f:
      train_sentencepiece((l.strip() for l in f if l.strip()), d, vocab_size)
  return SentencePieceVocab(path)


class HFTokenizerVocab:
  """A Hugging Face ``tokenizer.json`` (BPE for BART / GPT-2 / Llama, etc.) through ``tokenizers``.

  Special ids: the ``eos_token`` / ``pad_token`` / ``bos_token`` that ``tokenizer_config.json``
  (or ``special_tokens_map.json``) next to the file declares, else the conventional names
  (``</s>`` or ``<|endoftext|>``; ``<pad>``); ``eos_id`` / ``pad_id`` override them (a checkpoint's
  own ids). A tokenizer without a pad token (GPT-2, Llama) pads with EOS unless ``pad_id`` is
  given; ``has_pad`` says which.

  ``encode(text)`` is what ``tokenizer(text)`` gives minus a trailing EOS: the tokenizer's own
  leading special tokens (BART's ``<s>``, Llama's BOS) are kept, and the data layer appends EOS
  to every sequence (T5 / BART append ``</s>`` themselves; GPT-2 adds nothing). With
  ``special_tokens=False`` no special token is added at all.
  """

  def __init__(self, path: str, pad_token: str = "<pad>", eos_token: str = "</s>", *,
               eos_id: int | None = None, pad_id: int | None = None,
               special_tokens: bool = True):
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
    from tokenizers import Tokenizer
    self.path = path
    self.tok = Tokenizer.from_file(path)
    declared = tokenizer_special_tokens(os.path.dirname(path))
    ids = {k: self.tok.token_to_id(v) for k, v in declared.items()}
    for key, value in declared.items():
      if ids[key] is None:
        raise ValueError(f"{path!r}: the declared {key} {value!r} is not in the vocabulary")
    eos = ids.get("eos_token")
    if eos is None:
      eos = self.tok.token_to_id(eos_token)
    if eos is None:
      eos = self.tok.token_to_id("<|endoftext|>")
    if eos_id is not None:
      eos = eos_id
    if eos is None:
      raise ValueError(f"{path!r}: no {eos_token!r} or '<|endoftext|>' token")
    pad = ids.get("pad_token", self.tok.token_to_id(pad_token))
    self.has_pad = pad is not None
    self.eos_id = eos
    self.pad_id = pad_id if pad_id is not None else (eos if pad is None else pad)
    self.bos_id = ids.get("bos_token")
    self.special_tokens = special_tokens
    # Whether the tokenizer's post-processor appends EOS (T5, BART): then encode drops it.
    empty = self.tok.encode("", add_special_tokens=True).ids if special_tokens else []
    self._drop_eos = bool(empty) and empty[-1] == self.eos_id

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size()

  def encode(self, text: str) -> list[int]:
    ids = list(self.tok.encode(text, add_special_tokens=self.special_tokens).ids)
    if self._drop_eos and ids and ids[-1] == self.eos_id:
      ids = ids[:-1]
    return ids

  def decode(self, ids) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i != self.pad_id and 0 <= i < self.vocab_size:
        out.append(i)
    return self.tok.decode(out)


def tokenizer_special_tokens(directory: str) -> dict[str, str]:
  """{"eos_token" | "pad_token" | "bos_token": token text} declared by ``tokenizer_config.json``
  or ``special_tokens_map.json`` in ``directory`` (strings or ``{"content": ...}`` entries)."""
  import json
  out: dict[str, str] = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
    fn = os.path.join(directory, name)
    if not os.path.exists(fn):
      continue
    try:
      with open(fn) as f:
        d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{fn}: not valid JSON ({e})") from e
    for key in ("eos_token", "pad_token", "bos_token"):
      v = d.get(key) if isinstance(d, dict) else None
      if isinstance(v, dict):
        v = v.get("content")
      if isinstance(v, str) and v:
        out[key] = v
  return out


def load(path: str):
  """A SentencePiece ``.model`` file, or a Hugging Face ``tokenizer.json`` (file or directory)."""
  if path.endswith(".json") or (os.path.isdir(path) and
                                os.path.exists(os.path.join(path, "tokenizer.json"))):
    return HFTokenizerVocab(path)
  if os.path.isdir(path):
    path = os.path.join(path, "spiece.model")
  return SentencePieceVocab(path)
