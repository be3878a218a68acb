"""The critical-layer study: the sweep config lists one run per layer of the tiny default model,
and the analysis turns a (tiny) finished sweep into a table and a plot."""
import csv
import importlib.util
import os

import numpy as np

from prompt_tuning.analysis import critical_layers, sparse
from prompt_tuning.run import sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_config():
  spec = importlib.util.spec_from_file_location(
      "critical_layers_cfg", os.path.join(ROOT, "configs", "critical_layers.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_sweep_lists_one_run_per_layer_and_method():
  mod = sweep_config()
  runs = mod.get_sweep()
  layers = ["encoder.layers.0", "encoder.layers.1", "decoder.layers.0", "decoder.layers.1"]
  assert [r["name"] for r in runs] == [f"{m}_{l}" for l in layers for m in ("layers", "mask")]
  for r in runs:
    method = r["method.name"]
    assert r[f"method.{method}.paths"] == (r["name"].split("_", 1)[1],)
  assert mod.get_config().method.mask.sparsity == mod.SPARSITY


def test_layer_angle_is_the_angle_of_the_concatenated_weights():
  pre = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 0.0, 1.0])}
  tuned = {"a": np.array([1.0, 1.0]), "b": np.array([0.0, 0.0, 1.0])}
  rows = sparse.param_distances({"layers": {"0": pre}}, {"layers": {"0": tuned}})
  layer = sparse.per_layer(rows)["layers.0"]
  cos = 2.0 / (np.sqrt(2.0) * np.sqrt(3.0))
  assert abs(layer["angle_deg"] - np.degrees(np.arccos(cos))) < 1e-6


def test_analysis_of_a_tiny_sweep_writes_table_and_plot(tmp_path):
  mod = sweep_config()
  c = mod.get_config()
  c.unlock()
  c.output_dir = str(tmp_path)
  c.data.update(num_train=32, num_eval=16)
  c.train.update(batch_size=8, num_steps=2, log_every=2, eval_every=2, checkpoint_every=2,
                 eval_batch_size=16)
  c.lock()
  runs = [r for r in mod.get_sweep() if r["name"].endswith("decoder.layers.1")]
  sweep_lib.sweep(c, runs)
  table = critical_layers.analyze(c)
  assert [r["layer"] for r in table] == ["decoder.layers.1"]
  row = table[0]
  for k in critical_layers.COLUMNS[2:-1]:   # metric and loss of every setting, distances
    assert row[k] is not None and np.isfinite(row[k]), (k, row)
  assert row["l2"] > 0 and row["sparsity"] == mod.SPARSITY and row["params"] > 0
  with open(tmp_path / "critical_layers.csv") as f:
    rows = list(csv.DictReader(f))
  assert rows[0]["layer"] == "decoder.layers.1" and set(rows[0]) == set(critical_layers.COLUMNS)
  assert "| decoder.layers.1 |" in (tmp_path / "critical_layers.md").read_text()
  png = (tmp_path / "critical_layers.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
