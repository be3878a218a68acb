"""The embedded default job demonstrates transfer, and the shipped checkpoint is a plain HF one.

`python -m prompt_tuning.train` prompt-tunes the tiny T5 pretrained in-repo
(prompt_tuning/assets/tiny_t5, scripts/pretrain_tiny_t5.py) on synthetic_sentiment, a task it
never saw in pretraining: it must reach >= 0.9 dev accuracy, while the very same job on the same
architecture with random weights must not get close.
"""
import os

import numpy as np
import pytest

from prompt_tuning import models
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.default_config import TINY_T5, get_config
from prompt_tuning.run import build, loop


def default_job_accuracy(out_dir, random_init: bool) -> float:
  c = get_config()
  c.unlock()
  c.output_dir = str(out_dir)
  c.model.random_init = random_init
  c.lock()
  return loop.train(c)["eval"]["synthetic_sentiment"]["accuracy"]


def test_default_job_transfers_from_pretraining(tmp_path):
  # Measured: 100 for each of seeds 0-5 (accuracy in percent; 53-89 at step 100, 100 from 200).
  assert default_job_accuracy(tmp_path / "pretrained", False) >= 90


def test_default_job_on_random_weights_scores_clearly_lower(tmp_path):
  # Measured: 50.4 / 50.0 / 53.1 for seeds 0 / 1 / 2 (chance is 50).
  assert default_job_accuracy(tmp_path / "random", True) <= 75


def test_default_config_uses_the_shipped_checkpoint_and_its_vocab():
  c = get_config()
  assert c.model.hf_checkpoint == TINY_T5 and not c.model.random_init
  vocab = build.load_vocab(c)
  assert vocab.path == os.path.join(TINY_T5, "spiece.model")
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  for label in ("positive", "negative"):
    assert len(vocab.encode(label)) == 1  # each label is one piece of the model's vocabulary
  size = sum(os.path.getsize(os.path.join(TINY_T5, f)) for f in os.listdir(TINY_T5))
  assert size < 3e6, size
  assert sorted(os.listdir(TINY_T5)) == ["config.json", "model.safetensors", "spiece.model"]


def test_shipped_checkpoint_matches_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf = transformers.T5ForConditionalGeneration.from_pretrained(TINY_T5, dtype=torch.float32)
  hf.eval()
  ours = models.load(TINY_T5)
  vocab = vocab_lib.load(TINY_T5)
  texts = ["the concert was excellent so the mood was", "a farmer walked to the sea"]
  ids = np.zeros((2, 12), np.int64)
  for i, t in enumerate(texts):
    x = vocab.encode(t)[:11] + [vocab.eos_id]
    ids[i, :len(x)] = x
  mask = (ids != 0).astype(np.int64)
  dec = np.array([[0] + vocab.encode("the mood was")[:4]] * 2, np.int64)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             decoder_input_ids=torch.tensor(dec)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours(ids, mask, dec)), ref, atol=1e-4, rtol=0)
  assert np.std(ref) > 1e-2
