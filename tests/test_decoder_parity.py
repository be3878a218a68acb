"""Decoder-only models: parity with transformers' GPT2LMHeadModel and LlamaForCausalLM."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from prompt_tuning.models import convert, decoder  # noqa: E402


def hf_gpt2(tmp_path):
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  m = transformers.GPT2LMHeadModel(cfg).eval()
  with torch.no_grad():  # non-trivial layer norms and biases
    for n, p in m.named_parameters():
      if "ln" in n or n.endswith("bias"):
        p.add_(torch.randn_like(p) * 0.1)
  m.save_pretrained(tmp_path / "gpt2")
  return m, str(tmp_path / "gpt2")


def hf_llama(tmp_path, kv_heads):
  torch.manual_seed(1)
  cfg = transformers.LlamaConfig(vocab_size=103, hidden_size=48, intermediate_size=80,
                                 num_hidden_layers=2, num_attention_heads=6,
                                 num_key_value_heads=kv_heads, max_position_embeddings=64,
                                 rope_theta=500.0, tie_word_embeddings=False)
  m = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():
    for n, p in m.named_parameters():
      if "norm" in n:
        p.uniform_(0.5, 1.5)
  path = tmp_path / f"llama{kv_heads}"
  m.save_pretrained(path)
  return m, str(path)


def tokens(vocab, b=3, n=10):
  r = np.random.RandomState(0)
  ids = r.randint(3, vocab, (b, n))
  mask = np.ones((b, n), np.int64)
  mask[1, 6:] = 0
  return ids, mask


def compare(hf, ours, vocab):
  ids, mask = tokens(vocab)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], ref[valid], atol=1e-4, rtol=0)
  assert np.std(ref) > 1e-3


def test_gpt2_logits(tmp_path):
  hf, path = hf_gpt2(tmp_path)
  ours = convert.load(path)
  assert ours.cfg.flavour == "gpt2" and ours.cfg.tie_word_embeddings
  compare(hf, ours, 101)


@pytest.mark.parametrize("kv_heads", [6, 2, 1])  # MHA, GQA, MQA
def test_llama_logits(tmp_path, kv_heads):
  hf, path = hf_llama(tmp_path, kv_heads)
  ours = convert.load(path)
  assert ours.cfg.kv_heads == kv_heads and ours.cfg.rope_theta == 500.0
  compare(hf, ours, 103)


def test_greedy_generation_matches(tmp_path):
  hf, path = hf_llama(tmp_path, 2)
  ours = convert.load(path)
  ids = np.random.RandomState(3).randint(3, 103, (2, 7))
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids), max_new_tokens=6, do_sample=False,
                      num_beams=1, eos_token_id=None, pad_token_id=0).numpy()[:, 7:]
  got = jax.jit(decoder.greedy_generate, static_argnums=(3,))(
      ours, jnp.asarray(ids), jnp.array([7, 7]), 6)
  np.testing.assert_array_equal(np.asarray(got), ref)


def test_too_long_sequence_is_rejected():
  from flax import nnx
  m = decoder.DecoderLM(decoder.get_config("tiny-llama", max_position_embeddings=8),
                        rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
    m(jnp.ones((1, 9), jnp.int32))
