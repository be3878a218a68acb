"""Tuning methods behind one interface: every module of this package registers one method
(see base.py); ``prompt``, ``lora``, ``dora``, ``pissa``, ``full``, ``layers``, ``prefix``,
``ia3`` and ``mask`` ship with the library.

  cfg = methods.make("lora", rank=8)           # a validated config
  methods.attach(model, cfg, tokenize)         # adds the method's variables to the model
  graphdef, trainable, frozen = methods.split(model, cfg, frozen_dtype=jnp.bfloat16)
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning.methods.base import (REGISTRY, Method, MethodConfig, Tokenize, count_params,
                                        register)

for _m in pkgutil.iter_modules(__path__):
  if _m.name != "base":
    importlib.import_module(f"{__name__}.{_m.name}")


def get(name: str) -> Method:
  if name not in REGISTRY:
    raise ValueError(f"unknown tuning method {name!r}; choose one of {sorted(REGISTRY)}")
  return REGISTRY[name]


def make(name: str, seed: int = 0, **options) -> MethodConfig:
  """The validated config of method ``name`` with ``options``."""
  method = get(name)
  known = {f for f in method.Config.__dataclass_fields__}
  unknown = sorted(set(options) - known)
  if unknown:
    raise ValueError(f"unknown {name} option(s) {unknown}; known: "
                     f"{sorted(known - {'seed'})}")
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
  return method.Config(seed=seed, **options)


def defaults() -> dict[str, dict]:
  """{method name: its default options} (the run config's method.<name> sections)."""
  return {name: {f.name: f.default for f in dataclasses.fields(m.Config) if f.name != "seed"}
          for name, m in sorted(REGISTRY.items())}


def describe(cfg: MethodConfig) -> dict:
  """JSON-able record of a method config: its name and every option (checkpoint metadata)."""
  return {"name": cfg.name, **dataclasses.asdict(cfg)}


def attach(model, cfg: MethodConfig, tokenize: Tokenize | None = None):
  """Attaches the method's variables to ``model`` (in place) and returns it."""
  get(cfg.name).attach(model, cfg, tokenize)
  return model


def split(model, cfg: MethodConfig, frozen_dtype=None):
  """(graphdef, trainable, frozen). Trainable variables are float32; the frozen state may be
  cast to ``frozen_dtype`` (e.g. bfloat16) once and shared by every task."""
  graphdef, trainable, frozen = nnx.split(model, get(cfg.name).trainable(model, cfg), ...)
  if not jax.tree.leaves(trainable):
    raise ValueError(f"method {cfg.name!r} selected no trainable parameters")
  trainable = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), trainable)
  if frozen_dtype is not None:
    frozen = jax.tree.map(
        lambda x: x.astype(frozen_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, frozen)
  return graphdef, trainable, frozen


__all__ = ["REGISTRY", "Method", "MethodConfig", "attach", "count_params", "defaults", "describe", "get",
           "make", "register", "split"]
