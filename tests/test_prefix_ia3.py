"""Prefix tuning and (IA)^3 against PEFT on the same weights (float32 logits within 1e-4, every
family PEFT supports), and cached greedy decoding with a prefix."""
import copy

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from prompt_tuning import methods, models  # noqa: E402
from prompt_tuning.methods import prefix as prefix_lib  # noqa: E402
from tests.helpers import tiny_model  # noqa: E402
from tests.test_parity import batch, make_hf  # noqa: E402

# T5 v1.1 has 2 encoder / 3 decoder layers (PEFT then needs num_layers=3, and its seq2seq layer
# slots 0, 2, 1 are a real permutation); Mistral's window hides far prefix keys in transformers.
PREFIX_CASES = ["t5_v1_1", "t5_v1_0", "bart", "gpt2", "llama_gqa", "mistral_window"]
# Our targets for PEFT's default IA3 modules of each model_type (see methods/ia3.py).
IA3_TARGETS = {"t5": ("k", "v", "mlp_out"), "mt5": ("k", "v", "mlp_out"),
               "bart": ("q", "v", "mlp_out"), "gpt2": ("q", "k", "v", "mlp_out"),
               "llama": ("k", "v", "mlp_out")}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("hf"))
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = make_hf(name, root)
    model, path = cache[name]
    return copy.deepcopy(model), path
  return get


def logits(m, ids, mask, dec):
  return np.asarray(m(ids, mask, dec) if m.cfg.is_encoder_decoder else m(ids, mask))


def compare(pm, ours, path):
  """(max |ours - PEFT|, max |ours - the model without the method|) over real tokens."""
  ids, mask, dec = batch(ours.cfg.vocab_size, None)
  with torch.no_grad():
    if ours.cfg.is_encoder_decoder:
      dec = np.concatenate([np.zeros((len(dec), 1), dec.dtype), dec[:, :-1]], 1)
      ref = pm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               decoder_input_ids=torch.tensor(dec)).logits.numpy()
      real = np.ones(ref.shape[:2], bool)
    else:
      ref = pm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
      real = mask.astype(bool)
  got = logits(ours, ids, mask, dec)
  plain = logits(models.load(path), ids, mask, dec)
  return np.abs(got - ref)[real].max(), np.abs(got - plain)[real].max()


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("name", PREFIX_CASES)
def test_prefix_matches_peft(hf_models, name, projection):
  hf, path = hf_models(name)
  ours = models.load(path)
  seq2seq = ours.cfg.is_encoder_decoder
  n = len(ours.decoder.layers)
  hidden = 24 if projection else 0
  pm = peft.get_peft_model(hf, peft.PrefixTuningConfig(
      task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM", num_virtual_tokens=4, num_layers=n,
      prefix_projection=projection, encoder_hidden_size=hidden or None)).eval()
  # PEFT prefixes the decoder's self-attention only: stacks=("decoder",).
  cfg = methods.make("prefix", length=4, stacks=("decoder",), projection=projection,
                     projection_hidden=hidden)
  methods.attach(ours, cfg)
  weights = {k.split("prompt_encoder.default.")[1]: v.detach().numpy()
             for k, v in pm.named_parameters() if "prompt_encoder" in k}
  prefix_lib.from_peft_encoder(ours, cfg, weights, seq2seq)
  err, moved = compare(pm, ours, path)
  assert err <= 1e-4, err
  assert moved > 1e-2   # not vacuous: the prefix moves the logits far more than the tolerance


def test_peft_seq2seq_layer_slots():
  assert prefix_lib.peft_layer_slots(3, True) == [0, 2, 1]
  assert prefix_lib.peft_layer_slots(4, True) == [0, 2, 0, 2]
  assert prefix_lib.peft_layer_slots(3, False) == [0, 1, 2]


@pytest.mark.parametrize("name", ["t5_v1_1", "mt5", "bart", "gpt2", "llama_gqa"])
def test_ia3_matches_peft(hf_models, name):
  hf, path = hf_models(name)
  ours = models.load(path)
  seq2seq = ours.cfg.is_encoder_decoder
  pm = peft.get_peft_model(hf, peft.IA3Config(
      task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM")).eval()   # PEFT's default targets
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():   # away from the ones init, so every vector matters
    for k, p in pm.named_parameters():
      if "ia3_l" in k:
        p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen))
  cfg = methods.make("ia3", targets=IA3_TARGETS[hf.config.model_type])
  methods.attach(ours, cfg)
  methods.get("ia3").from_peft(ours, cfg, {}, {k: v.detach().numpy()
                                               for k, v in pm.named_parameters() if "ia3_l" in k})
  err, moved = compare(pm, ours, path)
  assert err <= 1e-4, err
  assert moved > 1e-3


def test_ia3_starts_at_the_pretrained_model_and_scales_by_role():
  m, base = tiny_model("tiny-llama"), tiny_model("tiny-llama")
  methods.attach(m, methods.make("ia3"))
  ids = np.random.RandomState(0).randint(3, 256, (2, 7))
  np.testing.assert_allclose(np.asarray(m(ids)), np.asarray(base(ids)), atol=1e-6)
  layer = m.decoder.layers[0]
  assert layer.attn.k.adapter.scale.shape == layer.attn.k.out_shape
  assert layer.mlp.wo.adapter.scale.shape == layer.mlp.wo.in_shape    # the activation
  assert layer.attn.q.adapter is None and layer.mlp.wi_0.adapter is None


@pytest.mark.parametrize("name,kw,msg", [
    ("prefix", dict(length=0), "length must be positive"),
    ("prefix", dict(stacks=("middle",)), "unknown prefix stacks"),
    ("prefix", dict(init="vocab"), "unknown prefix init"),
    ("ia3", dict(targets=("mlp",)), "unknown ia3 targets"),
])
def test_bad_config(name, kw, msg):
  with pytest.raises(ValueError, match=msg):
    methods.make(name, **kw)


def test_prefix_needs_the_decoder_of_a_decoder_only_model():
  with pytest.raises(ValueError, match="must include 'decoder'"):
    methods.attach(tiny_model("tiny-gpt2"), methods.make("prefix", stacks=("encoder",)))


def _uncached_greedy(m, ids, mask, steps):
  """Greedy decoding by full forward passes (no cache) on fixed shapes: one compiled call."""
  b = len(ids)
  if m.cfg.is_encoder_decoder:   # causal decoder: later (zero) entries do not matter
    fwd = jax.jit(lambda m, dec: m(ids, mask, dec))
    dec = np.zeros((b, steps), np.int32)
    dec[:, 0] = m.cfg.decoder_start_token_id
    out = np.zeros((b, steps), np.int32)
    for t in range(steps):
      out[:, t] = np.asarray(fwd(m, dec))[:, t].argmax(-1)
      if t + 1 < steps:
        dec[:, t + 1] = out[:, t]
    return out
  fwd = jax.jit(lambda m, seq, real: m(seq, real))
  n = mask.sum(1)
  seq = np.zeros((b, ids.shape[1] + steps), np.int32)
  seq[:, :ids.shape[1]] = ids * mask
  out = np.zeros((b, steps), np.int32)
  for t in range(steps):
    real = (np.arange(seq.shape[1])[None] < (n + t)[:, None]).astype(np.int32)
    out[:, t] = np.asarray(fwd(m, seq, real))[np.arange(b), n + t - 1].argmax(-1)
    seq[np.arange(b), n + t] = out[:, t]
  return out


@pytest.mark.parametrize("preset,scan", [("tiny", False), ("tiny-bart", True),
                                         ("tiny-gpt2", False), ("tiny-llama", True)])
def test_prefix_greedy_decoding_equals_uncached(preset, scan):
  m = tiny_model(preset, scan_layers=scan)
  methods.attach(m, methods.make("prefix", length=5, projection=False, init_std=0.5))
  rng = np.random.RandomState(0)
  ids = rng.randint(3, 256, (3, 7))
  mask = np.ones_like(ids)
  mask[1, 4:] = 0
  ids[1, 4:] = 0
  got = np.asarray(jax.jit(models.greedy_decode, static_argnums=(3,))(m, ids, mask, 6))
  want = _uncached_greedy(m, ids, mask, 6)
  eos = m.cfg.eos_token_id
  for g, w in zip(got, want):
    n = list(w).index(eos) + 1 if eos in w else len(w)
    assert list(g[:n]) == list(w[:n]), (got, want)


def test_prefix_export_is_the_computed_prefix():
  from tests.helpers import make_trainer
  cfg = methods.make("prefix", length=3, projection_hidden=16)
  tr = make_trainer(cfg, preset="tiny-bart")
  params = tr.init_state().params
  out = methods.get("prefix").export(tr.model(params), params, cfg)
  assert sorted(out) == ["decoder.k", "decoder.v", "encoder.k", "encoder.v"]
  assert out["decoder.k"].shape == (2, 3, 4, 16)
  assert tr.num_trainable == 2 * (3 * 64 + 64 * 16 + 16 + 16 * 2 * 2 * 64 + 2 * 2 * 64)


def test_prefix_with_packed_sequences_equals_unpacked():
  """Every packed segment sees the whole prefix, at positions 0..P-1 of its own."""
  rng = np.random.RandomState(0)
  a, b = rng.randint(3, 256, 5), rng.randint(3, 256, 4)
  run = jax.jit(lambda m, args, kw: m(*args, **kw))   # one compile per shape, no eager dispatch
  m = tiny_model("tiny-llama")
  methods.attach(m, methods.make("prefix", length=3, projection=False, init_std=0.5))
  seq = np.stack([np.concatenate([a, b]), np.concatenate([b, a])])   # one packed row, and
  seg = np.array([[1] * 5 + [2] * 4, [1] * 4 + [2] * 5])              # the same two examples
  pos = np.array([list(range(5)) + list(range(4)), list(range(4)) + list(range(5))])
  packed = np.asarray(run(m, (seq,), dict(segment_ids=seg, positions=pos)))
  alone = np.asarray(run(m, (np.stack([a[:4], b]), np.array([[1] * 4, [1] * 4])), {}))
  np.testing.assert_allclose(packed[0, :4], alone[0], atol=1e-4)   # a's first 4 tokens
  np.testing.assert_allclose(packed[0, 5:], alone[1], atol=1e-4)   # b after a
  np.testing.assert_allclose(packed[1, :4], alone[1], atol=1e-4)   # b first
  m = tiny_model("tiny")
  methods.attach(m, methods.make("prefix", length=3, projection=False, init_std=0.5))
  packed = np.asarray(run(m, (np.concatenate([a, b])[None], None,
                              np.concatenate([b[:3], a[:3]])[None]),
                          dict(input_segment_ids=np.array([[1] * 5 + [2] * 4]),
                               input_positions=np.array([list(range(5)) + list(range(4))]),
                               target_segment_ids=np.array([[1] * 3 + [2] * 3]),
                               target_positions=np.array([[0, 1, 2, 0, 1, 2]]))))[0]
  enc = np.stack([a, np.concatenate([b, [0]])])
  enc_mask = np.array([[1] * 5, [1] * 4 + [0]])
  alone = np.asarray(run(m, (enc, enc_mask, np.stack([b[:3], a[:3]])), {}))
  np.testing.assert_allclose(packed[:3], alone[0], atol=1e-4)
  np.testing.assert_allclose(packed[3:], alone[1], atol=1e-4)
