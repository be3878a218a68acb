"""Critical layers and learned sparse masks (Radiya-Dixit & Wang 2020) on the tiny default model.

For every layer of the tiny T5 two runs: tune that layer alone (method 'layers': dev metric and
distance of the tuned layer from the pre-trained one), and learn a binary mask that zeroes
SPARSITY of that layer's projection weights (method 'mask'). The analysis adds, per layer, the
magnitude-sparsified 'layers' run at the same fraction (analysis/sparse.py: keep the largest
changes) and the untuned model's metric, and writes a table and a plot:

  prompt-tuning sweep --config configs/critical_layers.py
  python -m prompt_tuning.analysis.critical_layers --config configs/critical_layers.py
  (or both at once: python -m prompt_tuning.analysis.critical_layers --run_sweep ...)

The tiny model is random-init: a dense layer learns the synthetic task, but zeroing 5% of a
random layer's weights cannot (exact-match 0; only the dev loss moves). The study's premise is a
pre-trained model (set model.hf_checkpoint and list its layers with layer_paths-style paths).
"""
from prompt_tuning import models
from prompt_tuning.default_config import get_config as base

SPARSITY = 0.05        # fraction of each masked kernel zeroed = fraction of changes kept
LAYERS_LR = 3e-3       # AdamW for a single dense layer (the mask runs use the method default)


def layer_paths(preset: str = "tiny") -> list[str]:
  """Dotted paths of every layer of the preset: encoder layers, then decoder layers."""
  cfg = models.preset(preset)
  enc = [f"encoder.layers.{i}" for i in range(cfg.num_layers)] if cfg.is_encoder_decoder else []
  n_dec = cfg.n_decoder_layers if cfg.is_encoder_decoder else cfg.num_layers
  return enc + [f"decoder.layers.{i}" for i in range(n_dec)]


def get_config():
  c = base()
  c.unlock()
  c.output_dir = "runs/critical_layers"
  c.method.name = "layers"
  c.method.mask.sparsity = SPARSITY
  c.lock()
  return c


def get_sweep():
  runs = []
  for layer in layer_paths(get_config().model.preset):
    runs.append(dict(name=f"layers_{layer}", **{
        "method.name": "layers", "method.layers.paths": (layer,),
        "optimizer.name": "adamw", "optimizer.learning_rate": LAYERS_LR}))
    runs.append(dict(name=f"mask_{layer}", **{
        "method.name": "mask", "method.mask.paths": (layer,)}))
  return runs
