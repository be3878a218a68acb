"""The scaling sweep trains a data-size x prompt-length grid and writes table, fits and plot."""
import csv
import json
import os

from prompt_tuning.analysis import scaling_sweep
from prompt_tuning.default_config import get_config


def test_scaling_sweep_writes_table_fits_and_plot(tmp_path):
  c = get_config()
  c.unlock()
  c.data.num_eval = 16
  c.train.update(batch_size=8, num_steps=4, log_every=4, eval_every=4, checkpoint_every=4,
                 eval_batch_size=16)
  c.lock()
  out = str(tmp_path / "scaling")
  res = scaling_sweep.run(c, [16, 64], "method.prompt.length", [4, 12], out)
  rows = list(csv.DictReader(open(os.path.join(out, "scaling_table.csv"))))
  assert len(rows) == 4
  assert sorted((int(r["D"]), int(r["method.prompt.length"])) for r in rows) == [
      (16, 4), (16, 12), (64, 4), (64, 12)]
  assert {int(r["trainable_params"]) for r in rows} == {4 * 96, 12 * 96}
  fits = json.load(open(os.path.join(out, "scaling_fits.json")))
  assert set(fits) == {"multiplicative", "additive"}
  assert all(v["objective"] >= 0 for v in fits.values())
  assert os.path.getsize(os.path.join(out, "scaling.png")) > 2000
  assert res["rows"][0]["loss"] > 0
