"""Sweeps (few-shot seeds, sweep values) and their mean/std summary."""
import glob
import json
import os

import numpy as np
import pytest

from prompt_tuning.run import sweep as sweep_lib
from prompt_tuning.default_config import get_config


def small(out):
  c = get_config()
  c.unlock()
  c.output_dir = str(out)
  c.method.prompt.length = 4
  c.data.update(num_train=32, num_eval=16)
  c.train.update(batch_size=8, num_steps=3, log_every=3, eval_every=3, checkpoint_every=3,
                 eval_batch_size=16)
  c.lock()
  return c


def test_sweep_runs_and_summarizes(tmp_path):
  runs = [dict(name="k8_seed0", group="k8", seed=0), dict(name="k8_seed1", group="k8", seed=1),
          {"name": "len6", "method.prompt.length": 6}]
  res = sweep_lib.sweep(small(tmp_path), runs)
  assert res["runs"] == ["k8_seed0", "k8_seed1", "len6"]
  rows = [json.loads(l) for l in open(tmp_path / "results.jsonl")]
  losses = [r["eval"]["synthetic_sentiment"]["loss"] for r in rows[:2]]
  assert losses[0] != losses[1]  # different seeds, different runs
  s = res["summary"]["k8"]["synthetic_sentiment/loss"]
  assert s["n"] == 2 and s["mean"] == pytest.approx(np.mean(losses))
  assert s["std"] == pytest.approx(np.std(losses))
  assert rows[2]["trainable_params"] == 6 * 96   # d_model of the shipped T5
  assert json.load(open(tmp_path / "summary.json")) == res["summary"]
  # Every run logged TensorBoard scalars.
  assert len(glob.glob(str(tmp_path / "*" / "tensorboard" / "events.out.tfevents.*"))) == 3
  # Every run's overrides are checked before the first run trains.
  with pytest.raises(ValueError, match="unknown sweep override key 'method.nope'"):
    sweep_lib.sweep(small(tmp_path / "bad"), [{"name": "ok", "seed": 1},
                                              {"name": "x", "method.nope": 1}])
  with pytest.raises(ValueError, match=r"sweep override train.num_steps=1000.0: "):
    sweep_lib.sweep(small(tmp_path / "bad"), [{"name": "y", "train.num_steps": 1e3}])
  assert not os.path.exists(tmp_path / "bad" / "ok")


def test_shipped_configs_load_and_sweeps_are_well_formed():
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for fn in sorted(glob.glob(os.path.join(root, "configs", "*.py"))):
    spec = importlib.util.spec_from_file_location("cfg", fn)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for run in getattr(mod, "get_sweep", lambda: [])():
      run = dict(run)
      run.pop("name"), run.pop("group", None), run.pop("tags", None)
      sweep_lib.apply_overrides(c, run)  # raises on an unknown key
  spec = importlib.util.spec_from_file_location("pc", os.path.join(root, "configs", "peft_comparison.py"))
  pc = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(pc)
  names = [r["name"] for r in pc.get_sweep()]
  assert "wmt14_ende_prompt600" in names and "mlsum_lora128" in names and "mlsum_full" in names
