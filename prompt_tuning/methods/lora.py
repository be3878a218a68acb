"""LoRA (Hu et al. 2021): ``W x + (alpha / r) B A x`` on chosen projections, B zero-initialised
so training starts at the pre-trained model. Attached through the core's ``Dense.adapter`` hook
and targeted by projection role, so every family's attention (self and cross) and MLP are
covered by one rule whatever the family calls them."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.methods.base import Method, MethodConfig, register
from prompt_tuning.models.core import Dense, LoRAParam

TARGETS = ("q", "k", "v", "o", "mlp")
ROLES = {"q": ("q",), "k": ("k",), "v": ("v",), "o": ("o",), "mlp": ("mlp_in", "mlp_out")}


@dataclasses.dataclass(frozen=True)
class LoRAConfig(MethodConfig):
  rank: int = 4                       # r of each low-rank update B A
  alpha: float = 8.0                  # the update is scaled by alpha / rank
  targets: tuple[str, ...] = TARGETS  # projections by role: q, k, v, o, mlp (every MLP one)

  def validate(self):
    if self.rank <= 0:
      raise ValueError(f"lora rank must be positive, got {self.rank}")
    bad = sorted(set(self.targets) - set(TARGETS))
    if bad or not self.targets:
      raise ValueError(f"unknown lora targets {bad}; choose from {TARGETS}")


class LoRAAdapter(nnx.Module):
  """The adapter a LoRA'd Dense calls: base output + scale * (x A) B."""

  def __init__(self, dense: Dense, rank: int, alpha: float, rngs: nnx.Rngs):
    # Kaiming-uniform A (bound 1/sqrt(fan_in), as PEFT), zero B.
    bound = 1.0 / math.sqrt(math.prod(dense.in_shape))
    a = jax.random.uniform(rngs.params(), dense.in_shape + (rank,), jnp.float32, -bound, bound)
    self.a = LoRAParam(a, axes=dense.in_axes + (None,))
    self.b = LoRAParam(jnp.zeros((rank,) + dense.out_shape, jnp.float32),
                       axes=(None,) + dense.out_axes)
    self.scale = float(alpha) / float(rank)

  def delta(self, dense: Dense):
    """The change of the kernel, scale * A B, shaped like it (for merging)."""
    a, b = self.a[...], self.b[...]
    return self.scale * jnp.tensordot(a, b, axes=1)

  def __call__(self, dense: Dense, x):
    h = dense.contract(x, self.a[...])
    return dense.base(x) + self.scale * dense.contract(h, self.b[...], 1)


def targets(model, cfg: LoRAConfig):
  roles = {r for t in cfg.targets for r in ROLES[t]}
  for path, mod in nnx.iter_modules(model):
    if isinstance(mod, Dense) and mod.role in roles:
      yield path, mod


class LoRA(Method):
  name = "lora"
  Config = LoRAConfig

  def attach(self, model, cfg, tokenize=None):
    rngs = nnx.Rngs(params=cfg.seed)
    n = 0
    for path, dense in targets(model, cfg):
      if dense.adapter is not None:
        raise ValueError(f"{'.'.join(map(str, path))} already has an adapter")
      dense.adapter = LoRAAdapter(dense, cfg.rank, cfg.alpha, rngs)
      n += 1
    if n == 0:
      raise ValueError(f"no projection of this model matches lora targets {cfg.targets}")

  def trainable(self, model, cfg):
    return LoRAParam

  def default_optimizer(self, cfg):
    return optim.OptimizerConfig(name="adamw", learning_rate=1e-3)


register(LoRA())
