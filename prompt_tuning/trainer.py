"""jit-compiled train / eval / decode steps on numpy batches (no TensorFlow needed).

A batch is a dict of arrays (see the data layer):
  ``inputs`` [B, S] int32, ``input_mask`` [B, S] (optional: derived from the pad id),
  ``targets`` [B, T] int32, ``target_weights`` [B, T] float (optional: targets != pad),
  and for packed encoder-decoder batches ``input_segment_ids``, ``input_positions``,
  ``target_segment_ids``, ``target_positions``. Decoder-only models take the same unpacked
  batch (concatenated here, loss on the targets only) or a packed one: ``tokens``,
  ``segment_ids``, ``positions``, ``loss_weights``. Evaluation batches may mark padding rows
  with ``valid`` [B] = False; they never count. ``task_ids`` [B] int32 (optional) picks each
  row's prompt of a model with per-task prompts.

The Trainer knows neither the model family nor the tuning method: the method registry gives the
trainable filter, the default optimizer and the extra encoder length.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from prompt_tuning import methods as methods_lib
from prompt_tuning import optim, sharding
from prompt_tuning.models.core import base_params

PACKED_ENC_DEC = ("input_segment_ids", "input_positions", "target_segment_ids",
                  "target_positions")
# What the steps read; anything else a data pipeline adds (example indices, raw text) stays on
# the host.
MODEL_KEYS = frozenset(("inputs", "input_mask", "targets", "target_weights", "tokens",
                        "token_mask", "segment_ids", "positions", "loss_weights", "valid",
                        "task_ids") + PACKED_ENC_DEC)


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any          # trainable nnx.State
  opt_state: Any


def shift_right(targets, start_id: int, segment_ids=None):
  """Decoder inputs: targets shifted right, the start token at the front of every segment."""
  start = jnp.full(targets.shape[:1] + (1,), start_id, targets.dtype)
  shifted = jnp.concatenate([start, targets[:, :-1]], axis=1)
  if segment_ids is not None:  # packed: each segment starts afresh
    prev = jnp.concatenate([jnp.zeros_like(segment_ids[:, :1]), segment_ids[:, :-1]], axis=1)
    shifted = jnp.where(segment_ids != prev, start_id, shifted)
  return shifted


def cross_entropy(logits, targets, weights, z_loss: float = 0.0):
  """Returns (sum of weighted token losses, sum of weights, sum of weighted z-loss)."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  z = z_loss * jnp.square(lse)
  w = weights.astype(jnp.float32)
  return jnp.sum((lse - target_logit + z) * w), jnp.sum(w), jnp.sum(z * w)


def complete_batch(batch: dict, pad_id: int) -> dict:
  """Adds default masks / weights to a numpy batch (host side)."""
  b = dict(batch)
  if "tokens" in b:   # a packed decoder-only batch is complete by construction
    return b
  for k in ("inputs", "targets"):
    if k not in b:
      raise KeyError(f"batch lacks {k!r}; it has {sorted(b)}")
    b[k] = np.asarray(b[k], np.int32)
  if "input_mask" not in b:
    b["input_mask"] = (b["inputs"] != pad_id).astype(np.int32)
  if "target_weights" not in b:
    b["target_weights"] = (b["targets"] != pad_id).astype(np.float32)
  return b


def to_decoder_only(batch: dict) -> dict:
  """Host-side: right-padded inputs [B, S] and targets [B, T] -> one sequence per example,
  ``inputs ++ targets`` in [B, S + T], loss weights on the target tokens only."""
  inputs, targets = batch["inputs"], batch["targets"]
  b, s = inputs.shape
  t = targets.shape[1]
  in_len = np.asarray(batch["input_mask"]).sum(1).astype(int)
  tgt_w = np.asarray(batch["target_weights"], np.float32)
  t_len = (tgt_w > 0).sum(1).astype(int)
  tokens = np.zeros((b, s + t), np.int32)
  weights = np.zeros((b, s + t), np.float32)
  for i in range(b):
    tokens[i, :in_len[i]] = inputs[i, :in_len[i]]
    tokens[i, in_len[i]:in_len[i] + t_len[i]] = targets[i, :t_len[i]]
    weights[i, in_len[i]:in_len[i] + t_len[i]] = tgt_w[i, :t_len[i]]
  real = np.arange(s + t)[None] < (in_len + t_len)[:, None]
  out = {"tokens": tokens, "token_mask": real.astype(np.int32), "loss_weights": weights}
  for k in ("valid", "task_ids"):
    if k in batch:
      out[k] = batch[k]
  return out


@jax.jit   # one program: op-by-op on FSDP-sharded leaves, XLA:CPU's collectives could stall
def global_norm(tree):
  """L2 norm of all leaves, computed without overflow: scaled by the largest magnitude first,
  so parameters of 1e30 (finite) give a finite norm instead of inf."""
  leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)]
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
  scale = jnp.where(m > 0, m, 1.0)
  return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))


class Trainer:
  """Holds the frozen model state once and exposes jit-compiled steps on the trainable part.

  Args:
    model: an NNX model with the tuning method already attached (``methods.attach``).
    method: the method's config (selects the trainable variables).
    optimizer: OptimizerConfig (default: the method's).
    mesh: optional jax.sharding.Mesh; parameters are placed by their logical axes.
    rules: the logical axis rules (``mesh.axis_rules``; default ``sharding.DEFAULT_RULES``).
    frozen_dtype: dtype for the frozen weights (e.g. jnp.bfloat16).
    max_encoder_length: upper bound on prompt + input length.
  """

  def __init__(self, model, method: methods_lib.MethodConfig,
               optimizer: optim.OptimizerConfig | None = None, *, mesh=None, rules=None,
               frozen_dtype=None, z_loss: float = 0.0, dropout_seed: int = 0,
               max_encoder_length: int | None = None):
    self.cfg = model.cfg
    self.method = method
    impl = methods_lib.get(method.name)
    self.opt_cfg = optimizer or impl.default_optimizer(method)
    self.tx = optim.make(self.opt_cfg)
    self.mesh = mesh
    self.rules = None if rules is None else sharding.check_rules(rules)
    self.z_loss = z_loss
    self.dropout_seed = dropout_seed
    self.max_encoder_length = max_encoder_length
    self.extra_length = impl.extra_encoder_length(method)
    self.extra_decoder_length = impl.extra_decoder_length(method)
    self.num_tasks = getattr(model, "num_prompt_tasks", 0)   # per-task prompts (task_ids)
    self.decoder_only = not self.cfg.is_encoder_decoder
    # Pre-trained weights in total and among the trainable ones (full / layers tuning): the
    # share of weight gradients in the step's FLOPs.
    self.num_base = methods_lib.count_params(nnx.state(model, base_params()))
    self.num_base_trainable = methods_lib.count_params(
        nnx.state(model, nnx.All(impl.trainable(model, method), base_params())))
    self.graphdef, trainable, frozen = methods_lib.split(model, method, frozen_dtype)
    self.num_trainable = methods_lib.count_params(trainable)
    self.num_frozen = methods_lib.count_params(frozen)
    if mesh is not None:
      trainable = jax.device_put(trainable, sharding.state_shardings(trainable, mesh, self.rules))
      frozen = jax.device_put(frozen, sharding.state_shardings(frozen, mesh, self.rules))
    self.frozen = frozen
    self._initial_params = trainable
    self.trace_counts = {"train": 0, "eval": 0, "decode": 0}
    self._train = jax.jit(self._train_step, donate_argnums=(0,))
    self._train_pinned = False
    self._eval = jax.jit(self._eval_step)
    self._decode = jax.jit(self._decode_fn, static_argnums=(3,))
    self._score = jax.jit(self._score_step)

  # ---------------------------------------------------------------------------- state
  def init_state(self) -> TrainState:
    """A fresh state. Pure: the step donates its input state, so the initial parameters are
    copied, never handed out."""
    params = jax.tree.map(jnp.copy, self._initial_params)
    opt_state = jax.jit(self.tx.init, out_shardings=self._opt_shardings(params))(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)
    if self.mesh is not None:  # scalars (step, optimizer counters) are replicated on the mesh
      rep = sharding.replicated(self.mesh)
      state = jax.tree.map(
          lambda x: x if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)
          and x.sharding.mesh == self.mesh else jax.device_put(x, rep), state)
      if not self._train_pinned:
        # Pin the output shardings to the input ones: equivalent-but-unequal specs (P() vs
        # P(None, None)) would otherwise make the second step recompile.
        shardings = jax.tree.map(lambda x: x.sharding, state)
        self._train = jax.jit(self._train_step, donate_argnums=(0,),
                              out_shardings=(shardings, sharding.replicated(self.mesh)))
        self._train_pinned = True
    return state

  def _opt_shardings(self, params):
    """Optimizer state laid out like the parameters it tracks (AdamW's moments: FSDP shards
    them with the weights); anything else (counters, Adafactor's factored statistics) is
    replicated. A state leaf tracks the parameter whose tree path ends its own, shape equal."""
    if self.mesh is None:
      return None
    keystr = jax.tree_util.keystr
    by_path = {keystr(p): (x.shape, x.sharding)
               for p, x in jax.tree_util.tree_leaves_with_path(params)}
    rep = sharding.replicated(self.mesh)

    def one(path, x):
      for k in range(len(path)):
        shape, sh = by_path.get(keystr(path[k:]), (None, None))
        if sh is not None and shape == x.shape:
          return sh
      return rep

    return jax.tree_util.tree_map_with_path(one, jax.eval_shape(self.tx.init, params))

  def model(self, params):
    """Rebuilds the NNX model from trainable params and the shared frozen state."""
    return nnx.merge(self.graphdef, params, self.frozen)

  # ---------------------------------------------------------------------------- batches
  def check_batch(self, batch: dict):
    if "tokens" in batch:
      s, keys = np.shape(batch["tokens"])[1], ("tokens",)
    else:
      s, keys = np.shape(batch["inputs"])[1], ("inputs", "targets")
      if self.decoder_only:
        s += np.shape(batch["targets"])[1]
    total = s + self.extra_length
    if self.max_encoder_length is not None and total > self.max_encoder_length:
      raise ValueError(f"input length {s} + prompt length {self.extra_length} = {total} "
                       f"exceeds max_encoder_length={self.max_encoder_length}")
    for k in keys:
      ids = np.asarray(batch[k])
      if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.vocab_size):
        raise ValueError(f"batch[{k!r}] has token ids outside [0, {self.cfg.vocab_size})")
    ids = np.asarray(batch.get("task_ids", []))
    if self.num_tasks and ids.size and (ids.min() < 0 or ids.max() >= self.num_tasks):
      raise ValueError(f"batch['task_ids'] has ids outside [0, {self.num_tasks})")

  def place(self, batch: dict, for_decode: bool = False):
    """Validates a host batch, converts it for the model's architecture and puts it on the
    mesh (rows split by the ``batch`` rule). What :meth:`step` takes."""
    batch = complete_batch({k: v for k, v in batch.items() if k in MODEL_KEYS},
                           self.cfg.pad_token_id)
    self.check_batch(batch)
    if for_decode:  # decoding reads only the (right-padded) inputs
      batch = {k: batch[k] for k in ("inputs", "input_mask", "task_ids") if k in batch}
    elif self.decoder_only and "tokens" not in batch:
      batch = to_decoder_only(batch)
    return sharding.shard_batch(batch, self.mesh, self.rules)

  def _logits_and_labels(self, model, batch, rng=None):
    """(logits, labels, weights) for either architecture."""
    task = {"task_ids": batch["task_ids"]} if "task_ids" in batch else {}
    if self.decoder_only:
      if "segment_ids" in batch:   # packed
        logits = model(batch["tokens"], rng=rng, segment_ids=batch["segment_ids"],
                       positions=batch["positions"], **task)
      else:
        logits = model(batch["tokens"], batch["token_mask"], rng=rng, **task)
      # Position i predicts token i+1; loss_weights[:, i+1] says whether that token counts
      # (0 on inputs, padding and the first token of every packed segment).
      return logits[:, :-1], batch["tokens"][:, 1:], batch["loss_weights"][:, 1:]
    packing = {k: batch[k] for k in PACKED_ENC_DEC if k in batch}
    dec_in = shift_right(batch["targets"], self.cfg.decoder_start_token_id,
                         packing.get("target_segment_ids"))
    logits = model(batch["inputs"], batch["input_mask"], dec_in, rng=rng, **task, **packing)
    return logits, batch["targets"], batch["target_weights"]

  # ---------------------------------------------------------------------------- steps
  def loss(self, params, frozen, batch, rng=None):
    """Mean token loss over a placed batch, and its aux metrics."""
    model = nnx.merge(self.graphdef, params, frozen)
    logits, labels, weights = self._logits_and_labels(model, batch, rng)
    loss_sum, weight_sum, z_sum = cross_entropy(logits, labels, weights, self.z_loss)
    denom = jnp.maximum(weight_sum, 1.0)
    return loss_sum / denom, {"loss": loss_sum / denom, "z_loss": z_sum / denom,
                              "tokens": weight_sum, "real_tokens": self._real_tokens(batch)}

  def _real_tokens(self, batch):
    """Non-padding tokens the step processed (inputs and targets)."""
    if "tokens" in batch:
      mask = batch["segment_ids"] if "segment_ids" in batch else batch["token_mask"]
      return jnp.sum(mask > 0)
    return jnp.sum(batch["input_mask"] > 0) + jnp.sum(batch["target_weights"] > 0)

  def padded_tokens(self, placed) -> tuple[int, int]:
    """(encoder, decoder) positions a placed batch computes, prompt included: the FLOP count's
    token numbers (decoder-only: all positions count as decoder positions)."""
    if self.decoder_only:
      b, n = placed["tokens"].shape
      return 0, b * (n + self.extra_length)
    b, s = placed["inputs"].shape
    return (b * (s + self.extra_length),
            b * (placed["targets"].shape[1] + self.extra_decoder_length))

  def _train_step(self, state: TrainState, frozen, batch):
    self.trace_counts["train"] += 1
    with sharding.axis_rules(self.mesh, self.rules):
      rng = None
      if self.cfg.dropout_rate > 0:
        rng = jax.random.fold_in(jax.random.PRNGKey(self.dropout_seed), state.step)
      grads, aux = jax.grad(self.loss, has_aux=True)(state.params, frozen, batch, rng)
      updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      # Finite loss *and* finite updated params: what a checkpoint of this step would hold.
      aux["finite"] = jnp.logical_and(
          jnp.isfinite(aux["loss"]),
          jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)])))
      aux["grad_norm"] = global_norm(grads)
      aux["param_norm"] = global_norm(params)
      return TrainState(state.step + 1, params, opt_state), aux

  def _eval_step(self, params, frozen, batch):
    self.trace_counts["eval"] += 1
    with sharding.axis_rules(self.mesh, self.rules):
      model = nnx.merge(self.graphdef, params, frozen)
      logits, labels, weights = self._logits_and_labels(model, batch)
      valid = batch.get("valid")
      if valid is None:
        valid = jnp.ones(labels.shape[:1], bool)
      weights = weights * valid[:, None]
      loss_sum, weight_sum, _ = cross_entropy(logits, labels, weights)
      pred = jnp.argmax(logits, -1)
      seq_correct = jnp.all(jnp.where(weights > 0, pred == labels, True), axis=-1) & valid
      return {"loss_sum": loss_sum, "weight_sum": weight_sum,
              "seq_correct": jnp.sum(seq_correct), "count": jnp.sum(valid)}

  def _score_step(self, params, frozen, batch):
    """Log-likelihood of each row's targets (sum over its weighted target tokens)."""
    with sharding.axis_rules(self.mesh, self.rules):
      model = nnx.merge(self.graphdef, params, frozen)
      logits, labels, weights = self._logits_and_labels(model, batch)
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      token = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
      return jnp.sum(token * weights.astype(jnp.float32), axis=-1)

  def _decode_fn(self, params, frozen, batch, max_decode_len, prompts=None):
    self.trace_counts["decode"] += 1
    from prompt_tuning.models.core import greedy_decode
    with sharding.axis_rules(self.mesh, self.rules):
      model = nnx.merge(self.graphdef, params, frozen)
      return greedy_decode(model, batch["inputs"], batch["input_mask"], max_decode_len,
                           prompts=prompts, task_ids=batch.get("task_ids"))

  # ---------------------------------------------------------------------------- public API
  def step(self, state: TrainState, placed_batch):
    """The compiled train step on a :meth:`place`\\ d batch (donates ``state``)."""
    return self._train(state, self.frozen, placed_batch)

  def train_step(self, state: TrainState, batch: dict):
    return self.step(state, self.place(batch))

  def eval_step(self, params, batch: dict) -> dict:
    return self._eval(params, self.frozen, self.place(batch))

  def evaluate(self, params, batches) -> dict:
    """Token-weighted loss, perplexity and teacher-forced sequence accuracy (percent) over
    batches (rows with ``valid`` False are ignored)."""
    tot = None
    for b in batches:
      out = {k: sharding.gather(v) for k, v in self.eval_step(params, b).items()}
      tot = out if tot is None else {k: tot[k] + out[k] for k in out}
    if tot is None or int(tot["count"]) == 0:
      raise ValueError("evaluate() got no examples")
    loss = float(tot["loss_sum"]) / max(float(tot["weight_sum"]), 1.0)
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
            "sequence_accuracy": 100.0 * float(tot["seq_correct"]) / int(tot["count"])}

  def score(self, params, batch: dict):
    """Log-likelihood of every row's targets under the model, [B] (a global array on the
    mesh; rank classification compares it across candidate targets)."""
    return self._score(params, self.frozen, self.place(batch))

  def decode(self, params, batch: dict, max_decode_len: int, prompts=None) -> np.ndarray:
    """Greedy decoding. ``prompts`` [B, L, D] gives each example its own soft prompt (mixed-task
    batches on one frozen model); by default the model's own prompt, if any, is used (per-task
    prompts: each row's by ``batch["task_ids"]``)."""
    if max_decode_len <= 0:
      raise ValueError(f"max_decode_length must be positive, got {max_decode_len}")
    b = dict(batch)
    b.setdefault("targets", np.zeros((np.shape(b["inputs"])[0], 1), np.int32))
    b = self.place(b, for_decode=True)
    if prompts is not None:
      prompts = jnp.asarray(prompts, jnp.float32)
      if prompts.ndim != 3 or prompts.shape[0] != np.shape(batch["inputs"])[0]:
        raise ValueError(f"prompts must be [batch, length, d_model], got {prompts.shape}")
    return sharding.gather(self._decode(params, self.frozen, b, int(max_decode_len), prompts))
