"""Packing on the model side (issue 10.3): several examples in one row, attention confined to each
segment, T5 position buckets / learned positions / RoPE restarting per segment. On every family a
packed row gives each example exactly the logits and loss it has alone; soft prompts refuse."""
import numpy as np
import pytest

from prompt_tuning import methods, optim
from prompt_tuning.data.pipeline import DECODER_ONLY, ENCODER_DECODER, pack_rows
from tests.helpers import make_trainer, tiny_model

FAMILIES = ["tiny", "tiny-bart", "tiny-gpt2", "tiny-llama"]
RNG = np.random.RandomState(0)
EXAMPLES = [(RNG.randint(3, 250, n_in), np.append(RNG.randint(3, 250, n_t), 1))
            for n_in, n_t in ((5, 2), (9, 3), (3, 1))]


def unpacked(model, inp, tgt):
  if model.cfg.is_encoder_decoder:
    dec = np.concatenate([[model.cfg.decoder_start_token_id], tgt[:-1]])
    return np.asarray(model(inp[None], np.ones((1, len(inp)), np.int32), dec[None]))[0]
  seq = np.concatenate([inp, tgt])
  return np.asarray(model(seq[None]))[0]


@pytest.mark.parametrize("preset", FAMILIES)
def test_packed_row_equals_each_example_alone(preset):
  m = tiny_model(preset)
  if m.cfg.is_encoder_decoder:
    b = pack_rows([EXAMPLES], ENCODER_DECODER, {"inputs": 24, "targets": 10})
    from prompt_tuning.trainer import shift_right
    dec = np.asarray(shift_right(b["targets"], m.cfg.decoder_start_token_id,
                                 b["target_segment_ids"]))
    out = np.asarray(m(b["inputs"], b["input_mask"], dec, **{
        k: b[k] for k in ("input_segment_ids", "input_positions", "target_segment_ids",
                          "target_positions")}))[0]
    at = 0
    for inp, tgt in EXAMPLES:
      np.testing.assert_allclose(out[at:at + len(tgt)], unpacked(m, inp, tgt), atol=2e-5)
      at += len(tgt)
  else:
    b = pack_rows([EXAMPLES], DECODER_ONLY, {"tokens": 32})
    out = np.asarray(m(b["tokens"], segment_ids=b["segment_ids"], positions=b["positions"]))[0]
    at = 0
    for inp, tgt in EXAMPLES:
      n = len(inp) + len(tgt)
      np.testing.assert_allclose(out[at:at + n], unpacked(m, inp, tgt), atol=2e-5)
      at += n


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("name", ["lora", "full", "layers"])
def test_packed_loss_is_the_token_weighted_loss_of_the_examples(preset, name):
  kw = {"last_k": 1} if name == "layers" else {}
  tr = make_trainer(methods.make(name, **kw), optim.OptimizerConfig(name="sgd",
                                                                    learning_rate=0.1),
                    preset=preset)
  params = tr.init_state().params
  dec_only = not tr.cfg.is_encoder_decoder
  packed = pack_rows([EXAMPLES], DECODER_ONLY if dec_only else ENCODER_DECODER,
                     {"tokens": 32} if dec_only else {"inputs": 24, "targets": 10})
  loss, aux = tr.loss(params, tr.frozen, tr.place(packed))
  total, count = 0.0, 0.0
  for inp, tgt in EXAMPLES:
    one = {"inputs": inp[None], "targets": tgt[None]}
    l1, a1 = tr.loss(params, tr.frozen, tr.place(one))
    total += float(l1) * float(a1["tokens"])
    count += float(a1["tokens"])
  assert float(aux["tokens"]) == count
  np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)
  st, aux = tr.train_step(tr.init_state(), packed)   # and a packed step trains
  assert np.isfinite(float(aux["loss"]))


def test_soft_prompts_refuse_packed_rows():
  tr = make_trainer(methods.make("prompt", length=4))
  packed = pack_rows([EXAMPLES], ENCODER_DECODER, {"inputs": 24, "targets": 10})
  with pytest.raises(ValueError, match="cannot be combined with packed sequences"):
    tr.train_step(tr.init_state(), packed)
