import numpy as np
from flax import nnx

from prompt_tuning import methods, trainer as trainer_lib
from prompt_tuning.data import arrays, synthetic, vocab as vocab_lib
from prompt_tuning.models import t5

_VOCAB = None


def vocab():
  global _VOCAB
  if _VOCAB is None:
    _VOCAB = vocab_lib.default_vocab()
  return _VOCAB


def sentiment_data(n=512, seed=0, split_seed=0):
  ex = synthetic.sentiment_examples(n, seed + split_seed)
  return arrays.ArrayDataset(arrays.encode_examples(ex, vocab(), 48, 8), seed=seed)


def make_trainer(method: methods.MethodConfig, optimizer=None, preset="tiny", seed=0, **kw):
  model_kw = {k: kw.pop(k) for k in list(kw) if k in ("dtype", "remat", "dropout_rate",
                                                       "attention_impl")}
  model = t5.T5(t5.get_config(preset, **model_kw), rngs=nnx.Rngs(seed))
  methods.apply(model, method, tokenize=vocab().encode)
  return trainer_lib.Trainer(model, method, optimizer, **kw)
