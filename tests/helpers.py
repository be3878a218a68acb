from prompt_tuning import methods, models, trainer as trainer_lib
from prompt_tuning.data import arrays, synthetic, vocab as vocab_lib

_VOCAB = None
MODEL_OPTIONS = ("dtype", "remat", "dropout_rate", "attention_impl", "scan_layers", "init_std",
                 "embed_init_std")


def vocab():
  global _VOCAB
  if _VOCAB is None:
    _VOCAB = vocab_lib.default_vocab()
  return _VOCAB


def sentiment_data(n=512, seed=0, split_seed=0):
  ex = synthetic.sentiment_examples(n, seed + split_seed)
  return arrays.ArrayDataset(arrays.encode_examples(ex, vocab(), 48, 8), seed=seed)


def preset_config(preset="tiny"):
  """The default config on a random-init preset (the shapes and vocabulary of the helpers here)
  instead of the shipped pretrained T5: for tests of mechanics written against a preset."""
  from prompt_tuning.default_config import get_config
  c = get_config()
  c.unlock()
  c.model.update(hf_checkpoint="", preset=preset)
  c.lock()
  return c


def tiny_model(preset="tiny", seed=0, **options):
  return models.build(models.preset(preset, **options), seed=seed)


def make_trainer(method: methods.MethodConfig, optimizer=None, preset="tiny", seed=0, **kw):
  model = tiny_model(preset, seed, **{k: kw.pop(k) for k in list(kw) if k in MODEL_OPTIONS})
  methods.attach(model, method, tokenize=vocab().encode)
  return trainer_lib.Trainer(model, method, optimizer, **kw)
