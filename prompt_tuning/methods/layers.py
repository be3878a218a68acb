"""Tuning chosen layers only (Radiya-Dixit & Wang 2020's critical layers): the pre-trained
weights under dotted path prefixes (e.g. ``decoder.layers.5`` or ``encoder.layers.0.mlp``)
and/or the last ``last_k`` layers of every stack."""
from __future__ import annotations

import dataclasses
import re

from flax import nnx

from prompt_tuning.methods.base import Method, MethodConfig, register
from prompt_tuning.models.core import base_params


@dataclasses.dataclass(frozen=True)
class LayersConfig(MethodConfig):
  paths: tuple[str, ...] = ()   # dotted prefixes of the tuned blocks (e.g. "decoder.layers.1")
  last_k: int = 0               # or: the last k layers of every stack

  def validate(self):
    if self.last_k < 0:
      raise ValueError(f"layers last_k must be >= 0, got {self.last_k}")
    if not self.paths and self.last_k == 0:
      raise ValueError("method 'layers' needs paths (dotted prefixes such as "
                       "'decoder.layers.1') or last_k > 0")


def stacks(model):
  """(name, stack) of the model's layer stacks: encoder and decoder, or the decoder alone."""
  return [(n, getattr(model, n)) for n in ("encoder", "decoder") if hasattr(model, n)]


def prefixes(model, cfg: LayersConfig) -> list[str]:
  out = list(cfg.paths)
  for name, stack in stacks(model):
    n = len(stack.layers)
    out += [f"{name}.layers.{i}" for i in range(max(0, n - cfg.last_k), n)]
  return out


class Layers(Method):
  name = "layers"
  Config = LayersConfig

  def trainable(self, model, cfg):
    pre = prefixes(model, cfg)
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, base_params()))]
    for p in pre:
      if not any(q == p or q.startswith(p + ".") for q in paths):
        raise ValueError(f"layer prefix {p!r} matches no pre-trained weight; e.g. {paths[:3]}")
    pattern = re.compile("|".join(re.escape(p) + r"(\.|$)" for p in pre))
    return nnx.All(base_params(), lambda path, _: bool(pattern.match(".".join(map(str, path)))))


register(Layers())
