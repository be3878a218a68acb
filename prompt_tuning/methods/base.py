"""The tuning-method contract. A method is one module in this package that subclasses
:class:`Method` (with its own :class:`MethodConfig`) and calls :func:`register`; the package
imports every module, so a new method is one new file.

A method (1) attaches its variables to a model through the core's hooks (``Dense.adapter``,
the prompt slot, ...), (2) says which variables are trainable (an nnx filter), (3) exports its
trainable state as named arrays, and (4) names its default optimizer and the encoder length it
adds (soft prompts).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Sequence

import jax
import numpy as np
from flax import nnx

from prompt_tuning import optim

Tokenize = Callable[[str], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """Base of every method's options. ``name`` is set by the subclass; ``seed`` seeds its
  initialisation. Subclasses validate themselves in ``validate``."""
  name: ClassVar[str] = ""
  seed: int = 0

  def __post_init__(self):
    self.validate()

  def validate(self):
    pass

  def replace(self, **kw) -> "MethodConfig":
    unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown {self.name} option(s) {sorted(unknown)}; known: "
                       f"{sorted(f.name for f in dataclasses.fields(self))}")
    return dataclasses.replace(self, **kw)

  def options(self) -> dict:
    """The options without the seed (what the run config's method.<name> section holds)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "seed"}


class Method:
  name: ClassVar[str]
  Config: ClassVar[type[MethodConfig]]

  def attach(self, model, cfg: MethodConfig, tokenize: Tokenize | None = None) -> None:
    """Adds the method's variables to ``model`` in place (nothing for full tuning)."""

  def trainable(self, model, cfg: MethodConfig):
    """An nnx filter selecting the trainable variables."""
    raise NotImplementedError

  def export(self, model, params: nnx.State, cfg: MethodConfig) -> dict[str, np.ndarray]:
    """The trainable state as named float32 arrays (dotted parameter paths)."""
    return {".".join(map(str, p)): np.asarray(v[...], np.float32)
            for p, v in nnx.to_flat_state(params)}

  def default_optimizer(self, cfg: MethodConfig) -> optim.OptimizerConfig:
    return optim.OptimizerConfig(name="adamw", learning_rate=1e-4)

  def extra_encoder_length(self, cfg: MethodConfig) -> int:
    """Positions the method adds in front of the encoder input (soft prompt length)."""
    return 0

  def extra_decoder_length(self, cfg: MethodConfig) -> int:
    """Positions the method adds in front of an encoder-decoder model's decoder input."""
    return 0


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in REGISTRY:
    raise ValueError(f"tuning method {method.name!r} registered twice")
  method.Config.name = method.name
  REGISTRY[method.name] = method
  return method


def count_params(state) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(state)))
