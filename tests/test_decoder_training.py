"""Prompt tuning, LoRA and full tuning on decoder-only models (GPT-2 and Llama flavours)."""
import jax
import numpy as np
import pytest
from flax import nnx

from prompt_tuning import methods, optim, trainer as trainer_lib
from prompt_tuning.models import decoder
from tests.helpers import sentiment_data, vocab


def test_sequence_is_inputs_then_targets_with_target_only_loss():
  b = trainer_lib.complete_batch({"inputs": np.array([[5, 6, 7, 0], [8, 0, 0, 0]]),
                                  "targets": np.array([[9, 1, 0], [10, 11, 1]])}, 0)
  out = trainer_lib.to_decoder_only(b)
  np.testing.assert_array_equal(out["tokens"], [[5, 6, 7, 9, 1, 0, 0], [8, 10, 11, 1, 0, 0, 0]])
  np.testing.assert_array_equal(out["loss_weights"], [[0, 0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(out["token_mask"], [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0]])


def make(preset, method, opt=None, seed=0):
  m = decoder.DecoderLM(decoder.get_config(preset), rngs=nnx.Rngs(seed))
  methods.apply(m, method)
  return trainer_lib.Trainer(m, method, opt)


def test_loss_counts_only_target_tokens():
  tr = make("tiny-llama", methods.MethodConfig(name="lora"))
  ds = sentiment_data(16)
  b = ds.train_batch(0, 8)
  placed = tr._place(b)
  _, aux = tr._loss(tr.init_state().params, tr.frozen, placed, None)
  assert float(aux["tokens"]) == float((b["targets"] > 0).sum())


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("name,opt", [
    ("lora", optim.OptimizerConfig(name="adamw", learning_rate=3e-3)),
    ("full", optim.OptimizerConfig(name="adamw", learning_rate=1e-3)),
    ("prompt", None)])
def test_methods_train_on_decoder_only(preset, name, opt):
  ds = sentiment_data(256)
  mc = methods.MethodConfig(name=name, prompt_length=10)
  tr = make(preset, mc, opt)
  st = tr.init_state()
  p0 = jax.tree.map(np.array, st.params)
  losses = []
  for i in range(40):
    st, aux = tr.train_step(st, ds.train_batch(i, 32))
    losses.append(float(aux["loss"]))
  assert tr.trace_counts["train"] == 1
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(st.params)))
  first, last = np.mean(losses[:3]), np.mean(losses[-5:])
  # LoRA / full learn the label words quickly; a prompt on a random frozen model moves slower.
  assert last < (0.8 if name != "prompt" else 0.99) * first, (first, last)
  pred = tr.decode(st.params, {"inputs": ds.arrays["inputs"][:4]}, 6)
  assert pred.shape == (4, 6)
