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
seq2seq models feeds decoder layer i the table slot (2 i) mod num_layers (its cached key/value
tuples are built from a duplicated table, and the odd slots' cross-attention pairs are dropped);
:func:`peft_layer_slots` is that rule. PEFT's adapter file holds the computed table
``prompt_embeddings`` [P, num_layers * 2 * G * dh] (also when trained with ``prefix_projection``),
so ``to_peft`` writes it with ``prefix_projection=False``; for a seq2seq model it writes
``num_layers`` = 2 x the decoder's layers, so that layer i's slot 2 i is its own (with the real
count, layers i and i + L/2 would share a slot). ``from_peft`` reads such a table into a
``projection=False`` run; :func:`from_peft_encoder` copies a PEFT prefix encoder's parameters
(the MLP too), which the parity tests use.
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


class PrefixParam(core.MethodParam):
  """A prefix-tuning variable (keys/values, or the reparameterisation MLP)."""

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

  peft_type = "PREFIX_TUNING"

  def to_peft(self, model, cfg):
    seq2seq = model.cfg.is_encoder_decoder
    if seq2seq and "encoder" in cfg.stacks:
      raise ValueError(f"PEFT's prefix tuning prefixes the decoder only; this run prefixes "
                       f"stacks {cfg.stacks}: train with method.prefix.stacks=['decoder'] to "
                       f"export a PEFT adapter")
    k, v = (np.asarray(x, np.float32) for x in model.decoder.kv_prefix())   # [n, P, G, dh]
    n, p, g, dh = k.shape
    slots = 2 * n if seq2seq else n
    table = np.zeros((p, slots, 2, g, dh), np.float32)
    at = peft_layer_slots(n, seq2seq, slots)
    table[:, at, 0], table[:, at, 1] = k.transpose(1, 0, 2, 3), v.transpose(1, 0, 2, 3)
    config = {"num_virtual_tokens": p, "token_dim": g * dh, "num_attention_heads": g,
              "num_layers": slots, "num_transformer_submodules": 2 if seq2seq else 1,
              "prefix_projection": False, "encoder_hidden_size": g * dh, "modules_to_save": None}
    return config, {"prompt_embeddings": table.reshape(p, -1)}

  def from_peft(self, model, cfg, config, tensors):
    if cfg.projection:
      raise ValueError("a PEFT prefix adapter holds the computed prefix keys/values; start "
                       "from it with method.prefix.projection=False")
    if model.cfg.is_encoder_decoder and "encoder" in cfg.stacks:
      raise ValueError("PEFT's prefix tuning prefixes the decoder only; use "
                       "method.prefix.stacks=['decoder']")
    pre = model.decoder.kv_prefix
    n, g, dh = pre.layers, pre.kv_heads, pre.head_dim
    table = tensors.get("prompt_embeddings")
    slots = int(config.get("num_layers") or 0)
    if table is None or table.shape != (cfg.length, slots * 2 * g * dh) or slots < n:
      raise ValueError(f"prompt_embeddings {None if table is None else table.shape} does not "
                       f"hold a {cfg.length}-vector prefix of {n} layers x {g} heads x {dh} "
                       f"(num_layers {slots})")
    subs = config.get("num_transformer_submodules") or (2 if model.cfg.is_encoder_decoder else 1)
    table = table.reshape(cfg.length, slots, 2, g, dh)[:, peft_layer_slots(n, subs == 2, slots)]
    pre.k.set_value(jnp.asarray(table[:, :, 0].transpose(1, 0, 2, 3)))
    pre.v.set_value(jnp.asarray(table[:, :, 1].transpose(1, 0, 2, 3)))

  def default_optimizer(self, cfg):
    # A direct table: PEFT's examples (AdamW 1e-2). Through the MLP every prefix entry moves
    # with all of the MLP's weights, so a tenth of that.
    return optim.OptimizerConfig(name="adamw", learning_rate=1e-3 if cfg.projection else 1e-2)


register(Prefix())


# ----------------------------------------------------------------------------- PEFT weights
def peft_layer_slots(layers: int, seq2seq: bool, slots: int | None = None) -> list[int]:
  """Which slot of PEFT's [P, slots (num_layers), 2, ...] table feeds each of ``layers`` layers:
  layer i for causal LMs; (2 i) mod slots for seq2seq models (PeftModel.get_prompt duplicates
  the table along the layer axis and splits it into 4-tuples (self k, self v, cross k, cross v),
  of which the self-attention pair is kept and the cross-attention pair dropped)."""
  slots = slots or layers
  return [(2 * i) % slots if seq2seq else i for i in range(layers)]


def from_peft_encoder(model, cfg: PrefixConfig, weights: dict, seq2seq: bool):
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
