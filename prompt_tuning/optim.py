"""Optimizers: Adafactor (its defaults are the prompt-tuning paper's), AdamW, SGD; each tuning
method names its default (methods/*.py)."""
from __future__ import annotations

import dataclasses

import optax

OPTIMIZERS = ("adafactor", "adamw", "sgd")

# Lester et al. (2021) as they ran it (prompt-tuning configs/models/t5_1_1_prompt.gin,
# configs/runs/prompt_finetune.gin; T5X adafactor.py): the ``optimizer`` section of the paper
# configs. T5X's step continues from the LM-adapted T5 1.1 checkpoints' 1_100_000, so the
# second-moment decay starts near 1. Their runs also use z-loss LESTER_Z_LOSS (train.z_loss).
LESTER = dict(name="adafactor", learning_rate=0.3, schedule="constant", decay_rate=0.8,
              clipping_threshold=1.0, multiply_by_parameter_scale=False, weight_decay=1e-5,
              step_offset=1_100_000)
LESTER_Z_LOSS = 1e-4
SCHEDULES = ("constant", "linear", "cosine", "rsqrt")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adafactor"
  learning_rate: float = 0.3
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int = 0                 # needed by linear / cosine decay
  # Adafactor (Lester et al. 2021: decay rate 0.8, no parameter scaling, update clipping 1.0).
  decay_rate: float = 0.8
  clipping_threshold: float = 1.0
  multiply_by_parameter_scale: bool = False
  # The global step the run continues from. T5X hands Adafactor its train state's step, which
  # continues from the pretrained checkpoint's (1_100_000 for the LM-adapted T5 1.1 ones), so the
  # second-moment decay 1 - (step_offset + step + 1) ** -decay_rate starts near 1. A constant of
  # the transform: a resumed run keeps it as long as its config does.
  step_offset: int = 0
  # AdamW.
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.0            # AdamW; Adafactor: param *= 1 - weight_decay (T5X's rule)
  grad_clip_norm: float = 0.0          # 0 = off

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.name!r}; choose one of {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
    if self.schedule in ("linear", "cosine") and self.total_steps <= 0:
      raise ValueError(f"schedule {self.schedule!r} needs total_steps > 0")
    if self.step_offset < 0:
      raise ValueError(f"step_offset must be >= 0, got {self.step_offset}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")

  def replace(self, **kw) -> "OptimizerConfig":
    unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown optimizer option(s) {sorted(unknown)}")
    return dataclasses.replace(self, **kw)


def schedule(cfg: OptimizerConfig):
  lr = cfg.learning_rate
  if cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif cfg.schedule == "linear":
    main = optax.linear_schedule(lr, 0.0, max(1, cfg.total_steps - cfg.warmup_steps))
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, cfg.total_steps - cfg.warmup_steps))
  else:  # rsqrt, T5-style
    main = lambda step: lr / ((step + max(cfg.warmup_steps, 1)) ** 0.5) * (max(cfg.warmup_steps, 1) ** 0.5)
  if cfg.warmup_steps:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, cfg.warmup_steps), main],
                                [cfg.warmup_steps])
  return main


def make(cfg: OptimizerConfig) -> optax.GradientTransformation:
  lr = schedule(cfg)
  if cfg.name == "adafactor":
    # optax subtracts its decay_offset from the step count; T5X's step only adds to it.
    tx = optax.adafactor(learning_rate=lr, decay_rate=cfg.decay_rate,
                         decay_offset=-cfg.step_offset,
                         clipping_threshold=cfg.clipping_threshold,
                         multiply_by_parameter_scale=cfg.multiply_by_parameter_scale,
                         weight_decay_rate=cfg.weight_decay or None)
  elif cfg.name == "adamw":
    tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  else:
    tx = optax.sgd(lr)
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx
