"""Sharding on 8 CPU devices: (data, fsdp, model) meshes give the single-device loss and updated
parameters, FSDP divides the bytes each device holds, and the axis rules come from the config."""
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prompt_tuning import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
assert jax.device_count() == 8, jax.devices()
from prompt_tuning import methods, models, optim, sharding
from prompt_tuning.trainer import Trainer

def make(mesh, name, opt="sgd"):
  # The tiny preset: d_model 64, 4 heads, d_ff 128, vocab 256 all divide 2 x 2 and 8.
  m = models.build(models.preset("tiny"))
  mc = methods.make(name, **({"length": 6} if name == "prompt" else {}))
  methods.attach(m, mc)
  # SGD: parameters stay a linear function of the gradients, so sharded and single-device runs
  # differ by float32 rounding only (Adam's normalisation would amplify it where grads are ~0).
  return Trainer(m, mc, optim.OptimizerConfig(name=opt, learning_rate=0.1), mesh=mesh)

def per_device_bytes(tree):
  out = {}
  for x in jax.tree.leaves(tree):
    for s in x.addressable_shards:
      out[s.device] = out.get(s.device, 0) + s.data.nbytes
  return max(out.values())

def total_bytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree))

rng = np.random.RandomState(0)
batches = [{"inputs": rng.randint(3, 256, (8, 12)), "targets": rng.randint(3, 256, (8, 5))}
           for _ in range(3)]
refs = {}
for name in ("prompt", "lora", "full"):
  ref = make(None, name)
  s, losses = ref.init_state(), []
  for b in batches:
    s, a = ref.train_step(s, b)
    losses.append(float(a["loss"]))
  refs[name] = (ref, s, losses)

for shape in ((8, 1, 1), (1, 8, 1), (2, 2, 2)):
  t0 = time.time()
  mesh = sharding.make_mesh(shape)
  assert tuple(mesh.shape.values()) == shape and mesh.axis_names == ("data", "fsdp", "model")
  trainers = {}
  for name in ("prompt", "lora", "full"):
    ref, s1, losses = refs[name]
    sh = trainers[name] = make(mesh, name)
    s2 = sh.init_state()
    for b, l1 in zip(batches, losses):
      s2, a2 = sh.train_step(s2, b)
      assert abs(l1 - float(a2["loss"])) < 1e-5, (shape, name, l1, float(a2["loss"]))
    for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)
    assert sh.trace_counts["train"] == 1
    if name == "full":
      w = s2.params["encoder"]["layers"][0]["mlp"]["wi_0"]["kernel"][...]
      assert w.sharding.spec == P("fsdp", "model"), (shape, w.sharding)
      shard = w.addressable_shards[0].data.shape
      assert shard == (64 // mesh.shape["fsdp"], 128 // mesh.shape["model"]), (shape, shard)
  if shape == (2, 2, 2):   # decoding on the mesh gives the same tokens
    ref, s1, _ = refs["full"]
    np.testing.assert_array_equal(ref.decode(s1.params, batches[0], 6),
                                  sh.decode(s2.params, batches[0], 6))
  # Bytes per device: the total over fsdp x model, for full tuning's parameters + AdamW state
  # and for LoRA's frozen weights (what is not split: the relative-position tables, scalars).
  # (The train step keeps the state's shardings: its outputs are pinned to its inputs.)
  split = mesh.shape["fsdp"] * mesh.shape["model"]
  st = make(mesh, "full", "adamw").init_state()
  for what, tree in (("full params + adamw", (st.params, st.opt_state)),
                     ("lora frozen", trainers["lora"].frozen)):
    got, want = per_device_bytes(tree), total_bytes(tree) / split
    assert abs(got / want - 1) < 0.1, (shape, what, got, want)
    print(shape, what, "bytes/device", got, "total/split", int(want))
  print(shape, "mesh done in %.1fs" % (time.time() - t0), flush=True)
print("SHARDING_OK")
"""


@pytest.mark.slow   # ~60 s of CPU: 12 compiled train steps on 8 devices
def test_meshes_match_single_device_and_fsdp_divides_memory():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                     timeout=900, cwd=ROOT)
  assert r.returncode == 0 and "SHARDING_OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_logical_rules():
  rules = sharding.DEFAULT_RULES
  # Activations: the batch takes data and fsdp, so embed stays whole.
  assert sharding.logical_to_spec(("batch", "length", "embed"), rules) == \
      P(("data", "fsdp"), None, None)
  # Weights: embed over fsdp, the wide dimension over model.
  assert sharding.logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "model")
  # A mesh axis is used once per spec.
  assert sharding.logical_to_spec(("mlp", "vocab"), rules) == P("model", None)
  # A later rule of the same name is the fallback when the first one's axes are taken.
  fallback = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("embed", "model"))
  assert sharding.logical_to_spec(("batch", "embed"), fallback) == P(("data", "fsdp"), "model")


def test_mesh_and_rule_errors():
  with pytest.raises(ValueError, match="needs"):
    sharding.make_mesh((3, 5))
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh((-1, -1, 1))
  with pytest.raises(ValueError, match="3 entries"):
    sharding.make_mesh((1, 1, 1, 1))
  # An old 2-entry shape is (data, model), fsdp = 1.
  assert sharding.full_shape((4, 2)) == (4, 1, 2)
  mesh = sharding.make_mesh((-1, 1))
  assert mesh.size >= 1 and mesh.axis_names == ("data", "fsdp", "model")
  assert np.prod(list(mesh.shape.values())) == mesh.size
  with pytest.raises(ValueError, match="names mesh axis"):
    sharding.check_rules((("batch", ("data", "expert")),))
  with pytest.raises(ValueError, match="each rule is"):
    sharding.check_rules((("batch",),))
  with pytest.raises(ValueError, match="positive integers"):
    sharding.check_mesh_config((2, 0, 1), sharding.DEFAULT_RULES)


LOAD_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P
from prompt_tuning import models, sharding
from prompt_tuning.default_config import TINY_T5
whole = models.load(TINY_T5)
mesh = sharding.make_mesh((2, 2, 2))
split = models.load(TINY_T5, mesh=mesh, param_dtype=jnp.bfloat16)
flat = list(zip(nnx.to_flat_state(nnx.state(whole)), nnx.to_flat_state(nnx.state(split))))
for (path, x), (_, y) in flat:
  y = y[...]
  assert y.dtype == jnp.bfloat16 and y.sharding.mesh == mesh, (path, y.dtype)
  np.testing.assert_array_equal(np.asarray(x[...].astype(jnp.bfloat16)), np.asarray(y))
q = dict(nnx.to_flat_state(nnx.state(split)))[("encoder", "layers", 0, "attn", "q", "kernel")][...]
# each device holds only its quarter (fsdp x model) of the kernel
assert q.sharding.spec == P("fsdp", "model", None)
assert q.addressable_shards[0].data.size * 4 == q.size
# A LoRA trainer on an FSDP-loaded model: the host-side parameter norm (the divergence guard's)
# equals the unsharded one (op by op it stalled in XLA:CPU's collectives: global_norm is jitted).
from prompt_tuning import methods
from prompt_tuning.trainer import Trainer, global_norm
norms = []
for mesh in (None, sharding.make_mesh((1, 8, 1))):
  m = models.load(TINY_T5, mesh=mesh)
  mc = methods.make("lora")
  methods.attach(m, mc)
  norms.append(float(global_norm(Trainer(m, mc, mesh=mesh).init_state().params)))
assert abs(norms[0] - norms[1]) < 1e-5 * norms[0], norms
print("LOAD_OK")
"""


def test_sharded_load_equals_whole_load():
  """models.load(mesh=...) puts each checkpoint tensor straight into its sharded layout, in the
  asked dtype, with the values of an unsharded load; a trainer on it works."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-c", LOAD_SCRIPT], env=env, capture_output=True,
                     text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "LOAD_OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
