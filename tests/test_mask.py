"""Learned sparse fine-tuning (method 'mask'): the applied mask has exactly the target sparsity,
gradients reach the scores straight through, and the packed bit mask is the whole artifact.
(Training reduces the loss on every family: tests/test_matrix.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prompt_tuning import methods
from prompt_tuning.methods import mask as mask_lib
from tests.helpers import tiny_model


def adapters(m):
  return [(".".join(map(str, p)), d) for p, d in nnx.iter_modules(m)
          if isinstance(getattr(d, "adapter", None), mask_lib.MaskAdapter)]


def ids(seed=0, b=3, s=7):
  return np.random.RandomState(seed).randint(3, 256, (b, s)).astype(np.int32)


def enc_dec_logits(m, x):
  return m(x, np.ones_like(x), x[:, :4])


@pytest.mark.parametrize("sparsity", [0.01, 0.05, 0.3])
def test_applied_mask_has_exactly_the_target_sparsity(sparsity):
  m = tiny_model("tiny-llama")
  methods.attach(m, methods.make("mask", sparsity=sparsity))
  found = adapters(m)
  assert len(found) == 2 * 7   # q, k, v, o, gate, up, down of both layers
  for name, d in found:
    mk = np.asarray(d.adapter.mask())
    n = mk.size
    assert set(np.unique(mk)) <= {0.0, 1.0}
    assert (mk == 0).sum() == round(sparsity * n) > 0, name
  # Ties (equal scores) still give the exact count: the lowest indices go first.
  d = found[0][1]
  d.adapter.scores.set_value(jnp.zeros(d.kernel.shape))
  mk = np.asarray(d.adapter.mask()).reshape(-1)
  k = round(sparsity * mk.size)
  assert (mk[:k] == 0).all() and (mk[k:] == 1).all()


def test_magnitude_init_is_magnitude_pruning_and_forward_uses_masked_kernel():
  m, plain = tiny_model(), tiny_model()
  methods.attach(m, methods.make("mask", sparsity=0.1, paths=("encoder.layers.1",)))
  found = adapters(m)
  assert found and all(n.startswith("encoder.layers.1.") for n, _ in found)
  for _, d in found:
    w = np.abs(np.asarray(d.kernel[...])).reshape(-1)
    zeroed = np.asarray(d.adapter.mask()).reshape(-1) == 0
    assert w[zeroed].max() <= w[~zeroed].min()
  # The forward pass equals the plain model with the masked kernels written in.
  bits = methods.get("mask").export(m, nnx.state(m, mask_lib.MaskParam),
                                    methods.make("mask", sparsity=0.1))
  mask_lib.apply_bits(plain, bits)
  x = ids()
  np.testing.assert_allclose(np.asarray(enc_dec_logits(m, x)),
                             np.asarray(enc_dec_logits(plain, x)), atol=1e-6)


def test_straight_through_gradients_reach_the_scores():
  """dL/dS = dL/dW_eff * W, with W_eff = W * m the kernel the forward pass used."""
  cfg = methods.make("mask", sparsity=0.05, targets=("mlp", "q"), paths=("decoder.layers.1",))
  m, plain = tiny_model(), tiny_model()
  methods.attach(m, cfg)
  x = ids(1)
  loss = lambda model: jnp.mean(jnp.square(enc_dec_logits(model, x)))
  graphdef, scores, rest = nnx.split(m, mask_lib.MaskParam, ...)
  g = jax.grad(lambda s: loss(nnx.merge(graphdef, s, rest)))(scores)
  # Reference: gradients w.r.t. the masked kernels of a plain copy.
  mask_lib.apply_bits(plain, methods.get("mask").export(m, scores, cfg))
  names = [n for n, _ in adapters(m)]
  is_target = lambda path, _: ".".join(map(str, path[:-1])) in names and path[-1] == "kernel"
  pg, kernels, prest = nnx.split(plain, is_target, ...)
  gk = jax.grad(lambda k: loss(nnx.merge(pg, k, prest)))(kernels)
  gk = {".".join(map(str, p[:-1])): np.asarray(v[...]) for p, v in nnx.to_flat_state(gk)}
  got = {".".join(map(str, p[:-2])): np.asarray(v[...]) for p, v in nnx.to_flat_state(g)}
  assert sorted(got) == sorted(gk) == sorted(names) and len(names) >= 3
  for name, d in adapters(m):
    want = gk[name] * np.asarray(d.kernel[...])
    assert np.abs(got[name]).max() > 0
    np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-9)


def test_exported_bits_are_the_artifact_and_rebuild_the_masked_weights():
  from tests.helpers import make_trainer, sentiment_data
  cfg = methods.make("mask", sparsity=0.05, paths=("decoder",))
  tr = make_trainer(cfg, preset="tiny-gpt2")
  st = tr.init_state()
  ds = sentiment_data(64)
  before = methods.get("mask").export(tr.model(st.params), st.params, cfg)
  for i in range(3):
    st, _ = tr.train_step(st, ds.train_batch(i, 8))
  bits = methods.get("mask").export(tr.model(st.params), st.params, cfg)
  assert any(not np.array_equal(before[k], bits[k]) for k in bits)   # the mask was learned
  tuned = tr.model(st.params)
  plain = tiny_model("tiny-gpt2")
  total = 0
  for name, d in adapters(tuned):
    packed = bits[name + ".kernel"]
    n = d.kernel[...].size
    assert packed.dtype == np.uint8 and packed.size == -(-n // 8)   # one bit per entry
    mk = mask_lib.unpack(packed, d.kernel.shape)
    np.testing.assert_array_equal(mk, np.asarray(d.adapter.mask()))
    assert (mk == 0).sum() == round(0.05 * n)
    total += packed.size
  mask_lib.apply_bits(plain, bits)
  for name, d in adapters(tuned):
    mod = plain
    for p in name.split("."):
      mod = mod[int(p)] if p.isdigit() else getattr(mod, p)
    w = np.asarray(d.kernel[...])
    np.testing.assert_array_equal(np.asarray(mod.kernel[...]),
                                  w * np.asarray(d.adapter.mask()))
  x = ids(2)
  np.testing.assert_allclose(np.asarray(tuned(x)), np.asarray(plain(x)), atol=1e-6)
  assert total < 4 * tr.num_trainable / 30   # bits: 1/32 of the float32 scores


@pytest.mark.parametrize("kw,msg", [
    (dict(sparsity=0.0), "sparsity must be in"),
    (dict(sparsity=1.0), "sparsity must be in"),
    (dict(targets=("wq",)), "unknown mask targets"),
    (dict(init="ones"), "unknown mask init"),
])
def test_bad_config(kw, msg):
  with pytest.raises(ValueError, match=msg):
    methods.make("mask", **kw)


def test_path_that_matches_nothing():
  with pytest.raises(ValueError, match="matches no"):
    methods.attach(tiny_model(), methods.make("mask", paths=("decoder.layers.7",)))
