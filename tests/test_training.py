"""The jit train loop: loss falls, no recompilation, LoRA learns the task, dtype/remat options."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import methods, optim, trainer as trainer_lib
from tests.helpers import make_trainer, sentiment_data, vocab


def run(tr, ds, steps, bs=32):
  st = tr.init_state()
  losses = []
  for i in range(steps):
    st, aux = tr.train_step(st, ds.train_batch(i, bs))
    losses.append(float(aux["loss"]))
  return st, losses


def test_prompt_tuning_reduces_loss_by_half_without_recompiling():
  ds = sentiment_data()
  cfg = methods.make("prompt", length=20)
  tr = make_trainer(cfg)
  assert tr.opt_cfg.name == "adafactor" and tr.opt_cfg.learning_rate == 0.3
  st, losses = run(tr, ds, 60)
  first, last = np.mean(losses[:3]), np.mean(losses[-5:])
  assert last < 0.5 * first, (first, last)
  assert tr.trace_counts["train"] == 1  # one compilation for all 60 steps
  ev = tr.evaluate(st.params, ds.eval_batches(64))
  assert ev["loss"] < 0.5 * first
  assert int(st.step) == 60


def test_lora_learns_the_task():
  ds = sentiment_data(1024)
  dev = sentiment_data(128, split_seed=777)
  cfg = methods.make("lora", rank=4)
  tr = make_trainer(cfg, optim.OptimizerConfig(name="adamw", learning_rate=3e-3))
  st, losses = run(tr, ds, 150)
  v = vocab()
  correct = 0
  for b in dev.eval_batches(64):
    pred = tr.decode(st.params, {"inputs": b["inputs"]}, 8)
    correct += sum(v.decode(p) == v.decode(t) for p, t, ok in zip(pred, b["targets"], b["valid"]) if ok)
  assert correct / dev.size > 0.9, correct / dev.size
  assert tr.trace_counts["decode"] == 1


def test_frozen_weights_do_not_change_and_trainables_do():
  ds = sentiment_data(64)
  cfg = methods.make("layers", paths=("decoder.layers.1",))
  tr = make_trainer(cfg, optim.OptimizerConfig(name="adamw", learning_rate=1e-2))
  frozen_before = jax.tree.map(np.asarray, tr.frozen)
  st0 = tr.init_state()
  p0 = jax.tree.map(np.array, st0.params)
  st, _ = run(tr, ds, 3)
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(tr.frozen)):
    np.testing.assert_array_equal(a, b)
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(st.params))]
  assert all(changed)


def test_cross_entropy_and_z_loss():
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  tgt = rng.randint(0, 7, (2, 3))
  w = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  lse = np.log(np.exp(logits).sum(-1))
  ce = lse - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
  s, ws, z = trainer_lib.cross_entropy(jnp.asarray(logits), jnp.asarray(tgt), jnp.asarray(w), 1e-2)
  np.testing.assert_allclose(float(s), ((ce + 1e-2 * lse ** 2) * w).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(z), (1e-2 * lse ** 2 * w).sum(), rtol=1e-5)
  assert float(ws) == 3.0


def test_remat_gives_same_gradients():
  ds = sentiment_data(32)
  b = ds.train_batch(0, 8)
  grads = []
  for remat in ("none", "full", "dots"):
    tr = make_trainer(methods.make("lora"), remat=remat)
    st = tr.init_state()
    g, _ = jax.grad(tr.loss, has_aux=True)(st.params, tr.frozen, tr.place(b))
    grads.append(jax.tree.leaves(g))
  for other in grads[1:]:
    for a, c in zip(grads[0], other):
      np.testing.assert_allclose(a, c, atol=1e-6)


def test_bfloat16_frozen_model_tracks_float32():
  ds = sentiment_data(64)
  b = ds.train_batch(0, 16)
  cfg = methods.make("prompt", length=10)
  f32 = make_trainer(cfg)
  bf16 = make_trainer(cfg, dtype="bfloat16", frozen_dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16.frozen))
  st = bf16.init_state()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(st.params))
  l32 = f32.evaluate(f32.init_state().params, [b])["loss"]
  l16 = bf16.evaluate(st.params, [b])["loss"]
  assert abs(l32 - l16) / l32 < 0.05, (l32, l16)
  st, aux = bf16.train_step(st, b)
  assert np.isfinite(float(aux["loss"]))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(st.params))


def test_too_long_inputs_and_bad_ids_are_rejected():
  tr = make_trainer(methods.make("prompt", length=10), max_encoder_length=20)
  st = tr.init_state()
  with pytest.raises(ValueError, match="exceeds max_encoder_length"):
    tr.train_step(st, {"inputs": np.ones((2, 11), np.int32), "targets": np.ones((2, 2), np.int32)})
  with pytest.raises(ValueError, match="outside"):
    tr.train_step(st, {"inputs": np.full((2, 4), 999, np.int32), "targets": np.ones((2, 2), np.int32)})


def test_adafactor_paper_defaults():
  c = methods.get("prompt").default_optimizer(methods.make("prompt"))
  assert (c.name, c.learning_rate, c.decay_rate, c.clipping_threshold,
          c.multiply_by_parameter_scale, c.schedule) == ("adafactor", 0.3, 0.8, 1.0, False, "constant")
  # The transformation matches optax's adafactor with those settings.
  p = {"w": jnp.ones((4, 3))}
  g = {"w": jnp.arange(12.0).reshape(4, 3)}
  ours = optim.make(c)
  ref = optax.adafactor(0.3, decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=False)
  u1, _ = ours.update(g, ours.init(p), p)
  u2, _ = ref.update(g, ref.init(p), p)
  np.testing.assert_allclose(u1["w"], u2["w"])
  assert methods.get("lora").default_optimizer(methods.make("lora")).name == "adamw"
  with pytest.raises(ValueError, match="unknown optimizer"):
    optim.OptimizerConfig(name="lamb")
