"""Every method's PEFT form, through the method contract (``to_peft`` / ``from_peft``): prefix
tuning, (IA)^3, DoRA, rsLoRA and PiSSA adapters that ``peft.PeftModel.from_pretrained`` loads on
the transformers model with logits equal to ours (float32, 1e-4), adapters PEFT made loading as a
run's initial state, and PiSSA's / DoRA's initialisation equal to PEFT's."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from flax import nnx  # noqa: E402

from prompt_tuning import interop, methods, models  # noqa: E402
from tests.test_interop import (CASES, SEQ2SEQ, assert_close, batch, hf_dirs,  # noqa: E402,F401
                                our_logits, torch_logits)

FAMILIES = ["t5", "bart", "gpt2", "llama"]
TASK = {n: "SEQ_2_SEQ_LM" if n in SEQ2SEQ else "CAUSAL_LM" for n in FAMILIES}
# PEFT module names for our default LoRA targets (q, k, v, o, mlp).
LORA_MODULES = {"t5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
                "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                "gpt2": ["c_attn", "c_proj", "c_fc"],
                "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                          "down_proj"]}


def tuned(path, name, seed=1, scale=0.2, **opts):
  """A model with method ``name`` attached and its variables moved as if trained."""
  model = models.load(path)
  cfg = methods.make(name, **opts)
  methods.attach(model, cfg)
  rng = np.random.RandomState(seed)
  for _, v in nnx.to_flat_state(nnx.state(model, methods.get(name).trainable(model, cfg))):
    v.set_value(v[...] + jnp.asarray(rng.normal(size=v.shape).astype(np.float32) * scale))
  return model, cfg


def peft_logits(path, name, out, ids, mask, dec):
  """(logits of PEFT's model with the adapter ``out``, logits of the plain base)."""
  base = CASES[name][0].from_pretrained(path).eval()
  plain = torch_logits(base, name, ids, mask, dec)
  pm = peft.PeftModel.from_pretrained(base, out).eval()
  return torch_logits(pm, name, ids, mask, dec), plain


def check_export(hf_dirs, tmp_path, name, method, **opts):
  """Exports a tuned ``method`` run, loads it in PEFT, compares; returns (model, cfg, config,
  max error)."""
  path = hf_dirs[name]
  model, cfg = tuned(path, method, **opts)
  out = str(tmp_path / method)
  interop.export_peft(model, cfg, out, base_model=path)
  config = json.load(open(os.path.join(out, "adapter_config.json")))
  ids, mask, dec = batch(5)
  ref, plain = peft_logits(path, name, out, ids, mask, dec)
  got = our_logits(model, ids, mask, dec)
  assert_close(name, got, ref, mask)
  assert np.abs(ref - plain).max() > 1e-2   # the adapter moves the logits: not vacuous
  real = np.ones(got.shape[:2], bool) if name in SEQ2SEQ else mask.astype(bool)
  err = float(np.abs(got - ref)[real].max())
  print(f"PEFT parity {method} {name}: max |ours - PEFT| = {err:.1e}")
  return model, cfg, out, config, err


def same_state(a, b, cfg, atol=1e-6):
  f = methods.get(cfg.name).trainable(a, cfg)
  want, got = (dict(nnx.to_flat_state(nnx.state(m, f))) for m in (a, b))
  assert set(want) == set(got)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k][...]), np.asarray(want[k][...]), atol=atol,
                               err_msg=str(k))


# ----------------------------------------------------------------------------- prefix, IA3
@pytest.mark.parametrize("name", FAMILIES)
def test_prefix_export_and_back(hf_dirs, tmp_path, name):
  # Trained through the MLP (as Li & Liang); PEFT's file holds the computed keys/values.
  model, cfg, out, config, _ = check_export(
      hf_dirs, tmp_path, name, "prefix", scale=0.5, length=3, stacks=("decoder",),
      projection_hidden=16)
  assert config["peft_type"] == "PREFIX_TUNING" and not config["prefix_projection"]
  n = len(model.decoder.layers)
  assert config["num_layers"] == (2 * n if name in SEQ2SEQ else n)
  fresh = models.load(hf_dirs[name])
  direct = cfg.replace(projection=False)
  methods.attach(fresh, direct)
  interop.init_from(fresh, direct, out)
  for ours, theirs in zip(model.decoder.kv_prefix(), fresh.decoder.kv_prefix()):
    np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), atol=1e-6)
  with pytest.raises(ValueError, match="start from it with method.prefix.projection=False"):
    interop.init_from(model, cfg, out)


def test_prefix_of_the_encoder_has_no_peft_form(hf_dirs, tmp_path):
  model, cfg = tuned(hf_dirs["t5"], "prefix", length=2, projection=False)
  with pytest.raises(ValueError, match="PEFT's prefix tuning prefixes the decoder only"):
    interop.export_peft(model, cfg, str(tmp_path / "x"))


@pytest.mark.parametrize("name,targets", [
    ("t5", ("k", "v", "mlp_out")), ("bart", ("q", "v", "mlp_out")),
    ("gpt2", ("q", "v", "o", "mlp_out")), ("llama", ("k", "v", "mlp_in", "mlp_out"))])
def test_ia3_export_and_back(hf_dirs, tmp_path, name, targets):
  model, cfg, out, config, _ = check_export(hf_dirs, tmp_path, name, "ia3", scale=0.3,
                                            targets=targets)
  assert config["peft_type"] == "IA3" and config["feedforward_modules"]
  fresh = models.load(hf_dirs[name])
  methods.attach(fresh, cfg)
  interop.init_from(fresh, cfg, out)
  same_state(model, fresh, cfg)


# ----------------------------------------------------------------------------- DoRA, rsLoRA
@pytest.mark.parametrize("name", FAMILIES)
def test_dora_export_and_back(hf_dirs, tmp_path, name):
  model, cfg, out, config, _ = check_export(hf_dirs, tmp_path, name, "dora", rank=2, alpha=6.0,
                                            targets=("q", "v", "mlp"))
  assert config["use_dora"] is True and config["peft_type"] == "LORA"
  fresh = models.load(hf_dirs[name])
  methods.attach(fresh, cfg.replace(seed=4))
  interop.init_from(fresh, cfg, out)
  same_state(model, fresh, cfg, atol=1e-5)
  # A merged checkpoint holds m * (W + sAB) / ||W + sAB||.
  ids, mask, dec = batch(6)
  interop.export_merged(model, str(tmp_path / "merged"))
  assert_close(name, our_logits(models.load(str(tmp_path / "merged")), ids, mask, dec),
               our_logits(model, ids, mask, dec), mask)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_dora_made_by_peft_matches(hf_dirs, tmp_path, name):
  """PEFT's DoRA (use_dora=True) on the same weights: its initial magnitude is our ||W|| (norm
  per output over the inputs), and its trained adapter gives our logits."""
  path = hf_dirs[name]
  torch.manual_seed(0)
  pm = peft.get_peft_model(CASES[name][0].from_pretrained(path).eval(), peft.LoraConfig(
      task_type=TASK[name], r=2, lora_alpha=4, lora_dropout=0.0, use_dora=True,
      target_modules=LORA_MODULES[name], fan_in_fan_out=name == "gpt2")).eval()
  ours = models.load(path)
  cfg = methods.make("dora", rank=2, alpha=4.0)
  methods.attach(ours, cfg)
  initial = {k: v.detach().numpy().copy() for k, v in pm.named_parameters() if "magnitude" in k}
  with torch.no_grad():   # as if trained
    for k, p in pm.named_parameters():
      if "lora_" in k:
        p.add_(torch.randn_like(p) * 0.2)
  out = str(tmp_path / "dora")
  pm.save_pretrained(out)
  # The initial magnitudes: PEFT's (before training) equal ours.
  mags = {k.split("base_model.model.")[1].split(".lora_magnitude_vector")[0]: v
          for k, v in initial.items()}
  _, by_path, _ = interop.peft_format.sites(ours)
  for p, d in methods.get("dora").adapters(ours).items():
    site, j = by_path[p]
    full = mags[site.name].reshape(-1)
    n = full.size // len(site.parts)
    np.testing.assert_allclose(np.asarray(d.adapter.magnitude[...]).reshape(-1),
                               full[j * n:(j + 1) * n], rtol=1e-5)
  interop.init_from(ours, cfg, out)
  ids, mask, dec = batch(7)
  assert_close(name, our_logits(ours, ids, mask, dec), torch_logits(pm, name, ids, mask, dec),
               mask)


@pytest.mark.parametrize("name", ["bart", "gpt2"])
def test_rslora_export(hf_dirs, tmp_path, name):
  model, cfg, out, config, _ = check_export(hf_dirs, tmp_path, name, "lora", rank=4, alpha=2.0,
                                            rslora=True, targets=("q", "k", "v", "mlp"))
  assert config["use_rslora"] is True and config["r"] == 4 and config["lora_alpha"] == 2
  adapter = model.decoder.layers[0].attn.q.adapter
  assert adapter.scale == pytest.approx(2.0 / 2.0)   # alpha / sqrt(rank)


# ----------------------------------------------------------------------------- PiSSA
@pytest.mark.parametrize("name", FAMILIES)
def test_pissa_export(hf_dirs, tmp_path, name):
  model, cfg, out, config, _ = check_export(hf_dirs, tmp_path, name, "pissa", scale=0.05,
                                            rank=2, alpha=4.0)
  assert config["r"] == 4 and config["lora_alpha"] == 8   # PEFT's conversion: rank 2r, same s
  with pytest.raises(ValueError, match="a pissa run starts from its SVD"):
    interop.init_from(model, cfg, out)


@pytest.mark.parametrize("name", ["t5", "llama"])
def test_pissa_init_equals_peft(hf_dirs, name):
  """PEFT's init_lora_weights='pissa': the same residual kernels and the same s B A (the
  factors themselves agree up to the signs of singular vectors). Two float32 SVDs (LAPACK via
  torch and via XLA) agree to ~1e-5 where singular values lie close."""
  path = hf_dirs[name]
  pm = peft.get_peft_model(CASES[name][0].from_pretrained(path).eval(), peft.LoraConfig(
      task_type=TASK[name], r=2, lora_alpha=4, lora_dropout=0.0, init_lora_weights="pissa",
      target_modules=LORA_MODULES[name])).eval()
  ours = models.load(path)
  methods.attach(ours, methods.make("pissa", rank=2, alpha=4.0))
  mods = dict(pm.named_modules())
  _, by_path, _ = interop.peft_format.sites(ours)
  adapters = methods.get("pissa").adapters(ours)
  assert adapters
  err = 0.0
  for p, d in adapters.items():
    m = mods["base_model.model." + by_path[p][0].name]
    w = m.base_layer.weight.detach().numpy().T   # [in, out]
    delta = (m.lora_B["default"].weight @ m.lora_A["default"].weight).detach().numpy().T
    err = max(err, np.abs(np.asarray(d.kernel[...]).reshape(w.shape) - w).max(),
              np.abs(np.asarray(d.adapter.delta(d)).reshape(w.shape)
                     - delta * m.scaling["default"]).max())
  print(f"PiSSA init {name}: max |ours - PEFT| over residuals and s B A = {err:.1e}")
  assert err < 1e-4
  ids, mask, dec = batch(8)
  assert_close(name, our_logits(ours, ids, mask, dec), torch_logits(pm, name, ids, mask, dec),
               mask)
