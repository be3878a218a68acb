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
    self.sp = spm.SentencePieceProcessor(model_file=model_path)
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
  """A Hugging Face ``tokenizer.json`` (BPE for BART / GPT-2, etc.) through ``tokenizers``."""

  def __init__(self, path: str, pad_token: str = "<pad>", eos_token: str = "</s>"):
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
    from tokenizers import Tokenizer
    self.path = path
    self.tok = Tokenizer.from_file(path)
    eos = self.tok.token_to_id(eos_token)
    if eos is None:
      eos = self.tok.token_to_id("<|endoftext|>")
    if eos is None:
      raise ValueError(f"{path!r}: no {eos_token!r} or '<|endoftext|>' token")
    pad = self.tok.token_to_id(pad_token)
    self.eos_id = eos
    self.pad_id = eos if pad is None else pad

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size()

  def encode(self, text: str) -> list[int]:
    return list(self.tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i != self.pad_id and 0 <= i < self.vocab_size:
        out.append(i)
    return self.tok.decode(out)


def load(path: str):
  """A SentencePiece ``.model`` file, or a Hugging Face ``tokenizer.json`` (file or directory)."""
  if path.endswith(".json") or (os.path.isdir(path) and
                                os.path.exists(os.path.join(path, "tokenizer.json"))):
    return HFTokenizerVocab(path)
  if os.path.isdir(path):
    path = os.path.join(path, "spiece.model")
  return SentencePieceVocab(path)
