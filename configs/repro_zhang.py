"""Small-scale reproduction of Zhang et al. (2024), "When Scaling Meets LLM Finetuning: The
Effect of Data, Model and Finetuning Method": its design, at a size that runs on a CPU; its
numbers are not comparable to the paper's.

Design reproduced: grids of finetuning-data size D x one scaling factor X, each fitted with the
multiplicative joint law L(X, D) = A / (X^alpha D^beta) + E and the additive one
L(X, D) = A / X^alpha + B / D^beta + E (analysis/scaling.py: Huber loss on log-loss, L-BFGS from
a grid of starts), fitted on all but the largest D and scored by the mean absolute deviation of
the predicted dev loss there (held-out error):
  * model size x D for full-model tuning, prompt tuning and LoRA (X: the model's parameters);
  * prompt length x D for prompt tuning, LoRA rank x D for LoRA (X: the trainable parameters).

Small scale (the default): dev loss of synthetic_sentiment, D = 32 ... 512 examples, 200 steps
of 16 (the paper: WMT and summarisation, up to millions of examples). Model size: only one
pretrained tiny model ships, and pretraining more is out of reach here, so the sizes are the
pretrained tiny T5 truncated to its first layers (``models.truncated``: 1 + 1, 2 + 1 layers; the
same pretrained weights, never trained at that depth) and the whole model (2 + 2): 247k, 339k and
468k parameters, a depth axis sharing one pretraining where the paper has separately pretrained
LLMs from 1B to 16B. The X range (2x) is far too narrow for a trustworthy exponent, and in these
short runs the truncated model reaches a lower dev loss than the whole one (measured: prompt
tuning at D = 32, loss 0.16 for 1 + 1 layers, 0.32 for 2 + 2): the grid shows the method, not the
paper's finding. Prompt lengths 2 ... 20 (the paper: 50 ... 600), LoRA ranks 1 ... 8
(alpha = 2 x rank).

  prompt-tuning sweep --config configs/repro_zhang.py             # 85 runs
  python -m prompt_tuning.analysis.repro --config configs/repro_zhang.py
  (or both: python -m prompt_tuning.analysis.repro --run_sweep --config configs/repro_zhang.py)

The real task (``:real``: WMT14 en-de, T5 1.1 small / base / large from the local Hugging Face
cache; needs prepared TFDS wmt14_translate):

  python -m prompt_tuning.analysis.repro --run_sweep --config configs/repro_zhang.py:real

The analysis writes repro_zhang.md, repro_zhang_fits.csv, repro_zhang_points.csv and
repro_zhang.png into output_dir.
"""
from prompt_tuning import models
from prompt_tuning.default_config import TINY_T5, get_config as base

METHODS = ("full", "prompt", "lora")   # each with the library's default optimizer
VARIANTS = {
    "small": dict(
        data_sizes=(32, 64, 128, 256, 512), lengths=(2, 5, 10, 20), ranks=(1, 2, 4, 8),
        setup="Zhang et al. 2024 on the 468k-parameter tiny T5 and its truncations (1+1, 2+1 "
              "layers, not re-pretrained) with the synthetic sentiment task"),
    "real": dict(
        data_sizes=(2000, 4000, 8000, 16000, 32000), lengths=(50, 100, 200, 400),
        ranks=(4, 8, 16, 32), setup="Zhang et al. 2024 with T5 1.1 small / base / large on "
                                    "WMT14 en-de"),
}


def sizes(variant: str) -> dict[str, str]:
  """Model size label -> checkpoint (the small variant's truncations are made once, cached)."""
  if variant == "small":
    return {"1x1": models.truncated(TINY_T5, 1, 1), "2x1": models.truncated(TINY_T5, 2, 1),
            "2x2": TINY_T5}
  return {s: f"google/t5-v1_1-{s}" for s in ("small", "base", "large")}


def get_config(variant: str = "small"):
  c = base()
  c.unlock()
  c.output_dir = f"runs/repro_zhang{'' if variant == 'small' else '_' + variant}"
  c.data.update(few_shot=True, num_train=VARIANTS[variant]["data_sizes"][0])
  c.train.update(batch_size=16, num_steps=200, eval_every=200, checkpoint_every=200)
  if variant == "real":
    # Needs pretrained weights: the T5 1.1 checkpoints of sizes() in the local HF cache.
    c.model.update(hf_checkpoint="google/t5-v1_1-base", allow_random_init=False,
                   dtype="bfloat16", frozen_dtype="bfloat16")
    c.method.prompt.update(length=100, init="vocab", class_labels=())
    c.data.update(task="wmt14_ende", num_eval=1000, max_input_length=256,
                  max_target_length=256, truncate=True)
    c.train.update(batch_size=32, num_steps=5000, eval_every=5000, checkpoint_every=5000,
                   max_decode_length=256, max_encoder_length=656)
  elif variant != "small":
    raise ValueError(f"unknown variant {variant!r}; use one of {sorted(VARIANTS)}")
  c.lock()
  return c


def get_sweep(variant: str = "small"):
  v = VARIANTS[variant]
  grids = [("model size", m, "model.hf_checkpoint", sizes(variant), "model_params")
           for m in METHODS]
  grids += [("prompt length", "prompt", "method.prompt.length",
             {str(n): n for n in v["lengths"]}, "trainable_params"),
            ("LoRA rank", "lora", "method.lora.rank", {str(r): r for r in v["ranks"]},
             "trainable_params")]
  runs = []
  for grid, method, knob, values, x in grids:
    for label, value in values.items():
      extra = {"method.lora.alpha": 2.0 * value} if knob == "method.lora.rank" else {}
      for d in v["data_sizes"]:
        runs.append(dict(
            name=f"{grid.split()[-1]}_{method}_{label}_D{d}",
            tags=dict(paper="zhang", scale=variant, setup=v["setup"], grid=grid, method=method,
                      value=label, D=d, x=x),
            **{knob: value, "method.name": method, "data.num_train": d}, **extra))
  return runs
