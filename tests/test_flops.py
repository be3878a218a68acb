"""Throughput logging: the model-FLOP count behind TFLOP/s and MFU, and a run's log records."""
import glob
import json
import math

import numpy as np
import pytest
from flax import nnx

from prompt_tuning import flops, models
from prompt_tuning.run import loop
from tests.helpers import preset_config


@pytest.mark.parametrize("preset", ["tiny", "tiny-bart", "tiny-llama", "tiny-gpt2"])
def test_matmul_params_equal_the_models_own_kernels(preset):
  """flops.matmul_params (from the config) against the kernels the model actually holds."""
  model = models.build(models.preset(preset))
  sizes = {"encoder": 0, "decoder": 0}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = [str(p) for p in path]
    if names[-1] == "kernel" and names[0] in sizes and "layers" in names:
      sizes[names[0]] += int(np.prod(v.shape))
  cfg = model.cfg
  assert flops.matmul_params(cfg) == (sizes["encoder"], sizes["decoder"],
                                      cfg.d_model * cfg.vocab_size)


def test_train_step_flops_convention():
  cfg = models.preset("tiny")
  n_enc, n_dec, n_head = flops.matmul_params(cfg)
  frozen = flops.train_step_flops(cfg, 100, 10, 0.0)
  assert frozen == 4 * (n_enc * 100 + (n_dec + n_head) * 10)
  assert flops.train_step_flops(cfg, 100, 10, 1.0) == frozen * 6 / 4


def test_training_logs_tokens_tflops_and_mfu(tmp_path, monkeypatch, capsys):
  peak = 1e9    # a pretend device peak (CPUs have none): MFU = achieved FLOP/s / peak
  monkeypatch.setattr(flops, "peak_flops", lambda: peak)
  written = []
  orig = loop.events_lib.EventWriter.scalars
  monkeypatch.setattr(loop.events_lib.EventWriter, "scalars",
                      lambda self, step, values: written.append((step, dict(values))) or
                      orig(self, step, values))
  c = preset_config()
  c.unlock()
  c.output_dir = str(tmp_path)
  c.method.prompt.length = 4
  c.data.update(num_train=64, num_eval=16)
  c.train.update(batch_size=8, num_steps=6, log_every=3, eval_every=6, checkpoint_every=6,
                 eval_batch_size=16)
  c.lock()
  loop.train(c)
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  logs = [r for r in rows if "loss" in r]
  assert [r["step"] for r in logs] == [3, 6]
  for r in logs:   # both logs time steps after the compiling first one
    assert r["tokens_per_s"] > 0 and r["tflops_per_s"] > 0
    assert math.isclose(r["mfu"], r["tflops_per_s"] * 1e12 / peak, rel_tol=1e-9)
    # FLOPs per real token: the padded batch's FLOPs over its real tokens, for these shapes
    # between the FLOPs of one decoder token and those of a whole padded row.
    per_token = r["tflops_per_s"] * 1e12 / r["tokens_per_s"]
    n_enc, n_dec, n_head = flops.matmul_params(models.preset("tiny"))
    assert 4 * (n_dec + n_head) < per_token < 4 * (n_enc * (48 + 4) + (n_dec + n_head) * 8)
  out = capsys.readouterr().out
  assert "tok/s" in out and "TFLOP/s" in out and "MFU" in out
  tb = {step: v for step, v in written if "train/loss" in v}
  assert set(tb) == {3, 6}
  assert tb[6]["train/mfu"] == logs[1]["mfu"]
  assert tb[6]["train/tokens_per_s"] == logs[1]["tokens_per_s"]
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))


@pytest.mark.parametrize("scope,enc,dec", [("encoder", 16 + 5, 4), ("decoder", 16, 4 + 5),
                                           ("both", 16 + 5, 4 + 5)])
def test_padded_tokens_count_the_prompt_where_it_is_computed(scope, enc, dec):
  from prompt_tuning import methods
  from tests.helpers import make_trainer
  tr = make_trainer(methods.make("prompt", length=5, scope=scope))
  placed = tr.place({"inputs": np.ones((2, 16), np.int32), "targets": np.ones((2, 4), np.int32)})
  assert tr.padded_tokens(placed) == (2 * enc, 2 * dec)
