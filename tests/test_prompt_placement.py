"""Prompt placement (prefix / after_bos / before_eos) and scope (encoder / decoder / both) on
every family, checked against embedded sequences built by hand (a Python loop per row, run
through the models' inputs_embeds entry points), plus cached greedy decoding against an uncached
greedy loop and mixed-task batches against per-task runs."""
import jax
import numpy as np
import pytest

from prompt_tuning import methods, models, trainer as trainer_lib
from prompt_tuning.models import core

BOS, EOS, PAD = 2, 1, 0
D = 64
ENC_DEC = ["tiny", "tiny-bart"]
DEC_ONLY = ["tiny-gpt2", "tiny-llama"]
PLACEMENTS = ["prefix", "after_bos", "before_eos"]


def model(preset, seed=0):
  return models.build(models.preset(preset, bos_token_id=BOS), seed=seed)


def rows(eos_everywhere=False):
  """Right-padded rows: BOS+EOS, no BOS, full length, no EOS (before_eos falls back to the end
  of the real tokens). Returns (ids [4, 10], mask [4, 10])."""
  r = np.random.RandomState(0)
  w = lambda n: list(r.randint(3, 256, n))
  seqs = [[BOS] + w(4) + [EOS], w(3) + [EOS], [BOS] + w(8) + [EOS],
          w(4) + [EOS] if eos_everywhere else w(5)]
  ids = np.zeros((4, 10), np.int32)
  mask = np.zeros((4, 10), np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)] = s
    mask[i, :len(s)] = 1
  return ids, mask


def insertion_point(ids, n, placement):
  """Where the prompt goes in a row with ``n`` real tokens (the documented rules)."""
  if placement == "prefix":
    return 0
  if placement == "after_bos":
    return 1 if n and ids[0] == BOS else 0
  eos = [j for j in range(n) if ids[j] == EOS]
  return eos[0] if eos else n


def by_hand(m, ids, mask, prompt, placement):
  """The embedded sequence with the prompt inserted, its mask, positions and the index of every
  token in it; one row at a time, with plain numpy."""
  emb = np.asarray(m.embed.embedding[...]) * m.cfg.embed_scale
  p = prompt.shape[0]
  xs, ms, where = [], [], []
  for row, mrow in zip(ids, mask):
    at = insertion_point(row, int(mrow.sum()), placement)
    xs.append(np.concatenate([emb[row[:at]], prompt, emb[row[at:]]]))
    ms.append(np.concatenate([mrow[:at], np.ones(p, np.int32), mrow[at:]]))
    where.append([j if j < at else j + p for j in range(len(row))])
  pos = np.broadcast_to(np.arange(ids.shape[1] + p)[None], (len(ids), ids.shape[1] + p))
  return np.stack(xs).astype(np.float32), np.stack(ms), pos, np.asarray(where)


def prompt_for(scope, seed=1, p=3):
  r = np.random.RandomState(seed)
  return r.normal(size=((2 if scope == "both" else 1) * p, D)).astype(np.float32)


def halves(value, scope):
  """(encoder part, decoder part) of a prompt in the layout's order."""
  if scope == "both":
    return value[:len(value) // 2], value[len(value) // 2:]
  return (value, None) if scope == "encoder" else (None, value)


def enc_dec_by_hand(m, ids, mask, dec_in, value, placement, scope):
  enc_p, dec_p = halves(value, scope)
  if enc_p is None:
    x = np.asarray(m.embed(ids)) * m.cfg.embed_scale
    seg, pos = mask, np.broadcast_to(np.arange(ids.shape[1])[None], ids.shape)
  else:
    x, seg, pos, _ = by_hand(m, ids, mask, enc_p, placement)
  enc = m.encode_embedded(x, seg, pos)
  y = np.asarray(m.embed(dec_in)) * m.cfg.embed_scale
  pd = 0 if dec_p is None else len(dec_p)
  if pd:
    y = np.concatenate([np.broadcast_to(dec_p, (len(ids),) + dec_p.shape), y], axis=1)
  t = y.shape[1]
  dpos = np.broadcast_to(np.arange(t)[None], (len(ids), t))
  return np.asarray(m.decode_embedded(y, np.ones((len(ids), t), np.int32), dpos, enc,
                                      seg))[:, pd:]


SCOPES = ("encoder", "decoder", "both")
CASES = ([(f, pl, sc) for f in ENC_DEC for pl in PLACEMENTS for sc in SCOPES]
         + [(f, pl, "encoder") for f in DEC_ONLY for pl in PLACEMENTS])


@pytest.mark.parametrize("preset,placement,scope", CASES)
def test_logits_equal_hand_built_embeddings(preset, placement, scope):
  m = model(preset)
  value = prompt_for(scope)
  m.set_prompt(value, placement=placement, scope=scope)
  ids, mask = rows()
  if m.cfg.is_encoder_decoder:
    dec_in = np.random.RandomState(2).randint(3, 256, (4, 3)).astype(np.int32)
    got = np.asarray(m(ids, mask, dec_in))
    want = enc_dec_by_hand(m, ids, mask, dec_in, value, placement, scope)
  else:
    got = np.asarray(m(ids, mask))
    x, seg, pos, where = by_hand(m, ids, mask, value, placement)
    full = np.asarray(m.forward_embedded(x, seg, pos))
    want = np.take_along_axis(full, where[..., None], axis=1)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # The placement matters: a prefix prompt gives other logits (rows where the point differs).
  if placement != "prefix" and scope != "decoder":
    other = model(preset)
    other.set_prompt(value, scope=scope)
    moved = np.asarray(other(ids, mask, dec_in) if m.cfg.is_encoder_decoder else other(ids, mask))
    assert np.abs(moved - got).max() > 1e-3


def test_insertion_moves_padding_right_and_masks_follow():
  m = model("tiny")
  m.set_prompt(prompt_for("encoder", p=2), placement="before_eos")
  ids, mask = rows()
  _, seg = m.encode(ids, mask)
  seg = np.asarray(seg)
  # Row 0: 5 tokens, the prompt, EOS, then padding; row 3 (no EOS): 5 tokens, then the prompt.
  np.testing.assert_array_equal(seg[0], [1] * 8 + [0] * 4)
  np.testing.assert_array_equal(seg[3], [1] * 7 + [0] * 5)
  np.testing.assert_array_equal(np.asarray(m.prompt_index(ids, mask)), [5, 3, 9, 5])
  m.set_prompt(prompt_for("encoder", p=2), placement="after_bos")
  np.testing.assert_array_equal(np.asarray(m.prompt_index(ids, mask)), [1, 0, 1, 0])


def uncached_greedy(m, ids, mask, steps, prompts=None, task_ids=None):
  """Greedy decoding by re-running the whole (uncached) model every step."""
  b = len(ids)
  out = np.full((b, steps), PAD, np.int32)
  done = np.zeros(b, bool)
  if m.cfg.is_encoder_decoder:
    f = jax.jit(lambda d: m(ids, mask, d, prompts=prompts, task_ids=task_ids))
    dec = np.full((b, steps), PAD, np.int32)
    dec[:, 0] = m.cfg.decoder_start_token_id
    for i in range(steps):
      nxt = np.argmax(np.asarray(f(dec))[:, i], -1)
      nxt = np.where(done, PAD, nxt)
      out[:, i] = nxt
      done |= nxt == EOS
      if i + 1 < steps:
        dec[:, i + 1] = nxt
    return out
  n = mask.sum(1)
  seq = np.zeros((b, ids.shape[1] + steps), np.int32)
  seq[:, :ids.shape[1]] = ids
  f = jax.jit(lambda s, sm: m(s, sm, prompts=prompts, task_ids=task_ids))
  for i in range(steps):
    smask = (np.arange(seq.shape[1])[None] < (n + i)[:, None]).astype(np.int32)
    logits = np.asarray(f(seq, smask))
    nxt = np.argmax(logits[np.arange(b), n + i - 1], -1)
    nxt = np.where(done, PAD, nxt)
    out[:, i] = nxt
    done |= nxt == EOS
    seq[np.arange(b), n + i] = nxt
  return out


GREEDY = [("tiny", "prefix", "both"), ("tiny", "after_bos", "decoder"),
          ("tiny", "before_eos", "both"), ("tiny-bart", "before_eos", "both"),
          ("tiny-gpt2", "after_bos", "encoder"), ("tiny-gpt2", "before_eos", "encoder"),
          ("tiny-llama", "before_eos", "encoder")]


@pytest.mark.parametrize("preset,placement,scope", GREEDY)
def test_cached_greedy_decoding_equals_uncached(preset, placement, scope):
  """The KV cache holds the inserted prompt (decoder-only: in the prefill) and the decoder-side
  prompt (encoder-decoder: before the first generated token)."""
  m = model(preset)
  m.set_prompt(prompt_for(scope), placement=placement, scope=scope)
  if not m.cfg.is_encoder_decoder:
    # Tiny tied GPT-2 repeats its last token (EOS: nothing to compare); smaller embeddings
    # let the layers speak.
    m.embed.embedding.set_value(m.embed.embedding[...] * 0.1)
  # Decoder-only sequences continue after the input's EOS: every input ends with one.
  ids, mask = rows(eos_everywhere=not m.cfg.is_encoder_decoder)
  got = np.asarray(models.greedy_decode(m, ids, mask, 5))
  assert (got[:, 1:] != PAD).sum() >= 4   # rows generate more than one token
  np.testing.assert_array_equal(got, uncached_greedy(m, ids, mask, 5))


@pytest.mark.parametrize("preset,scope", [("tiny", "both"), ("tiny-gpt2", "encoder")])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_mixed_task_batch_equals_per_task_runs(preset, scope, placement):
  """Per-example prompts (what infer_mixed passes) in every placement and scope: decodes and
  logits of a mixed batch equal those of each task's prompt on its own."""
  a, b = prompt_for(scope, seed=1), prompt_for(scope, seed=2)
  m = model(preset)
  m.set_prompt(a, placement=placement, scope=scope)   # the layout; per-call prompts win
  ids, mask = rows(eos_everywhere=True)
  dec = np.random.RandomState(3).randint(3, 256, (4, 3)).astype(np.int32)
  decode = jax.jit(lambda pr: core.greedy_decode(m, ids, mask, 4, prompts=pr))
  logits = jax.jit(lambda pr: m(ids, mask, dec, prompts=pr) if m.cfg.is_encoder_decoder
                   else m(ids, mask, prompts=pr))
  route = np.array([0, 1, 1, 0])
  solo = [np.broadcast_to(v, (4,) + v.shape) for v in (a, b)]

  def per_task(f):   # row i from the run of its own task's prompt
    outs = [np.asarray(f(pr)) for pr in solo]
    return np.stack([outs[r][i] for i, r in enumerate(route)])

  mixed = np.stack([a, b])[route]
  np.testing.assert_array_equal(np.asarray(decode(mixed)), per_task(decode))
  np.testing.assert_allclose(np.asarray(logits(mixed)), per_task(logits), atol=1e-5, rtol=0)
  assert np.abs(np.asarray(logits(solo[0])) - np.asarray(logits(solo[1]))).max() > 1e-3


def test_trainer_decode_with_per_example_prompts_before_eos_both():
  """Trainer.decode(prompts=...) (infer_mixed's path) with an inserted encoder prompt and a
  decoder prompt: the mixed batch equals each prompt's own decode."""
  cfg = methods.make("prompt", length=3, placement="before_eos", scope="both")
  m = model("tiny")
  methods.attach(m, cfg)
  tr = trainer_lib.Trainer(m, cfg)
  params = tr.init_state().params
  ids, mask = rows()
  batch = {"inputs": ids, "input_mask": mask}
  a, b = prompt_for("both", seed=1), prompt_for("both", seed=2)
  route = np.array([1, 0, 0, 1])
  mixed = tr.decode(params, batch, 4, prompts=np.stack([a, b])[route])
  solo = [tr.decode(params, batch, 4, prompts=np.broadcast_to(v, (4,) + v.shape))
          for v in (a, b)]
  np.testing.assert_array_equal(mixed, np.where(route[:, None] == 0, solo[0], solo[1]))


@pytest.mark.parametrize("preset,kw,msg", [
    ("tiny-gpt2", dict(scope="both"), "needs an encoder-decoder model"),
    ("tiny-gpt2", dict(scope="decoder"), "needs an encoder-decoder model"),
    ("tiny-llama", dict(placement="after_bos"), "needs a model with a bos_token_id"),
])
def test_layouts_a_model_cannot_take(preset, kw, msg):
  m = models.build(models.preset(preset))
  with pytest.raises(ValueError, match=msg):
    methods.attach(m, methods.make("prompt", length=2, **kw))


@pytest.mark.parametrize("kw,msg", [
    (dict(placement="middle"), "unknown prompt placement"),
    (dict(scope="cross"), "unknown prompt scope"),
    (dict(combine="mul"), "unknown prompt combine"),
    (dict(tasks=("a", "a")), "distinct"),
    (dict(tasks=("a", "b"), shared_length=3, length=4), "must equal length"),
])
def test_bad_prompt_options(kw, msg):
  with pytest.raises(ValueError, match=msg):
    methods.make("prompt", **kw)


def test_extra_encoder_length_by_scope():
  impl = methods.get("prompt")
  assert impl.extra_encoder_length(methods.make("prompt", length=5)) == 5
  assert impl.extra_encoder_length(methods.make("prompt", length=5, scope="both")) == 5
  assert impl.extra_encoder_length(methods.make("prompt", length=5, scope="decoder")) == 0
  assert impl.extra_encoder_length(methods.make("prompt", length=5, tasks=("a", "b"),
                                                combine="concat", shared_length=2)) == 7


def test_both_scope_prompt_is_initialised_per_stack_in_peft_layout():
  m = model("tiny-bart")
  methods.attach(m, methods.make("prompt", length=4, scope="both"))
  p = np.asarray(m.prompt[...])
  assert p.shape == (8, D) and m.prompt_length == 8
  assert np.abs(p[:4] - p[4:]).max() > 0    # encoder and decoder blocks differ
  single = model("tiny-bart")
  methods.attach(single, methods.make("prompt", length=4))
  np.testing.assert_array_equal(p[:4], np.asarray(single.prompt[...]))  # same encoder block
