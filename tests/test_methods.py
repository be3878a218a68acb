"""Tuning methods: prompt inits, LoRA maths, trainable/frozen split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prompt_tuning import methods, trainer as trainer_lib
from prompt_tuning.models import layers, t5


def tiny(seed=0, **kw):
  return t5.T5(t5.get_config("tiny", **kw), rngs=nnx.Rngs(seed))


def batch(seed=0, b=4, s=9, t=3):
  r = np.random.RandomState(seed)
  return {"inputs": r.randint(3, 256, (b, s)).astype(np.int32),
          "targets": r.randint(3, 256, (b, t)).astype(np.int32)}


def test_prompt_init_vocab_samples_first_5000_ids():
  emb = np.random.RandomState(0).normal(size=(8000, 16)).astype(np.float32)
  p = methods.init_prompt(methods.MethodConfig(prompt_length=100), emb)
  assert p.shape == (100, 16)
  # Every row is an embedding row among the first 5000 ids, none from the tail.
  d_head = ((p[:, None, :] - emb[None, :5000]) ** 2).sum(-1).min(1)
  d_tail = ((p[:, None, :] - emb[None, 5000:]) ** 2).sum(-1).min(1)
  assert np.all(d_head == 0) and np.all(d_tail > 0)
  assert len({tuple(r) for r in p}) == 100  # sampled without replacement


def test_prompt_init_class_labels_text_uniform():
  emb = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
  tok = {"yes": [3], "no": [4, 6], "hello world": [7, 8, 9]}.__getitem__
  p = methods.init_prompt(methods.MethodConfig(prompt_length=5, prompt_init="class_labels",
                                               class_labels=("yes", "no")), emb, tok)
  np.testing.assert_array_equal(p[0], emb[3])
  np.testing.assert_array_equal(p[1], (emb[4] + emb[6]) / 2)
  p = methods.init_prompt(methods.MethodConfig(prompt_length=4, prompt_init="text",
                                               prompt_init_text="hello world"), emb, tok)
  np.testing.assert_array_equal(p[:3], emb[[7, 8, 9]])
  u = methods.init_prompt(methods.MethodConfig(prompt_length=300, prompt_init="uniform"), emb)
  assert u.min() >= -0.5 and u.max() <= 0.5 and u.std() > 0.2
  with pytest.raises(ValueError, match="longer than prompt_length"):
    methods.init_prompt(methods.MethodConfig(prompt_length=2, prompt_init="text",
                                             prompt_init_text="hello world"), emb, tok)


@pytest.mark.parametrize("kw,msg", [
    (dict(name="adapterz"), "unknown tuning method"),
    (dict(prompt_init="zeros"), "unknown prompt_init"),
    (dict(prompt_length=0), "prompt_length must be positive"),
    (dict(name="lora", lora_targets=("qq",)), "unknown lora_targets"),
    (dict(name="layers"), "needs `layers`"),
])
def test_bad_method_config(kw, msg):
  with pytest.raises(ValueError, match=msg):
    methods.MethodConfig(**kw)


def test_prompt_is_prepended_with_mask():
  m = tiny()
  b = batch()
  dec = jnp.zeros((4, 3), jnp.int32)
  mask = jnp.ones((4, 9), jnp.int32)
  prompt = np.random.RandomState(1).normal(size=(5, 64)).astype(np.float32)
  m.set_prompt(prompt)
  enc, enc_mask = m.encode(b["inputs"], mask)
  assert enc.shape == (4, 14, 64) and enc_mask.shape == (4, 14)
  # Same as passing the prompt explicitly per example (mixed-task path).
  per_example = np.broadcast_to(prompt, (4, 5, 64))
  m2 = tiny()
  np.testing.assert_allclose(m2(b["inputs"], mask, dec, prompts=per_example),
                             m(b["inputs"], mask, dec), atol=1e-5)
  # The prompt changes the output.
  assert np.abs(np.asarray(m2(b["inputs"], mask, dec)) - np.asarray(m(b["inputs"], mask, dec))).max() > 1e-3


def test_lora_starts_at_base_model_and_matches_merged_weights():
  base = tiny()
  m = tiny()
  cfg = methods.MethodConfig(name="lora", lora_rank=3, lora_alpha=6.0)
  methods.apply(m, cfg)
  b = batch()
  dec = jnp.zeros((4, 3), jnp.int32)
  mask = jnp.ones((4, 9), jnp.int32)
  np.testing.assert_allclose(m(b["inputs"], mask, dec), base(b["inputs"], mask, dec), atol=1e-6)
  # Set B to random values and compare with explicitly merged weights W + (alpha/r) A B.
  n = 0
  rng = np.random.RandomState(0)
  for path, mod in nnx.iter_modules(m):
    if isinstance(mod, layers.DenseGeneral) and mod.lora_a is not None:
      mod.lora_b.set_value(jnp.asarray(rng.normal(size=mod.lora_b.shape) * 0.1, jnp.float32))
      a, bb = np.asarray(mod.lora_a[...]), np.asarray(mod.lora_b[...])
      merged = np.asarray(mod.kernel[...]) + 2.0 * np.tensordot(a, bb, axes=1)
      tgt = base
      for p in path:
        tgt = tgt[p] if isinstance(p, int) else getattr(tgt, p)
      tgt.kernel.set_value(jnp.asarray(merged))
      n += 1
  # encoder: 2 blocks x (q,k,v,o + wi_0,wi_1,wo); decoder: 2 x (2 x q,k,v,o + 3 MLP matrices).
  assert n == 2 * (4 + 3) + 2 * (8 + 3)
  np.testing.assert_allclose(m(b["inputs"], mask, dec), base(b["inputs"], mask, dec),
                             atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg,expect", [
    (methods.MethodConfig(prompt_length=7), lambda m: 7 * 64),
    (methods.MethodConfig(name="full"), lambda m: None),
    (methods.MethodConfig(name="layers", layers=("decoder.blocks.1",)), lambda m: None),
])
def test_only_trainable_params_get_state(cfg, expect):
  m = tiny()
  total = methods.count_params(nnx.state(m, nnx.Param))
  methods.apply(m, cfg)
  tr = trainer_lib.Trainer(m, cfg)
  st = tr.init_state()
  n_train = methods.count_params(st.params)
  if expect(m) is not None:
    assert n_train == expect(m)
  if cfg.name == "full":
    assert n_train == total and tr.num_frozen == 0
  if cfg.name == "layers":
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(st.params)]
    assert paths and all(p.startswith("decoder.blocks.1.") for p in paths)
    assert tr.num_frozen + n_train == total
  # Optimizer state is only as large as the trainable params (adafactor: <= 2x + counters).
  assert methods.count_params(st.opt_state) <= 2 * n_train + 8
  # Frozen leaves are the model's own arrays, not copies.
  frozen_ids = {id(x) for x in jax.tree.leaves(tr.frozen)}
  assert len(frozen_ids) == len(jax.tree.leaves(tr.frozen))


def test_layer_prefix_that_matches_nothing():
  m = tiny()
  cfg = methods.MethodConfig(name="layers", layers=("decoder.blocks.9",))
  with pytest.raises(ValueError, match="matches no parameter"):
    methods.split(m, cfg)


def test_last_k_blocks():
  m = tiny()
  cfg = methods.MethodConfig(name="layers", last_k_blocks=1)
  _, tr, fr = methods.split(m, cfg)
  paths = {".".join(map(str, p)).split(".")[0] + "." + ".".join(map(str, p)).split(".")[2]
           for p, _ in nnx.to_flat_state(tr)}
  assert paths == {"encoder.1", "decoder.1"}
