"""Numerical parity of our Flax T5 with transformers' PyTorch T5 on the same weights."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from prompt_tuning.models import convert, t5  # noqa: E402

VARIANTS = {
    "v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def make_hf(tmp_path, variant, seed=0, save_bin=False):
  torch.manual_seed(seed)
  cfg = transformers.T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                              num_decoder_layers=3, num_heads=4, relative_attention_num_buckets=8,
                              relative_attention_max_distance=20, dropout_rate=0.0,
                              decoder_start_token_id=0, **VARIANTS[variant])
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  # Make layer norms non-trivial so their weights are checked too.
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "layer_norm" in n:
        p.uniform_(0.5, 1.5)
  path = str(tmp_path / variant)
  model.save_pretrained(path)
  if save_bin:  # a PyTorch state dict, as older checkpoints ship (transformers 5 writes none).
    os.remove(os.path.join(path, "model.safetensors"))
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    torch.save(sd, os.path.join(path, "pytorch_model.bin"))
  return model, path


def inputs(seed=0, b=3, s=11, t=6, vocab=97):
  rng = np.random.RandomState(seed)
  ids = rng.randint(2, vocab, size=(b, s))
  mask = np.ones((b, s), np.int64)
  mask[1, 7:] = 0  # padded example
  ids[1, 7:] = 0
  dec = rng.randint(2, vocab, size=(b, t))
  dec[:, 0] = 0
  return ids, mask, dec


@pytest.mark.parametrize("variant", ["v1_0", "v1_1"])
def test_logits_and_encoder_match(tmp_path, variant):
  hf, path = make_hf(tmp_path, variant)
  ours = convert.load_t5(path)
  assert ours.cfg.scale_decoder_outputs == (variant == "v1_0")
  ids, mask, dec = inputs()
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             decoder_input_ids=torch.tensor(dec))
  enc, _ = ours.encode(jnp.asarray(ids), jnp.asarray(mask))
  logits = ours(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(enc)[valid], ref.encoder_last_hidden_state.numpy()[valid],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), atol=1e-4, rtol=0)
  # The comparison is not vacuous: logits differ across positions and examples.
  assert np.std(ref.logits.numpy()) > 1e-2


def test_pytorch_bin_checkpoint(tmp_path):
  hf, path = make_hf(tmp_path, "v1_1", seed=3, save_bin=True)
  assert os.path.exists(os.path.join(path, "pytorch_model.bin"))
  ours = convert.load_t5(path)
  ids, mask, dec = inputs(1)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             decoder_input_ids=torch.tensor(dec)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours(ids, mask, dec)), ref, atol=1e-4, rtol=0)


def test_untied_legacy_v1_1_head(tmp_path):
  """transformers-4 style v1.1 checkpoints carry a separate lm_head and no output scaling."""
  hf, path = make_hf(tmp_path, "v1_1", seed=1)
  from safetensors.numpy import load_file, save_file
  sd = load_file(os.path.join(path, "model.safetensors"))
  head = np.random.RandomState(0).normal(size=sd["shared.weight"].shape).astype(np.float32)
  sd["lm_head.weight"] = head
  save_file(sd, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json")) as f:
    c = json.load(f)
  c.pop("scale_decoder_outputs")
  c["tie_word_embeddings"] = False
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(c, f)
  ours = convert.load_t5(path)
  assert not ours.cfg.tie_word_embeddings and not ours.cfg.scale_decoder_outputs
  ids, mask, dec = inputs(2)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             decoder_input_ids=torch.tensor(dec), output_hidden_states=True)
  ref = out.decoder_hidden_states[-1].numpy() @ head.T
  np.testing.assert_allclose(np.asarray(ours(ids, mask, dec)), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["v1_0", "v1_1"])
def test_greedy_decoding_matches(tmp_path, variant):
  hf, path = make_hf(tmp_path, variant, seed=5)
  ours = convert.load_t5(path)
  ids, mask, _ = inputs(4)
  max_len = 12
  # Reference: greedy decoding with full (cache-free) PyTorch forward passes.
  dec = torch.zeros((ids.shape[0], 1), dtype=torch.long)
  with torch.no_grad():
    for _ in range(max_len):
      logits = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  decoder_input_ids=dec, use_cache=False).logits
      dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
  ref = dec.numpy()[:, 1:]
  got = np.asarray(jax.jit(t5.greedy_decode, static_argnums=(3,))(ours, ids, mask, max_len))
  for r, g in zip(ref, got):
    r = list(r)
    n = r.index(1) + 1 if 1 in r else len(r)
    assert list(g[:n]) == r[:n]
  assert got.shape == (3, max_len)


def test_missing_checkpoint_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.load_t5(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    convert.load_t5(str(tmp_path / "empty"))
  _, path = make_hf(tmp_path, "v1_0")
  os.remove(os.path.join(path, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="no weights"):
    convert.load_t5(path)
