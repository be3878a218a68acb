"""The critical-layer study (Radiya-Dixit & Wang 2020) from a finished sweep such as
configs/critical_layers.py: per layer, the dev metric of tuning that layer alone, its distance
from the pre-trained layer (L2, relative L2, angle), the metric after magnitude sparsification of
that run at fraction s (keep each matrix's s largest changes: analysis/sparse.py), and the metric
of a binary mask learned on that layer that zeroes s of its projection weights (method 'mask').

Reads ``output_dir/results.jsonl`` (one record per run, written by run/sweep.py), writes
``critical_layers.csv``, ``critical_layers.md`` and ``critical_layers.png`` into ``output_dir``.

  python -m prompt_tuning.analysis.critical_layers --config configs/critical_layers.py \\
      [--run_sweep] [--metric accuracy]
"""
from __future__ import annotations

import os

from prompt_tuning.analysis import sparse, tables
from prompt_tuning.run import build as build_lib
from prompt_tuning.run import evaluate as evaluate_lib
from prompt_tuning.run import sweep as sweep_lib

SETTINGS = ("untuned", "tuned", "magnitude_sparse", "learned_mask")
# The dev metric of each setting, then its dev loss (which still ranks settings when the metric
# saturates, e.g. exact-match 0 on a random-init model), then the tuned layer's distances.
COLUMNS = ("layer", "params") + SETTINGS + tuple(f"{k}_loss" for k in SETTINGS) + (
    "l2", "rel_l2", "angle_deg", "sparsity")


def _metric(evals: dict, task: str, metric: str) -> float:
  m = evals[task]
  if metric not in m:
    raise ValueError(f"metric {metric!r} not in the {task} results; have {sorted(m)}")
  return float(m[metric])


def _set(row, setting, evals, task, metric):
  row[setting] = _metric(evals, task, metric)
  row[f"{setting}_loss"] = _metric(evals, task, "loss")


def _layer(overrides: dict, method: str) -> str | None:
  paths = overrides.get(f"method.{method}.paths")
  if not paths or len(paths) != 1:
    return None
  return paths[0]


def analyze(config, metric: str = "accuracy") -> list[dict]:
  """One row per layer (see COLUMNS; missing runs give None) from the sweep in
  ``config.output_dir``; also writes the table and the plot there."""
  out_dir = config.output_dir
  results = sweep_lib.read_results(out_dir)
  task = config.data.task
  rows: dict[str, dict] = {}
  untuned = None   # the untuned model's evals
  for name, rec in results.items():
    # JSON turned tuples (layer paths) into lists; the config wants them back.
    ov = {k: tuple(v) if isinstance(v, list) else v for k, v in rec.get("overrides", {}).items()}
    method = ov.get("method.name", config.method.name)
    layer = _layer(ov, method)
    if method not in ("layers", "mask") or layer is None:
      continue
    row = rows.setdefault(layer, {c: None for c in COLUMNS} | {"layer": layer})
    run_cfg = sweep_lib.apply_overrides(config, dict(ov, output_dir=os.path.join(out_dir, name)))
    sparsity = float(run_cfg.method.mask.sparsity)
    if method == "mask":
      _set(row, "learned_mask", rec["eval"], task, metric)
      row["sparsity"] = sparsity
      continue
    _set(row, "tuned", rec["eval"], task, metric)
    row["params"] = int(rec.get("trainable_params", 0))
    rep = sparse.sparsify_run(run_cfg, sparsity)   # also writes distances.json, sparse_diff.npz
    dist = rep["per_layer"][layer]
    row.update(l2=dist["l2"], rel_l2=dist["rel_l2"], angle_deg=dist["angle_deg"])
    _set(row, "magnitude_sparse", rep["eval_sparse"], task, metric)
    row["sparsity"] = row["sparsity"] or sparsity
    if untuned is None:   # the pre-trained model: a 'layers' run's initial parameters
      exp = build_lib.build(run_cfg)
      untuned = evaluate_lib.evaluate_all(exp, exp.trainer.init_state().params)
  if not rows:
    raise ValueError(f"{out_dir}: no single-layer 'layers' or 'mask' runs in results.jsonl")
  table = []
  for k in _layer_order(list(rows)):
    if untuned is not None:
      _set(rows[k], "untuned", untuned, task, metric)
    table.append(rows[k])
  write_table(table, out_dir, metric)
  plot(table, os.path.join(out_dir, "critical_layers.png"), metric)
  return table


def _layer_order(names):
  def key(n):
    stack, _, idx = n.partition(".layers.")
    return (0 if stack == "encoder" else 1, int(idx) if idx.isdigit() else 0, n)
  return sorted(names, key=key)


def write_table(table: list[dict], out_dir: str, metric: str):
  tables.write_csv(os.path.join(out_dir, "critical_layers.csv"), COLUMNS, table)
  lines = [f"Dev {metric} (and dev loss) per tuned layer: untuned model, the layer tuned alone, "
           f"that run magnitude-sparsified (each matrix keeps its `sparsity` largest changes), "
           f"a mask learned on the layer (zeroes `sparsity` of each projection kernel).", ""]
  lines += tables.markdown(COLUMNS, table)
  with open(os.path.join(out_dir, "critical_layers.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def plot(table: list[dict], path: str, metric: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  names = [r["layer"] for r in table]
  x = np.arange(len(names))
  val = lambda k: [np.nan if r[k] is None else r[k] for r in table]
  fig, (ax1, ax0, ax2) = plt.subplots(3, 1, figsize=(max(6, 1.2 * len(names)), 9.5),
                                      sharex=True)
  settings = (("tuned", "layer tuned (dense)"), ("magnitude_sparse", "magnitude-sparsified"),
              ("learned_mask", "learned mask"))
  for ax, suffix, label in ((ax1, "", f"dev {metric}"), (ax0, "_loss", "dev loss")):
    for i, (k, name) in enumerate(settings):
      ax.bar(x + (i - 1) * 0.27, val(k + suffix), 0.27, label=name)
    if table[0]["untuned" + suffix] is not None:
      ax.axhline(table[0]["untuned" + suffix], color="k", ls="--", lw=1, label="untuned")
    ax.set_ylabel(label)
  ax1.legend(fontsize=8)
  ax2.bar(x - 0.2, val("rel_l2"), 0.4, label="relative L2", color="tab:purple")
  ax2.set_ylabel("relative L2 distance")
  ax3 = ax2.twinx()
  ax3.plot(x, val("angle_deg"), "o-", color="tab:red", label="angle")
  ax3.set_ylabel("angle (degrees)")
  ax2.set_xticks(x, names, rotation=30, ha="right")
  h1, l1 = ax2.get_legend_handles_labels()
  h2, l2 = ax3.get_legend_handles_labels()
  ax2.legend(h1 + h2, l1 + l2, fontsize=8)
  fig.suptitle("Critical layers: tuning one layer at a time")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  import sys
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "the sweep's config file (with get_sweep())",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_bool("run_sweep", False, "run the config's sweep first", flag_values=fv)
  flags.DEFINE_string("metric", "accuracy", "dev metric of the training task", flag_values=fv)
  fv(list(sys.argv if argv is None else argv))
  if fv.run_sweep:
    sweep_lib.sweep(fv.config, sweep_lib.load_sweep(config_flags.get_config_filename(fv["config"])))
  table = analyze(fv.config, fv.metric)
  print(open(os.path.join(fv.config.output_dir, "critical_layers.md")).read())
  return table


if __name__ == "__main__":
  main()
