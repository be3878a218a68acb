"""BART: parity with transformers' BartForConditionalGeneration; prompt tuning / LoRA train."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from prompt_tuning import methods, optim, trainer as trainer_lib  # noqa: E402
from prompt_tuning.models import bart, convert, t5  # noqa: E402


@pytest.fixture(scope="module")
def hf_bart(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.BartConfig(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=3,
                                encoder_attention_heads=4, decoder_attention_heads=4,
                                encoder_ffn_dim=40, decoder_ffn_dim=48, max_position_embeddings=64,
                                dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
  m = transformers.BartForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    m.final_logits_bias.normal_(0, 0.5)
    for n, p in m.named_parameters():
      if "layer_norm" in n or "layernorm" in n:
        p.add_(torch.randn_like(p) * 0.1)
  path = tmp_path_factory.mktemp("bart") / "ckpt"
  m.save_pretrained(path)
  return m, str(path)


def inputs():
  r = np.random.RandomState(0)
  ids = r.randint(3, 99, (3, 12))
  mask = np.ones((3, 12), np.int64)
  mask[2, 8:] = 0
  ids[2, 8:] = 1
  dec = r.randint(3, 99, (3, 5))
  dec[:, 0] = 2
  return ids, mask, dec


def test_logits_match(hf_bart):
  hf, path = hf_bart
  ours = convert.load(path)
  assert isinstance(ours, bart.Bart)
  ids, mask, dec = inputs()
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             decoder_input_ids=torch.tensor(dec))
  enc, _ = ours.encode(jnp.asarray(ids), jnp.asarray(mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(enc)[valid], ref.encoder_last_hidden_state.numpy()[valid],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(ours(ids, mask, dec)), ref.logits.numpy(), atol=1e-4, rtol=0)


def test_greedy_decoding_with_cache_matches(hf_bart):
  hf, path = hf_bart
  ours = convert.load(path)
  ids, mask, _ = inputs()
  dec = torch.full((3, 1), 2, dtype=torch.long)
  with torch.no_grad():
    for _ in range(8):
      logits = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  decoder_input_ids=dec, use_cache=False).logits
      dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], 1)
  ref = dec.numpy()[:, 1:]
  got = np.asarray(jax.jit(t5.greedy_decode, static_argnums=(3,))(ours, ids, mask, 8))
  for r, g in zip(ref, got):
    r = list(r)
    n = r.index(2) + 1 if 2 in r else len(r)
    assert list(g[:n]) == r[:n]


@pytest.mark.parametrize("name", ["prompt", "lora"])
def test_tuning_methods_on_bart(name):
  m = bart.Bart(bart.get_config("tiny-bart"), rngs=nnx.Rngs(0))
  mc = methods.MethodConfig(name=name, prompt_length=6)
  methods.apply(m, mc)
  opt = None if name == "prompt" else optim.OptimizerConfig(name="adamw", learning_rate=3e-3)
  tr = trainer_lib.Trainer(m, mc, opt)
  r = np.random.RandomState(0)
  batch = {"inputs": r.randint(3, 256, (8, 10)), "targets": np.tile([[7, 8, 1]], (8, 1))}
  st = tr.init_state()
  losses = []
  for _ in range(25):
    st, aux = tr.train_step(st, batch)
    losses.append(float(aux["loss"]))
  # Random-init BART (std 0.02, layer-normed outputs) has near-uniform logits that a prompt can
  # only nudge; LoRA changes the weights and moves faster.
  assert losses[-1] < (0.999 if name == "prompt" else 0.9) * losses[0], losses
  assert all(b <= a + 1e-4 for a, b in zip(losses, losses[1:])), losses
  assert tr.trace_counts["train"] == 1
  assert tr.decode(st.params, batch, 3).shape == (8, 3)
