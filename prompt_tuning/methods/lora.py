"""LoRA (Hu et al. 2021): ``W x + scale B A x`` on chosen projections, B zero-initialised so
training starts at the pre-trained model; ``scale = alpha / rank``, or ``alpha / sqrt(rank)``
with ``rslora`` (Kalajdzievski 2023's rank-stabilised scaling, PEFT's ``use_rslora``). Attached
through the core's ``Dense.adapter`` hook and targeted by projection role and/or path, so every
family's attention (self and cross) and MLP are covered by one rule whatever the family calls
them.

PEFT's LoRA adapter (``to_peft`` / ``from_peft``): ``base_model.model.<module>.lora_A.weight``
[r, fan_in] and ``...lora_B.weight`` [fan_out, r] (torch ``nn.Linear`` layout, also for GPT-2's
``Conv1D`` modules). Our factors are ``a`` [in..., r] and ``b`` [r, out...]: A = a.reshape(fan_in,
r).T, B = b.reshape(r, fan_out).T. PEFT's ``target_modules`` are module-name suffixes, chosen as
the shortest that select exactly our modules (e.g. GPT-2 ``attn.c_proj`` when the MLP is not
targeted, since its MLP has a ``c_proj`` too). A fused HF module (GPT-2's ``c_attn`` holds q, k,
v): our n targeted parts of rank r are one LoRA of rank n*r there, A = concat(A_q, A_k, A_v) and B
block-diagonal (zero rows for an untargeted part), with ``rank_pattern`` / ``alpha_pattern`` that
keep the scale. Reading goes back, and also accepts a general rank-r fused LoRA (each part gets A
and its rows of B). A file's other alpha (or scaling rule) is folded into B, exactly.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.interop import peft_format as pf
from prompt_tuning.methods.base import AdapterConfig, AdapterMethod, register
from prompt_tuning.models.core import Dense, MethodParam


class LoRAParam(MethodParam):
  """A LoRA factor."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig(AdapterConfig):
  rank: int = 4           # r of each low-rank update B A
  alpha: float = 8.0      # the update is scaled by alpha / rank
  rslora: bool = False    # scale alpha / sqrt(rank) instead of alpha / rank (PEFT use_rslora)

  def validate(self):
    super().validate()
    if self.rank <= 0:
      raise ValueError(f"{self.name} rank must be positive, got {self.rank}")

  @property
  def scale(self) -> float:
    return float(self.alpha) / (math.sqrt(self.rank) if self.rslora else self.rank)


class LoRAAdapter(nnx.Module):
  """The adapter a LoRA'd Dense calls: base output + scale * (x A) B."""

  def __init__(self, dense: Dense, cfg: LoRAConfig, rngs):
    # Kaiming-uniform A (bound 1/sqrt(fan_in), as PEFT), zero B.
    bound = 1.0 / math.sqrt(math.prod(dense.in_shape))
    a = jax.random.uniform(rngs.params(), dense.in_shape + (cfg.rank,), jnp.float32, -bound, bound)
    self.a = LoRAParam(a, axes=dense.in_axes + (None,))
    self.b = LoRAParam(jnp.zeros((cfg.rank,) + dense.out_shape, jnp.float32),
                       axes=(None,) + dense.out_axes)
    self.scale = cfg.scale

  def delta(self, dense: Dense):
    """The change of the kernel, scale * A B, shaped like it (for merging)."""
    return self.scale * jnp.tensordot(self.a[...], self.b[...], axes=1)

  def lora(self, dense: Dense, x):
    """scale * (x A) B, in the compute dtype."""
    return self.scale * dense.contract(dense.contract(x, self.a[...]), self.b[...], 1)

  def __call__(self, dense: Dense, x):
    return dense.base(x) + self.lora(dense, x)


class LoRA(AdapterMethod):
  name = "lora"
  Config = LoRAConfig
  Param = LoRAParam
  Adapter = LoRAAdapter
  peft_type = "LORA"
  peft_extra: tuple[str, ...] = ()   # per-module tensors beyond lora_A / lora_B (their suffixes)

  def default_optimizer(self, cfg):
    return optim.OptimizerConfig(name="adamw", learning_rate=1e-3)

  # --------------------------------------------------------------------------- PEFT
  def peft_options(self, cfg) -> dict:
    """adapter_config.json fields that say which LoRA variant the file holds."""
    return {"use_rslora": cfg.rslora, "use_dora": False, "init_lora_weights": True}

  def peft_factors(self, model, cfg) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """{our Dense path: (A [r, fan_in], B [fan_out, r])} of the LoRA PEFT loads (torch layout):
    our own factors; PiSSA-style methods give the update against the pre-trained weights."""
    out = {}
    for p, d in self.adapters(model).items():
      fan_in, fan_out = math.prod(d.in_shape), math.prod(d.out_shape)
      out[p] = (np.asarray(d.adapter.a[...], np.float32).reshape(fan_in, -1).T,
                np.asarray(d.adapter.b[...], np.float32).reshape(-1, fan_out).T)
    return out

  def peft_site_tensors(self, model, cfg, site: pf.Site, denses) -> dict[str, np.ndarray]:
    """Tensors beyond A and B for one HF module (suffix -> array): none for LoRA."""
    return {}

  def to_peft(self, model, cfg):
    factors = self.peft_factors(model, cfg)
    by_name, by_path, modules = pf.sites(model)
    missing = sorted(".".join(map(str, p)) for p in factors if p not in by_path)
    if missing:
      raise ValueError(f"no Hugging Face module holds {self.name} projection(s) {missing[:4]}")
    chosen = {by_path[p][0].name for p in factors}
    tensors, fused = {}, {}
    for name in sorted(chosen):
      site = by_name[name]
      denses = [pf.module(model, p) for p in site.parts]
      picked = [j for j, p in enumerate(site.parts) if p in factors]
      rank = factors[site.parts[picked[0]]][0].shape[0]
      outs = [pf.fan(d.out_shape) for d in denses]
      a_mat = np.zeros((rank * len(picked), pf.fan(denses[0].in_shape)), np.float32)
      b_mat = np.zeros((sum(outs), rank * len(picked)), np.float32)
      for s, j in enumerate(picked):
        a, b = factors[site.parts[j]]
        off = sum(outs[:j])
        a_mat[s * rank:(s + 1) * rank] = a
        b_mat[off:off + outs[j], s * rank:(s + 1) * rank] = b
      if len(site.parts) > 1:
        fused[name] = len(picked)
      tensors[f"{pf.PREFIX}{name}.lora_A.weight"] = a_mat
      tensors[f"{pf.PREFIX}{name}.lora_B.weight"] = b_mat
      for suffix, v in self.peft_site_tensors(model, cfg, site, denses).items():
        tensors[f"{pf.PREFIX}{name}.{suffix}"] = v
    rank = next(iter(factors.values()))[0].shape[0]
    # PEFT's scale is lora_alpha / r (or / sqrt(r)): the alpha that keeps ours at a file rank.
    alpha_at = lambda r: cfg.scale * (math.sqrt(r) if cfg.rslora else r)
    rank_pattern, alpha_pattern = {}, {}
    n = max(fused.values(), default=1)   # targets are roles: every fused module has the same parts
    for key in (pf.target_names(modules, set(fused)) if n > 1 else ()):
      rank_pattern[key], alpha_pattern[key] = rank * n, pf.num(alpha_at(rank * n))
    config = {"r": int(rank), "lora_alpha": pf.num(alpha_at(rank)),
              "target_modules": pf.target_names(modules, chosen),
              "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
              "lora_dropout": 0.0, "bias": "none", "lora_bias": False,
              "fan_in_fan_out": pf.fan_in_fan_out(model), "modules_to_save": None,
              "layers_to_transform": None, "layers_pattern": None, **self.peft_options(cfg)}
    return config, tensors

  def from_peft(self, model, cfg, config, tensors):
    dora = self.peft_options(cfg)["use_dora"]
    for key, ok in (("lora_bias", (False, None)), ("bias", ("none", None)),
                    ("modules_to_save", (None, [])), ("trainable_token_indices", (None,)),
                    ("target_parameters", (None, [])), ("layer_replication", (None,)),
                    ("use_dora", (True,) if dora else (False, None))):
      if config.get(key) not in ok:
        raise ValueError(f"adapter_config {key}={config.get(key)!r} does not fit this run's "
                         f"method {self.name!r}")
    by_name, by_path, _ = pf.sites(model)
    groups = pf.module_tensors(model, tensors, ("lora_A", "lora_B") + self.peft_extra)
    adapters = self.adapters(model)
    ours = {by_path[p][0].name for p in adapters if p in by_path}
    if set(groups) != ours:
      only_file, only_ours = sorted(set(groups) - ours), sorted(ours - set(groups))
      raise ValueError(f"the adapter's LoRA modules differ from this run's {self.name} targets: "
                       f"only in the adapter {only_file[:3]}{' ...' if len(only_file) > 3 else ''}"
                       f" ({len(only_file)}), only in the run {only_ours[:3]}"
                       f"{' ...' if len(only_ours) > 3 else ''} ({len(only_ours)})")
    for name, group in sorted(groups.items()):
      site = by_name[name]
      for k in ("lora_A", "lora_B") + self.peft_extra:
        if k not in group:
          raise ValueError(f"{name} lacks {k}")
      a_mat, b_mat = group["lora_A"], group["lora_B"]
      r_file = a_mat.shape[0]
      denses = [pf.module(model, p) for p in site.parts]
      fan_in, outs = pf.fan(denses[0].in_shape), [pf.fan(d.out_shape) for d in denses]
      if a_mat.shape != (r_file, fan_in) or b_mat.shape != (sum(outs), r_file):
        raise ValueError(f"{name} has lora_A {a_mat.shape} / lora_B {b_mat.shape}; this model "
                         f"needs [r, {fan_in}] / [{sum(outs)}, r]")
      alpha_file = pf.pattern(config.get("alpha_pattern") or {}, name,
                              config.get("lora_alpha", 8))
      denom = math.sqrt(r_file) if config.get("use_rslora") else r_file
      b_mat = b_mat * (float(alpha_file) / denom / cfg.scale)   # the file's scale into B
      picked = [j for j, p in enumerate(site.parts) if p in adapters]
      offs = np.cumsum([0] + outs)
      for j in range(len(site.parts)):
        if j not in picked and np.any(b_mat[offs[j]:offs[j + 1]]):
          raise ValueError(f"{name} changes part {j} ({'.'.join(map(str, site.parts[j]))}) "
                           f"that this run's {self.name} targets do not cover")
      rank, n = cfg.rank, len(picked)
      blocks = r_file == rank * n and all(
          not np.any(np.delete(b_mat[offs[j]:offs[j + 1]], np.s_[s * rank:(s + 1) * rank],
                               axis=1)) for s, j in enumerate(picked))
      for s, j in enumerate(picked):
        if blocks:     # our own layout: part s uses rank rows s*r:(s+1)*r
          rows = slice(s * rank, (s + 1) * rank)
          a, b = a_mat[rows], b_mat[offs[j]:offs[j + 1], rows]
        elif r_file == rank:   # a general LoRA on a fused module: every part shares A
          a, b = a_mat, b_mat[offs[j]:offs[j + 1]]
        else:
          want_r = f"{rank}" if n == 1 else f"{rank} or {rank * n} (block-diagonal)"
          raise ValueError(f"{name} has LoRA rank {r_file}; this run's {self.name} rank needs "
                           f"{want_r}")
        dense = denses[j]
        dense.adapter.a.set_value(jnp.asarray(a.T.reshape(dense.in_shape + (rank,))))
        dense.adapter.b.set_value(jnp.asarray(b.T.reshape((rank,) + dense.out_shape)))
        self.peft_set_part(dense, group, offs[j], offs[j + 1])

  def peft_set_part(self, dense: Dense, group: dict, start: int, stop: int) -> None:
    """Sets the adapter's state beyond A and B from a module's tensors (rows start:stop are
    this part's outputs): nothing for LoRA."""


register(LoRA())
