"""Critical layers and learned sparse masks (Radiya-Dixit & Wang 2020) on the pretrained tiny T5
of the default job.

For every layer of the model two runs: tune that layer alone (method 'layers': dev metric and
distance of the tuned layer from the pre-trained one), and learn a binary mask that zeroes
SPARSITY of that layer's projection weights (method 'mask'). The analysis adds, per layer, the
magnitude-sparsified 'layers' run at the same fraction (analysis/sparse.py: keep the largest
changes) and the untuned model's metric, and writes a table and a plot:

  prompt-tuning sweep --config configs/critical_layers.py
  python -m prompt_tuning.analysis.critical_layers --config configs/critical_layers.py
  (or both at once: python -m prompt_tuning.analysis.critical_layers --run_sweep ...)

A small-scale study: a 468k-parameter model with 2 + 2 layers and a synthetic task; it shows the
method and the artifacts, not the paper's findings about BERT. For another model set
model.hf_checkpoint: the layers are read from its config.
"""
from prompt_tuning import models
from prompt_tuning.default_config import get_config as base

SPARSITY = 0.05        # fraction of each masked kernel zeroed = fraction of changes kept
LAYERS_LR = 3e-3       # AdamW for a single dense layer (the mask runs use the method default)


def layer_paths(cfg: models.ModelConfig) -> list[str]:
  """Dotted paths of every layer of the model: encoder layers, then decoder layers."""
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
  m = get_config().model
  cfg = (models.checkpoint_config(m.hf_checkpoint, weights=False) if m.hf_checkpoint
         else models.preset(m.preset))   # layer counts only: config.json is enough
  for layer in layer_paths(cfg):
    runs.append(dict(name=f"layers_{layer}", **{
        "method.name": "layers", "method.layers.paths": (layer,),
        "optimizer.name": "adamw", "optimizer.learning_rate": LAYERS_LR}))
    runs.append(dict(name=f"mask_{layer}", **{
        "method.name": "mask", "method.mask.paths": (layer,)}))
  return runs
