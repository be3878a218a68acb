"""Tuning methods: the registry, configs that validate themselves, prompt inits, LoRA through the
Dense.adapter hook on every family, layer selection by stack, and the trainable/frozen split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prompt_tuning import methods, trainer as trainer_lib
from prompt_tuning.methods import prompt
from prompt_tuning.models import core
from tests.helpers import tiny_model

FAMILIES = ["tiny", "tiny-bart", "tiny-gpt2", "tiny-llama"]


def batch(seed=0, b=4, s=9, t=3):
  r = np.random.RandomState(seed)
  return {"inputs": r.randint(3, 256, (b, s)).astype(np.int32),
          "targets": r.randint(3, 256, (b, t)).astype(np.int32)}


def logits(m, b):
  if m.cfg.is_encoder_decoder:
    return np.asarray(m(b["inputs"], np.ones_like(b["inputs"]), b["targets"]))
  return np.asarray(m(b["inputs"], np.ones_like(b["inputs"])))


def test_registry_and_config_sections():
  assert set(methods.REGISTRY) >= {"prompt", "lora", "full", "layers"}
  d = methods.defaults()
  assert d["prompt"]["length"] == 100 and d["prompt"]["init"] == "vocab"
  assert d["lora"]["rank"] == 4 and d["full"] == {}
  assert methods.describe(methods.make("lora", rank=8, seed=3)) == {
      "name": "lora", "seed": 3, "rank": 8, "alpha": 8.0, "targets": ("q", "k", "v", "o", "mlp"),
      "paths": (), "rslora": False}


@pytest.mark.parametrize("name,kw,msg", [
    ("adapterz", {}, "unknown tuning method"),
    ("prompt", dict(init="zeros"), "unknown prompt init"),
    ("prompt", dict(length=0), "length must be positive"),
    ("prompt", dict(lenght=5), r"unknown prompt option\(s\) \['lenght'\]"),
    ("prompt", dict(init="class_labels"), "needs class_labels"),
    ("lora", dict(targets=("qq",)), "unknown lora targets"),
    ("lora", dict(rank=0), "rank must be positive"),
    ("dora", dict(targets=("qq",)), "unknown dora targets"),
    ("pissa", dict(rank=0), "pissa rank must be positive"),
    ("layers", {}, "needs paths"),
])
def test_bad_method_config(name, kw, msg):
  with pytest.raises(ValueError, match=msg):
    methods.make(name, **kw)


def test_prompt_init_vocab_samples_first_5000_ids():
  emb = np.random.RandomState(0).normal(size=(8000, 16)).astype(np.float32)
  p = prompt.init_prompt(methods.make("prompt", length=100), emb)
  assert p.shape == (100, 16)
  d_head = ((p[:, None, :] - emb[None, :5000]) ** 2).sum(-1).min(1)
  d_tail = ((p[:, None, :] - emb[None, 5000:]) ** 2).sum(-1).min(1)
  assert np.all(d_head == 0) and np.all(d_tail > 0)
  assert len({tuple(r) for r in p}) == 100  # sampled without replacement


def test_prompt_init_class_labels_text_uniform():
  emb = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
  tok = {"yes": [3], "no": [4, 6], "hello world": [7, 8, 9]}.__getitem__
  p = prompt.init_prompt(methods.make("prompt", length=5, init="class_labels",
                                      class_labels=("yes", "no")), emb, tok)
  np.testing.assert_array_equal(p[0], emb[3])
  np.testing.assert_array_equal(p[1], (emb[4] + emb[6]) / 2)
  p = prompt.init_prompt(methods.make("prompt", length=4, init="text",
                                      init_text="hello world"), emb, tok)
  np.testing.assert_array_equal(p[:3], emb[[7, 8, 9]])
  u = prompt.init_prompt(methods.make("prompt", length=300, init="uniform"), emb)
  assert u.min() >= -0.5 and u.max() <= 0.5 and u.std() > 0.2
  with pytest.raises(ValueError, match="longer than the prompt length"):
    prompt.init_prompt(methods.make("prompt", length=2, init="text", init_text="hello world"),
                       emb, tok)


@pytest.mark.parametrize("preset", FAMILIES)
def test_prompt_is_prepended_and_per_example_prompts_agree(preset):
  m, m2 = tiny_model(preset), tiny_model(preset)
  b = batch()
  p = np.random.RandomState(1).normal(size=(5, 64)).astype(np.float32)
  m.set_prompt(p)
  per_example = np.broadcast_to(p, (4, 5, 64))
  if m.cfg.is_encoder_decoder:
    enc, seg = m.encode(b["inputs"], np.ones((4, 9), np.int32))
    assert enc.shape == (4, 14, 64) and seg.shape == (4, 14)
    other = np.asarray(m2(b["inputs"], np.ones((4, 9), np.int32), b["targets"],
                          prompts=per_example))
  else:
    other = np.asarray(m2(b["inputs"], np.ones((4, 9), np.int32), prompts=per_example))
  np.testing.assert_allclose(other, logits(m, b), atol=1e-5)
  assert np.abs(logits(m2, b) - logits(m, b)).max() > 1e-3   # the prompt changes the output


def _count_dense(m, roles):
  return sum(isinstance(mod, core.Dense) and mod.role in roles for _, mod in nnx.iter_modules(m))


@pytest.mark.parametrize("preset", FAMILIES)
def test_lora_targets_every_family_by_role_and_matches_merged_weights(preset):
  """One rule reaches attention (self and cross) and the MLP of every family, BART's included."""
  base, m = tiny_model(preset), tiny_model(preset)
  cfg = methods.make("lora", rank=3, alpha=6.0)
  methods.attach(m, cfg)
  b = batch()
  np.testing.assert_allclose(logits(m, b), logits(base, b), atol=1e-6)   # B = 0 at start
  adapters = [(p, mod) for p, mod in nnx.iter_modules(m)
              if isinstance(mod, core.Dense) and mod.adapter is not None]
  assert len(adapters) == _count_dense(m, {"q", "k", "v", "o", "mlp_in", "mlp_out"})
  assert any("mlp" in ".".join(map(str, p)) for p, _ in adapters)
  rng = np.random.RandomState(0)
  for path, dense in adapters:   # random B; compare with explicitly merged W + (alpha/r) A B
    dense.adapter.b.set_value(jnp.asarray(rng.normal(size=dense.adapter.b.shape) * 0.1,
                                          jnp.float32))
    target = base
    for p in path:
      target = target[p] if isinstance(p, int) else getattr(target, p)
    target.kernel.set_value(dense.kernel[...] + dense.adapter.delta(dense))
  np.testing.assert_allclose(logits(m, b), logits(base, b), atol=2e-4, rtol=1e-4)


def test_lora_target_subset():
  m = tiny_model("tiny-bart")
  methods.attach(m, methods.make("lora", targets=("mlp",)))
  roles = {mod.role for _, mod in nnx.iter_modules(m)
           if isinstance(mod, core.Dense) and mod.adapter is not None}
  assert roles == {"mlp_in", "mlp_out"}


def test_lora_targets_by_path_and_role():
  """Paths narrow the roles to places (the adapter plumbing shared with ia3 and mask)."""
  m = tiny_model("tiny-bart")
  methods.attach(m, methods.make("lora", targets=("q", "v"), paths=("decoder.layers.1",
                                                                    "encoder.layers.0.attn")))
  got = sorted(".".join(map(str, p)) for p, mod in nnx.iter_modules(m)
               if isinstance(mod, core.Dense) and mod.adapter is not None)
  assert got == ["decoder.layers.1.attn.q", "decoder.layers.1.attn.v",
                 "decoder.layers.1.cross_attn.q", "decoder.layers.1.cross_attn.v",
                 "encoder.layers.0.attn.q", "encoder.layers.0.attn.v"], got
  with pytest.raises(ValueError, match="lora path 'decoder.layers.9' matches no q/v projection"):
    methods.attach(tiny_model("tiny-bart"), methods.make("lora", targets=("q", "v"),
                                                         paths=("decoder.layers.9",)))


@pytest.mark.parametrize("preset", FAMILIES)
def test_layers_last_k_selects_the_last_layer_of_every_stack(preset):
  m = tiny_model(preset)
  _, tr, _ = methods.split(m, methods.make("layers", last_k=1))
  heads = {tuple(p[:3]) for p, _ in nnx.to_flat_state(tr)}
  want = {("encoder", "layers", 1), ("decoder", "layers", 1)} if m.cfg.is_encoder_decoder \
      else {("decoder", "layers", 1)}
  assert heads == want


def test_layer_prefix_that_matches_nothing():
  with pytest.raises(ValueError, match="matches no pre-trained weight"):
    methods.split(tiny_model(), methods.make("layers", paths=("decoder.layers.9",)))


@pytest.mark.parametrize("cfg,expect", [
    (methods.make("prompt", length=7), 7 * 64),
    (methods.make("full"), None),
    (methods.make("layers", paths=("decoder.layers.1",)), None),
])
def test_only_trainable_params_get_state(cfg, expect):
  m = tiny_model()
  total = methods.count_params(nnx.state(m, nnx.Param))
  methods.attach(m, cfg)
  tr = trainer_lib.Trainer(m, cfg)
  st = tr.init_state()
  n_train = methods.count_params(st.params)
  if expect is not None:
    assert n_train == expect
  if cfg.name == "full":
    assert n_train == total and tr.num_frozen == 0
  if cfg.name == "layers":
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(st.params)]
    assert paths and all(p.startswith("decoder.layers.1.") for p in paths)
    assert tr.num_frozen + n_train == total
  # Optimizer state is only as large as the trainable params (adafactor: <= 2x + counters).
  assert methods.count_params(st.opt_state) <= 2 * n_train + 8
  # Frozen leaves are the model's own arrays, not copies.
  frozen_ids = {id(x) for x in jax.tree.leaves(tr.frozen)}
  assert len(frozen_ids) == len(jax.tree.leaves(tr.frozen))


def test_init_state_is_pure():
  """Calling init_state twice gives equal, independent states (the step donates its input)."""
  m = tiny_model()
  cfg = methods.make("lora")
  methods.attach(m, cfg)
  tr = trainer_lib.Trainer(m, cfg)
  a = tr.init_state()
  b = tr.init_state()
  a, _ = tr.train_step(a, batch())
  b, _ = tr.train_step(b, batch())   # would fail with "buffer has been donated" if shared
  c = tr.init_state()
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_export_names_the_trainable_state():
  m = tiny_model()
  cfg = methods.make("prompt", length=3)
  methods.attach(m, cfg)
  tr = trainer_lib.Trainer(m, cfg)
  out = methods.get("prompt").export(m, tr.init_state().params, cfg)
  assert list(out) == ["prompt"] and out["prompt"].shape == (3, 64)
  m = tiny_model()
  cfg = methods.make("lora", targets=("q",))
  methods.attach(m, cfg)
  tr = trainer_lib.Trainer(m, cfg)
  out = methods.get("lora").export(m, tr.init_state().params, cfg)
  assert "encoder.layers.0.attn.q.adapter.a" in out and len(out) == 2 * (2 + 4)


def test_per_task_state_is_the_methods_to_declare():
  """What the run layer asks a method instead of comparing its name: the task ids its batches
  carry, and whether runs of it can share a mixed-task batch."""
  prompt, lora = methods.get("prompt"), methods.get("lora")
  assert prompt.task_names(methods.make("prompt", tasks=("a", "b"))) == ("a", "b")
  assert lora.task_names(methods.make("lora")) == ()
  single = methods.make("prompt", length=4)
  prompt.check_mixable(single, single.options())
  with pytest.raises(ValueError, match="prompt length 5; this config has 4"):
    prompt.check_mixable(single, dict(single.options(), length=5))
  with pytest.raises(ValueError, match="method 'lora' changes the shared model"):
    lora.check_mixable(methods.make("lora"), {})
