"""Optimizers: Adafactor (its defaults are the prompt-tuning paper's), AdamW, SGD; each tuning
method names its default (methods/*.py)."""
from __future__ import annotations

import dataclasses

import optax

OPTIMIZERS = ("adafactor", "adamw", "sgd")
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
  # AdamW.
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.0
  grad_clip_norm: float = 0.0          # 0 = off

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.name!r}; choose one of {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
    if self.schedule in ("linear", "cosine") and self.total_steps <= 0:
      raise ValueError(f"schedule {self.schedule!r} needs total_steps > 0")
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
    tx = optax.adafactor(learning_rate=lr, decay_rate=cfg.decay_rate,
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
