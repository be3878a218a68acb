"""Every family against transformers' PyTorch models on the same weights (float32, padded
batches): logits within 1e-4, cached greedy decoding equal to a cache-free PyTorch loop,
scan over layers equal to the unrolled stack, and our HF export loading back in transformers."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from prompt_tuning import models  # noqa: E402
from prompt_tuning.models import core, hf  # noqa: E402

T = transformers
SEQ2SEQ = {"t5", "mt5", "bart"}


def _t5(**kw):
  base = dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
              num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              dropout_rate=0.0, decoder_start_token_id=0)
  return dict(base, **kw)


def _llama(**kw):
  return dict(dict(vocab_size=103, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                   tie_word_embeddings=False), **kw)


def _gpt2(**kw):
  return dict(dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=3, n_head=4,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), **kw)


def _bart(**kw):
  return dict(dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=3,
                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=40,
                   decoder_ffn_dim=48, max_position_embeddings=64, dropout=0.0,
                   attention_dropout=0.0, activation_dropout=0.0), **kw)


# name -> (model class, config class, config kwargs)
CASES = {
    "t5_v1_0": (T.T5ForConditionalGeneration, T.T5Config,
                _t5(feed_forward_proj="relu", tie_word_embeddings=True)),
    "t5_v1_1": (T.T5ForConditionalGeneration, T.T5Config,
                _t5(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "mt5": (T.MT5ForConditionalGeneration, T.MT5Config, _t5()),
    "bart": (T.BartForConditionalGeneration, T.BartConfig, _bart()),
    "bart_scaled_emb_6_heads": (T.BartForConditionalGeneration, T.BartConfig,
                                _bart(scale_embedding=True, decoder_attention_heads=2,
                                      activation_function="relu")),
    "gpt2": (T.GPT2LMHeadModel, T.GPT2Config, _gpt2()),
    "gpt2_unscaled": (T.GPT2LMHeadModel, T.GPT2Config, _gpt2(scale_attn_weights=False)),
    "gpt2_inverse_layer": (T.GPT2LMHeadModel, T.GPT2Config,
                           _gpt2(scale_attn_by_inverse_layer_idx=True)),
    "llama_gqa": (T.LlamaForCausalLM, T.LlamaConfig, _llama(rope_theta=500.0)),
    "llama_mqa_bias": (T.LlamaForCausalLM, T.LlamaConfig,
                       _llama(num_key_value_heads=1, attention_bias=True, mlp_bias=True)),
    "llama3_rope": (T.LlamaForCausalLM, T.LlamaConfig, _llama(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, tie_word_embeddings=True)),
    "llama_linear_rope": (T.LlamaForCausalLM, T.LlamaConfig,
                          _llama(rope_scaling={"rope_type": "linear", "factor": 4.0})),
    "mistral_window": (T.MistralForCausalLM, T.MistralConfig, _llama(sliding_window=5)),
    "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config, _llama()),
    "qwen2_window_layers": (T.Qwen2ForCausalLM, T.Qwen2Config,
                            _llama(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
}


def make_hf(name, root):
  cls, ccls, kw = CASES[name]
  torch.manual_seed(hash(name) % 1000)
  m = cls(ccls(**kw)).eval()
  with torch.no_grad():  # non-trivial norms, biases and final_logits_bias
    for n, p in m.named_parameters():
      if "norm" in n or "ln_" in n or n.endswith("bias") or "layernorm" in n:
        p.add_(torch.randn_like(p) * 0.2)
    if hasattr(m, "final_logits_bias"):
      m.final_logits_bias.normal_(0, 0.5)
  path = os.path.join(root, name)
  m.save_pretrained(path)
  return m, path


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("hf"))
  return {name: make_hf(name, root) for name in CASES}


def batch(vocab, seq2seq, b=3, s=11, t=6, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, size=(b, s))
  mask = np.ones((b, s), np.int64)
  mask[1, 7:] = 0   # a right-padded row
  ids[1, 7:] = 0
  dec = rng.randint(3, vocab, size=(b, t))
  return ids, mask, dec


def reference_logits(hf_model, name, ids, mask, dec):
  with torch.no_grad():
    if CASES[name][1] in (T.T5Config, T.MT5Config, T.BartConfig):
      start = hf_model.config.decoder_start_token_id
      dec = np.concatenate([np.full((len(dec), 1), start), dec[:, :-1]], 1)
      out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     decoder_input_ids=torch.tensor(dec))
      return dec, out.logits.numpy()
    out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return None, out.logits.numpy()


def our_logits(model, ids, mask, dec):
  if model.cfg.is_encoder_decoder:
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec)))
  return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(hf_models, name):
  hf_model, path = hf_models[name]
  ours = models.load(path)
  ids, mask, dec = batch(hf_model.config.vocab_size, None)
  dec_in, ref = reference_logits(hf_model, name, ids, mask, dec)
  got = our_logits(ours, ids, mask, dec_in)
  if ours.cfg.is_encoder_decoder:
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
  else:   # padded positions of a decoder-only model predict nothing: compare real tokens
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-4, rtol=0)
  assert np.std(ref) > 1e-2   # not vacuous


def test_table_rows_are_the_options_they_claim(hf_models):
  """The configs behind the issue's table rows are read as what they are, not defaults."""
  cfg = lambda n: models.load(hf_models[n][1]).cfg
  assert not cfg("mt5").logits_scale and cfg("t5_v1_0").logits_scale
  assert cfg("qwen2").q_bias and not cfg("qwen2").o_bias
  assert cfg("gpt2_unscaled").attn_scale == "none"
  assert cfg("gpt2_inverse_layer").attn_scale_inverse_layer
  assert cfg("mistral_window").sliding_window == 5
  assert cfg("qwen2_window_layers").sliding_layers == (False, True)
  assert dict(cfg("llama3_rope").rope_scaling)["rope_type"] == "llama3"
  assert cfg("bart_scaled_emb_6_heads").decoder_num_heads == 2


def greedy_reference(hf_model, name, ids, mask, steps):
  """Greedy decoding with full, cache-free PyTorch forward passes."""
  with torch.no_grad():
    if CASES[name][1] in (T.T5Config, T.MT5Config, T.BartConfig):
      dec = torch.full((len(ids), 1), hf_model.config.decoder_start_token_id)
      for _ in range(steps):
        logits = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          decoder_input_ids=dec, use_cache=False).logits
        dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], 1)
      return dec.numpy()[:, 1:]
    out = []
    for row, m in zip(ids, mask):
      seq = torch.tensor(row[:m.sum()])[None]
      for _ in range(steps):
        logits = hf_model(input_ids=seq, use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
      out.append(seq.numpy()[0, m.sum():])
    return np.stack(out)


@pytest.mark.parametrize("name", ["t5_v1_1", "mt5", "bart", "gpt2", "llama_gqa",
                                  "mistral_window", "qwen2_window_layers"])
def test_cached_greedy_decoding_matches(hf_models, name):
  hf_model, path = hf_models[name]
  ours = models.load(path)
  ids, mask, _ = batch(hf_model.config.vocab_size, None, seed=4)
  steps = 9
  ref = greedy_reference(hf_model, name, ids, mask, steps)
  got = np.asarray(jax.jit(models.greedy_decode, static_argnums=(3,))(ours, ids, mask, steps))
  eos = ours.cfg.eos_token_id
  for r, g in zip(ref, got):
    r = list(r)
    n = r.index(eos) + 1 if eos in r else len(r)
    assert list(g[:n]) == r[:n], (list(g), r)


@pytest.mark.parametrize("name", ["t5_v1_1", "bart", "gpt2_inverse_layer", "llama_gqa",
                                  "qwen2_window_layers"])
def test_scan_over_layers_equals_unrolled(hf_models, name):
  _, path = hf_models[name]
  ids, mask, dec = batch(90, None, seed=2)
  outs = {}
  for scan in (False, True):
    for remat in ("none", "full"):
      m = models.load(path, scan_layers=scan, remat=remat)
      outs[scan, remat] = our_logits(m, ids, mask, dec)
  # The same maths in another XLA program: float32 rounding, a few ulps of logits up to ~17
  # (atol alone, 1e-5, failed once at 1.0014e-5 on a logit of -4.08: 2.5e-6 relative).
  for k, v in outs.items():
    np.testing.assert_allclose(v, outs[False, "none"], atol=1e-5, rtol=1e-6, err_msg=str(k))
  m = models.load(path, scan_layers=True)
  got = np.asarray(models.greedy_decode(m, ids, mask, 5))
  want = np.asarray(models.greedy_decode(models.load(path), ids, mask, 5))
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["t5_v1_1", "mt5", "bart_scaled_emb_6_heads", "gpt2_inverse_layer",
                                  "llama3_rope", "mistral_window", "qwen2_window_layers"])
def test_saved_checkpoint_loads_in_transformers(hf_models, name, tmp_path):
  hf_model, path = hf_models[name]
  ours = models.load(path)
  out = models.save(ours, str(tmp_path / "export"))
  back = transformers.AutoConfig.from_pretrained(out)
  cls = CASES[name][0]
  reloaded = cls.from_pretrained(out).eval()
  assert back.model_type == hf_model.config.model_type
  ids, mask, dec = batch(hf_model.config.vocab_size, None, seed=3)
  _, a = reference_logits(hf_model, name, ids, mask, dec)
  _, b = reference_logits(reloaded, name, ids, mask, dec)
  np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
  # And our loader reads our export back strictly.
  models.load(out)


def test_untied_legacy_t5_head(hf_models, tmp_path):
  """transformers-4 v1.1 checkpoints carry a separate lm_head (transformers 5 loads it so)."""
  from safetensors.numpy import load_file, save_file
  hf_model, path = hf_models["t5_v1_1"]
  sd = load_file(os.path.join(path, "model.safetensors"))
  sd["lm_head.weight"] = np.random.RandomState(0).normal(
      size=sd["shared.weight"].shape).astype(np.float32)
  new = tmp_path / "legacy"
  new.mkdir()
  save_file(sd, str(new / "model.safetensors"), metadata={"format": "pt"})
  c = json.load(open(os.path.join(path, "config.json")))
  c.pop("scale_decoder_outputs")
  c["tie_word_embeddings"] = False
  json.dump(c, open(new / "config.json", "w"))
  ours = models.load(str(new))
  assert not ours.cfg.tie_word_embeddings and not ours.cfg.logits_scale
  ref_model = T.T5ForConditionalGeneration.from_pretrained(str(new)).eval()
  ids, mask, dec = batch(97, None, seed=5)
  dec_in, ref = reference_logits(ref_model, "t5_v1_1", ids, mask, dec)
  np.testing.assert_allclose(our_logits(ours, ids, mask, dec_in), ref, atol=1e-4, rtol=0)


def test_pytorch_bin_checkpoint(hf_models, tmp_path):
  hf_model, path = hf_models["bart"]
  new = tmp_path / "bin"
  new.mkdir()
  torch.save(hf_model.state_dict(), new / "pytorch_model.bin")
  (new / "config.json").write_text(open(os.path.join(path, "config.json")).read())
  ids, mask, dec = batch(99, None)
  dec_in, ref = reference_logits(hf_model, "bart", ids, mask, dec)
  np.testing.assert_allclose(our_logits(models.load(str(new)), ids, mask, dec_in), ref,
                             atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- strictness
def _copy(path, tmp_path, name="copy"):
  import shutil
  dst = tmp_path / name
  shutil.copytree(path, dst)
  return dst


def test_leftover_tensor_is_refused(hf_models, tmp_path):
  from safetensors.numpy import load_file, save_file
  dst = _copy(hf_models["qwen2"][1], tmp_path)
  sd = load_file(str(dst / "model.safetensors"))
  sd["model.layers.0.self_attn.o_proj.bias"] = np.zeros(48, np.float32)
  save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(hf.CheckpointError, match="does not use.*o_proj.bias"):
    models.load(str(dst))


def test_missing_tensor_and_tied_copy_that_differs(hf_models, tmp_path):
  from safetensors.numpy import load_file, save_file
  dst = _copy(hf_models["gpt2"][1], tmp_path)
  sd = load_file(str(dst / "model.safetensors"))
  sd["lm_head.weight"] = sd["transformer.wte.weight"] + 1
  save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(hf.CheckpointError, match="differs from"):
    models.load(str(dst))
  del sd["lm_head.weight"], sd["transformer.h.0.mlp.c_fc.bias"]
  save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(hf.CheckpointError, match="lacks tensor 'transformer.h.0.mlp.c_fc.bias'"):
    models.load(str(dst))


def test_bare_base_model_names_load_lazily(hf_models, tmp_path, monkeypatch):
  """A bare GPT-2 checkpoint (the official ``gpt2``: no ``transformer.`` prefix, no head) loads
  the same weights, and still one tensor at a time: no name is read twice or before it is
  needed (the renaming is a view, not a copy of every tensor)."""
  from safetensors.numpy import load_file, save_file
  src = hf_models["gpt2"][1]
  dst = _copy(src, tmp_path)
  sd = load_file(str(dst / "model.safetensors"))
  bare = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
  save_file(bare, str(dst / "model.safetensors"), metadata={"format": "pt"})
  reads = []
  real = hf.read_safetensors
  monkeypatch.setattr(hf, "read_safetensors", lambda fn, key=None: reads.append(key) or
                      real(fn, key))
  got = nnx.state(models.load(str(dst)), nnx.Param)
  assert sorted(reads) == sorted(bare) and len(reads) == len(set(reads))
  want = nnx.state(models.load(str(src)), nnx.Param)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name,key,value,msg", [
    ("llama_gqa", "rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "rope type 'yarn'"),
    ("llama_gqa", "some_new_switch", True, "not supported.*some_new_switch"),
    ("gpt2", "add_cross_attention", True, "add_cross_attention"),
    ("bart", "normalize_before", True, "normalize_before"),
    ("mistral_window", "layer_types", ["full_attention", "sliding_attention"], "layer_types"),
    ("t5_v1_1", "model_type", "mbart", "model_type 'mbart' is not supported"),
    ("bart", "model_type", "mbart", "model_type 'mbart' is not supported"),
])
def test_unsupported_config_is_refused_by_name(hf_models, tmp_path, name, key, value, msg):
  dst = _copy(hf_models[name][1], tmp_path)
  c = json.load(open(dst / "config.json"))
  c[key] = value
  if key == "rope_scaling":
    c.pop("rope_parameters", None)
  json.dump(c, open(dst / "config.json", "w"))
  with pytest.raises(hf.CheckpointError, match=msg):
    models.load(str(dst))


def test_mbart_checkpoint_is_refused(tmp_path):
  m = T.MBartForConditionalGeneration(T.MBartConfig(
      vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
      decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
      max_position_embeddings=32))
  m.save_pretrained(tmp_path / "mbart")
  with pytest.raises(hf.CheckpointError, match="mbart"):
    models.load(str(tmp_path / "mbart"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "broken_json", "empty_json"])
def test_unreadable_files_give_one_clear_error(hf_models, tmp_path, damage):
  dst = _copy(hf_models["llama_gqa"][1], tmp_path)
  weights, config = dst / "model.safetensors", dst / "config.json"
  if damage == "truncate":
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
  elif damage == "garbage":
    weights.write_bytes(os.urandom(4096))
  elif damage == "broken_json":
    config.write_text(config.read_text()[:-20])
  else:
    config.write_text("[]")
  with pytest.raises(hf.CheckpointError) as e:
    models.load(str(dst))
  assert "\n" not in str(e.value) and str(dst) in str(e.value)


# ----------------------------------------------------------------------------- attention kernels
def test_cudnn_call_path_on_cpu(hf_models, monkeypatch):
  """attention_impl='cudnn' goes through jax.nn.dot_product_attention (GQA heads, boolean
  masks, T5's bias at full size); on CPU we run that call with the XLA kernel."""
  monkeypatch.setattr(core, "CUDNN_KERNEL", "xla")
  for name in ("t5_v1_1", "llama_gqa", "mistral_window"):
    path = hf_models[name][1]
    ids, mask, dec = batch(90, None, seed=6)
    ref = our_logits(models.load(path), ids, mask, dec)
    xla = our_logits(models.load(path, dtype="bfloat16"), ids, mask, dec)
    fused = our_logits(models.load(path, dtype="bfloat16", attention_impl="cudnn"), ids, mask,
                       dec)
    valid = np.broadcast_to(mask.astype(bool)[..., None], ref.shape) if ref.shape[1] == \
        mask.shape[1] else np.ones(ref.shape, bool)
    err = lambda x: np.abs(x - ref)[valid].max()
    # A wrong mask, bias or head grouping gives errors of the logits' size (~5); bfloat16
    # rounding of either path stays near the XLA path's own error.
    assert err(fused) < 1.5 * err(xla) + 0.05, (name, err(fused), err(xla))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_kernel_on_gpu(hf_models):
  for name in ("t5_v1_1", "llama_gqa"):
    path = hf_models[name][1]
    ids, mask, dec = batch(90, None, seed=6)
    ref = our_logits(models.load(path), ids, mask, dec)
    got = our_logits(models.load(path, dtype="bfloat16", attention_impl="cudnn"), ids, mask, dec)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
