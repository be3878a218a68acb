"""The tuning-method contract. A method is one module in this package that subclasses
:class:`Method` (with its own :class:`MethodConfig`) and calls :func:`register`; the package
imports every module, so a new method is one new file.

A method owns (1) its options and their validation (its MethodConfig), (2) attaching its
variables to a model through the core's hooks (``Dense.adapter``, ``Stack.kv_prefix``, the prompt
slot), each trainable one a :class:`MethodParam`, (3) which variables are trainable (an nnx filter), (4) its
trainable state as named arrays, (5) its default optimizer, the sequence length it adds (soft
prompts) and the task features batches must carry for it, and (6) its PEFT form
(``peft_type``, :meth:`Method.to_peft` / :meth:`Method.from_peft`, or a refusal that names it).
Nothing outside this package compares method names.

Methods that adapt projections (LoRA, (IA)^3, masks, ...) share :class:`AdapterConfig` (targets
by role and by path), :func:`select` and :class:`AdapterMethod` (the attach loop).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, ClassVar, Sequence

import jax
import numpy as np
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.models.core import Dense, MethodParam

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

  def task_names(self, cfg: MethodConfig) -> tuple[str, ...]:
    """Tasks whose index every batch row must carry as ``task_ids`` (per-task state); () when
    the method's state is the same for every row."""
    return ()

  def check_mixable(self, cfg: MethodConfig, theirs: dict) -> None:
    """Mixed-task inference (each row of a batch uses the state of its own task's run, on one
    shared frozen model): raises unless a run of this method with options ``theirs`` (its
    checkpoint's method record) can share a batch with ``cfg``'s. Only methods whose state
    enters per example (see :meth:`example_state`) can."""
    raise ValueError(f"mixed-task inference needs per-example state (soft prompts); method "
                     f"{self.name!r} changes the shared model")

  def example_state(self, params: nnx.State) -> np.ndarray:
    """A run's trained state as one row of a per-example batch (see :meth:`check_mixable`)."""
    raise NotImplementedError

  # PEFT's adapter format (prompt_tuning.interop reads and writes the files).
  peft_type: ClassVar[str | None] = None   # PEFT's name for the method; None: PEFT has none

  def to_peft(self, model, cfg: MethodConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """(the method's adapter_config.json fields, {tensor name: array}) of the attached, tuned
    ``model``, for ``peft.PeftModel.from_pretrained``."""
    raise ValueError(f"method {self.name!r} has no PEFT adapter form; export a merged Hugging "
                     f"Face checkpoint (format 'hf') instead")

  def from_peft(self, model, cfg: MethodConfig, config: dict,
                tensors: dict[str, np.ndarray]) -> None:
    """Sets the attached method's variables of ``model`` from a PEFT adapter of ``peft_type``
    (``config``: its adapter_config.json)."""
    raise ValueError(f"method {self.name!r} cannot start from a PEFT adapter")

  def from_prompt(self, model, cfg: MethodConfig, value: np.ndarray) -> None:
    """Sets the method's state from a prompt file's [length, d_model] array."""
    raise ValueError(f"method {self.name!r} cannot start from a prompt file"
                     + (f" (its PEFT form is a {self.peft_type} adapter)"
                        if self.peft_type else ""))


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in REGISTRY:
    raise ValueError(f"tuning method {method.name!r} registered twice")
  method.Config.name = method.name
  REGISTRY[method.name] = method
  return method


# ----------------------------------------------------------------------------- adapters
ROLES = {"q": ("q",), "k": ("k",), "v": ("v",), "o": ("o",), "mlp": ("mlp_in", "mlp_out"),
         "mlp_in": ("mlp_in",), "mlp_out": ("mlp_out",)}


@dataclasses.dataclass(frozen=True)
class AdapterConfig(MethodConfig):
  """Options of a method that adapts projections (``Dense.adapter``): which ones, by role
  (``targets``, whatever a family calls them) and by place (``paths``). ``TARGETS`` lists the
  target names the method accepts (keys of :data:`ROLES`)."""
  TARGETS: ClassVar[tuple[str, ...]] = ("q", "k", "v", "o", "mlp")
  targets: tuple[str, ...] = ("q", "k", "v", "o", "mlp")   # projections by role (mlp: every one)
  paths: tuple[str, ...] = ()     # dotted prefixes (e.g. "decoder.layers.1"); () = every layer

  def validate(self):
    bad = sorted(set(self.targets) - set(self.TARGETS))
    if bad or not self.targets:
      raise ValueError(f"unknown {self.name} targets {bad}; choose from {self.TARGETS}")


def select(model, cfg: AdapterConfig) -> list[tuple[str, Dense]]:
  """(dotted path, Dense) of the projections ``cfg`` targets; every path must match one."""
  roles = {r for t in cfg.targets for r in ROLES[t]}
  pattern = re.compile("|".join(re.escape(p) + r"(\.|$)" for p in cfg.paths)) if cfg.paths \
      else None
  out = []
  for path, mod in nnx.iter_modules(model):
    name = ".".join(map(str, path))
    if isinstance(mod, Dense) and mod.role in roles and (pattern is None or pattern.match(name)):
      out.append((name, mod))
  for p in cfg.paths:
    if not any(n == p or n.startswith(p + ".") for n, _ in out):
      raise ValueError(f"{cfg.name} path {p!r} matches no {'/'.join(cfg.targets)} projection; "
                       f"e.g. {[n for n, _ in out][:3] or 'decoder.layers.0'}")
  if not out:
    raise ValueError(f"no projection of this model matches {cfg.name} targets {cfg.targets}")
  return out


class AdapterMethod(Method):
  """A method that sets ``Dense.adapter`` on the projections its config selects: subclasses
  give ``Param`` (their variables' kind) and ``Adapter`` (an nnx.Module built as
  ``Adapter(dense, cfg, rngs)`` and called as ``adapter(dense, x)``)."""
  Param: ClassVar[type[MethodParam]]
  Adapter: ClassVar[type[nnx.Module]]

  def attach(self, model, cfg, tokenize=None):
    rngs = nnx.Rngs(params=cfg.seed)
    for name, dense in select(model, cfg):
      if dense.adapter is not None:
        raise ValueError(f"{name} already has an adapter")
      dense.adapter = self.Adapter(dense, cfg, rngs)

  def trainable(self, model, cfg):
    return self.Param

  def adapters(self, model) -> dict[tuple, Dense]:
    """{path: Dense} of the projections that carry this method's adapter."""
    return {tuple(p): m for p, m in nnx.iter_modules(model)
            if isinstance(m, Dense) and type(m.adapter) is self.Adapter}


def count_params(state) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(state)))
