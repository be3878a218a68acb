"""Prefix tuning (Li & Liang 2021): ``length`` trainable key/value vectors per layer, put in front
of the keys and values of every self-attention of the chosen stacks (the core's
``Stack.kv_prefix`` hook). Every query attends to the whole prefix; it never enters the KV cache,
so cached greedy decoding works unchanged.

As in Hugging Face's past-key-values path (what PEFT uses), the prefix takes positions 0..P-1:
token positions are shifted by P (learned positions, RoPE, T5 buckets) and prefix keys get no
RoPE. With ``projection`` (the default, as Li & Liang, who found the direct parameterisation
unstable) the prefix is reparameterised as PEFT's ``prefix_projection``: an embedding [P, G*dh]
-> Linear(hidden) -> tanh -> Linear(layers*2*G*dh), one MLP per stack; :meth:`Prefix.export`
returns the computed keys/values (the MLP is only a training device, not needed at inference).

Default optimizer: AdamW, lr 1e-3 with the MLP, 1e-2 for a direct table (PEFT's prefix-tuning
examples). Both are fixed-budget choices; on the tiny test models the MLP variant also trains at
1e-2, the direct table needs ~1e-1 to move as fast.

PEFT compatibility (parity-tested on T5, BART, GPT-2 and Llama): PEFT prefixes only the decoder's
self-attention of encoder-decoder models (``stacks=("decoder",)`` here; the default prefixes every
stack, as Li & Liang), sizes GQA prefixes by ``num_key_value_heads`` (as here), and for
seq2seq models feeds decoder layer i the table slot (2 i) mod L (its cached key/value tuples are
built from a duplicated table); :func:`from_peft` maps PEFT's weights with that rule.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning import optim
from prompt_tuning.methods.base import Method, MethodConfig, register
from prompt_tuning.models import core


class PrefixParam(nnx.Param):
  """A prefix-tuning variable (keys/values, or the reparameterisation MLP)."""


core.METHOD_PARAM_KINDS.append(PrefixParam)

STACKS = ("encoder", "decoder")
INITS = ("normal", "zero")


@dataclasses.dataclass(frozen=True)
class PrefixConfig(MethodConfig):
  length: int = 20                  # P, prefix vectors per layer (PEFT num_virtual_tokens)
  stacks: tuple[str, ...] = STACKS  # stacks whose self-attention gets a prefix (decoder-only
                                    # models: "decoder" is the one stack)
  projection: bool = True           # reparameterise through an MLP (Li & Liang; PEFT's
                                    # prefix_projection, off by default there)
  projection_hidden: int = 512      # its hidden width (Li & Liang: 512; 0 = G*dh, PEFT's
                                    # encoder_hidden_size default)
  init: str = "normal"              # "normal": N(0, init_std) (PEFT's default); "zero": zero
                                    # prefixes (with projection: zero last layer, as PEFT)
  init_std: float = 1.0             # std of the "normal" init

  def validate(self):
    if self.length <= 0:
      raise ValueError(f"prefix length must be positive, got {self.length}")
    bad = sorted(set(self.stacks) - set(STACKS))
    if bad or not self.stacks:
      raise ValueError(f"unknown prefix stacks {bad}; choose from {STACKS}")
    if self.init not in INITS:
      raise ValueError(f"unknown prefix init {self.init!r}; choose one of {INITS}")
    if self.projection_hidden < 0 or self.init_std < 0:
      raise ValueError("prefix projection_hidden and init_std must be >= 0")


def _uniform(key, shape, fan_in):
  """torch.nn.Linear's default init (kaiming-uniform, a=sqrt(5)): U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class KVPrefix(nnx.Module):
  """One stack's prefix: ``__call__`` -> (k, v), each [layers, P, kv_heads, head_dim]."""

  def __init__(self, layers: int, kv_heads: int, head_dim: int, cfg: PrefixConfig,
               rngs: nnx.Rngs):
    self.length, self.layers, self.kv_heads, self.head_dim = cfg.length, layers, kv_heads, head_dim
    self.projection = cfg.projection
    p, width = cfg.length, kv_heads * head_dim
    normal = lambda shape: cfg.init_std * jax.random.normal(rngs.params(), shape, jnp.float32)
    if cfg.projection:
      hidden = cfg.projection_hidden or width
      out = layers * 2 * width
      self.embedding = PrefixParam(normal((p, width)), axes=("prompt", None))
      self.w1 = PrefixParam(_uniform(rngs.params(), (width, hidden), width), axes=(None, None))
      self.b1 = PrefixParam(_uniform(rngs.params(), (hidden,), width), axes=(None,))
      w2, b2 = _uniform(rngs.params(), (hidden, out), hidden), \
          _uniform(rngs.params(), (out,), hidden)
      if cfg.init == "zero":
        w2, b2 = jnp.zeros_like(w2), jnp.zeros_like(b2)
      self.w2 = PrefixParam(w2, axes=(None, None))
      self.b2 = PrefixParam(b2, axes=(None,))
    else:
      shape = (layers, p, kv_heads, head_dim)
      axes = (None, "prompt", "kv_heads", "kv")
      init = (lambda s: jnp.zeros(s, jnp.float32)) if cfg.init == "zero" else normal
      self.k = PrefixParam(init(shape), axes=axes)
      self.v = PrefixParam(init(shape), axes=axes)

  def __call__(self):
    if not self.projection:
      return self.k[...], self.v[...]
    h = jnp.tanh(self.embedding[...] @ self.w1[...] + self.b1[...])
    out = h @ self.w2[...] + self.b2[...]                       # [P, layers * 2 * G * dh]
    out = out.reshape(self.length, self.layers, 2, self.kv_heads, self.head_dim)
    out = jnp.transpose(out, (1, 2, 0, 3, 4))                  # [layers, 2, P, G, dh]
    return out[:, 0], out[:, 1]


def prefixed_stacks(model, cfg: PrefixConfig):
  """(name, stack) of the stacks that get a prefix."""
  if not model.cfg.is_encoder_decoder:
    if "decoder" not in cfg.stacks:
      raise ValueError("prefix stacks must include 'decoder' for a decoder-only model (its one "
                       "stack)")
    return [("decoder", model.decoder)]
  return [(n, getattr(model, n)) for n in STACKS if n in cfg.stacks]


class Prefix(Method):
  name = "prefix"
  Config = PrefixConfig

  def attach(self, model, cfg, tokenize=None):
    rngs = nnx.Rngs(params=cfg.seed)
    for name, stack in prefixed_stacks(model, cfg):
      if stack.kv_prefix is not None:
        raise ValueError(f"the {name} stack already has a prefix")
      kv_heads, head_dim = stack.layers[0].attn.k.out_shape
      stack.kv_prefix = KVPrefix(len(stack.layers), kv_heads, head_dim, cfg, rngs)

  def trainable(self, model, cfg):
    return PrefixParam

  def export(self, model, params, cfg):
    """The prefix keys/values per stack, ``<stack>.k`` / ``<stack>.v`` [layers, P, G, dh]
    (computed through the MLP when reparameterised)."""
    graphdef, _, rest = nnx.split(model, PrefixParam, ...)
    tuned = nnx.merge(graphdef, params, rest)
    out = {}
    for name, stack in prefixed_stacks(tuned, cfg):
      k, v = stack.kv_prefix()
      out[f"{name}.k"], out[f"{name}.v"] = np.asarray(k, np.float32), np.asarray(v, np.float32)
    return out

  def default_optimizer(self, cfg):
    # A direct table: PEFT's examples (AdamW 1e-2). Through the MLP every prefix entry moves
    # with all of the MLP's weights, so a tenth of that.
    return optim.OptimizerConfig(name="adamw", learning_rate=1e-3 if cfg.projection else 1e-2)


register(Prefix())


# ----------------------------------------------------------------------------- PEFT weights
def peft_layer_slots(layers: int, seq2seq: bool) -> list[int]:
  """Which slot of PEFT's [P, 2*layers, ...] table feeds each layer: layer i for causal LMs;
  (2 i) mod layers for seq2seq models (PeftModel.get_prompt duplicates the table along the layer
  axis and splits it into 4-tuples (self k, self v, cross k, cross v), of which transformers
  keeps the self-attention pair, then drops the cross-attention pair)."""
  return [(2 * i) % layers if seq2seq else i for i in range(layers)]


def from_peft(model, cfg: PrefixConfig, weights: dict, seq2seq: bool):
  """Copies PEFT prefix-encoder weights (``embedding.weight`` and, with ``prefix_projection``,
  ``transform.0.weight/bias`` and ``transform.2.weight/bias``; torch layout, as numpy arrays) into
  the decoder stack's prefix of ``model`` (PEFT prefixes that stack only)."""
  stack = model.decoder
  pre = stack.kv_prefix
  if pre is None:
    raise ValueError("the model's decoder has no prefix; attach method 'prefix' first")
  n, g, dh = pre.layers, pre.kv_heads, pre.head_dim
  slots = np.asarray(peft_layer_slots(n, seq2seq))
  w = {k: np.asarray(v, np.float32) for k, v in weights.items()}
  if cfg.projection:
    # Output features are laid out [layers, 2, G, dh] in both; reorder the layer blocks.
    w2 = w["transform.2.weight"].T.reshape(-1, n, 2 * g * dh)[:, slots].reshape(-1, n * 2 * g * dh)
    b2 = w["transform.2.bias"].reshape(n, 2 * g * dh)[slots].reshape(-1)
    pre.embedding.set_value(jnp.asarray(w["embedding.weight"]))
    pre.w1.set_value(jnp.asarray(w["transform.0.weight"].T))
    pre.b1.set_value(jnp.asarray(w["transform.0.bias"]))
    pre.w2.set_value(jnp.asarray(w2))
    pre.b2.set_value(jnp.asarray(b2))
  else:
    table = w["embedding.weight"].reshape(-1, n, 2, g, dh)[:, slots]   # [P, layers, 2, G, dh]
    table = np.transpose(table, (1, 2, 0, 3, 4))
    pre.k.set_value(jnp.asarray(table[:, 0]))
    pre.v.set_value(jnp.asarray(table[:, 1]))
