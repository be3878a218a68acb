"""Scaling sweep: train over finetuning-data sizes x a method knob (prompt length or LoRA rank),
write a results table, fit the scaling laws, and plot.

  python -m prompt_tuning.analysis.scaling_sweep --config configs/tiny.py \\
      --data_sizes 100,300,1000 --knob method.prompt.length --values 5,20,80 --out runs/scaling

X in the fits is the number of trainable parameters of each run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import numpy as np

from prompt_tuning.analysis import scaling, tables


def grid_runs(data_sizes, knob: str, values) -> list[dict]:
  """The sweep runs of a data size x ``knob`` grid."""
  return [{"name": f"D{d}_{knob.split('.')[-1]}{v}", "data.num_train": int(d), knob: v}
          for d in data_sizes for v in values]


def held_out(d) -> np.ndarray:
  """The points a fit leaves out and then predicts: those of the largest data size, when there
  are more than two sizes (fewer leave too little to fit)."""
  d = np.asarray(d, float)
  return d == d.max() if len(set(d.tolist())) > 2 else np.zeros_like(d, bool)


def fit_points(x, d, y) -> dict:
  """Both laws fitted on the points not :func:`held_out`; their held-out MAD (None: none)."""
  return scaling.compare_forms(x, d, y, held_out(d))


def run(config, data_sizes, knob: str, values, out_dir: str, metric: str = "loss") -> dict:
  from prompt_tuning.run import sweep as sweep_lib
  c = sweep_lib.apply_overrides(config, {"output_dir": out_dir})
  sweep_lib.sweep(c, grid_runs(data_sizes, knob, values))
  rows = []
  for r in sweep_lib.read_results(out_dir).values():
    task, m = next(iter(r["eval"].items()))
    rows.append({"run": r["run"], "D": r["overrides"]["data.num_train"],
                 knob: r["overrides"][knob], "trainable_params": r["trainable_params"],
                 "task": task, metric: m[metric]})
  tables.write_csv(os.path.join(out_dir, "scaling_table.csv"), list(rows[0]), rows)
  fits = fit_points([r["trainable_params"] for r in rows], [r["D"] for r in rows],
                    [r[metric] for r in rows])
  with open(os.path.join(out_dir, "scaling_fits.json"), "w") as f:
    json.dump(fits, f, indent=1)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  plot_points(ax, rows, knob, "trainable_params", metric, fits["multiplicative"]["params"])
  ax.set_title("points: runs; lines: multiplicative law fit")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "scaling.png"), dpi=100)
  plt.close(fig)
  return {"rows": rows, "fits": fits}


def plot_points(ax, rows, series: str, x_key: str, metric: str, params: dict,
                name: str | None = None):
  """On ``ax``: ``metric`` against D, one series per value of ``rows``' ``series`` key (its
  points, and the multiplicative law with ``params`` at that series' X = ``x_key``), labelled
  ``name=value`` (``name``: the series key's last part)."""
  mult = scaling.Fit("multiplicative", params, 0.0)
  x_of = {r[series]: r[x_key] for r in rows}
  for v in sorted(x_of, key=x_of.get):   # series in the order of their X
    pts = sorted((r["D"], r[metric], r[x_key]) for r in rows if r[series] == v)
    ds = np.array([p[0] for p in pts], float)
    line, = ax.plot(ds, [p[1] for p in pts], "o", label=f"{name or series.split('.')[-1]}={v}")
    grid = np.geomspace(ds.min(), ds.max(), 50)
    ax.plot(grid, mult.predict(np.full_like(grid, pts[0][2]), grid), "-", color=line.get_color())
  ax.set_xscale("log")
  ds = sorted({r["D"] for r in rows})   # tick the data sizes run (log minor labels collide)
  ax.set_xticks(ds, [str(d) for d in ds])
  ax.minorticks_off()
  ax.set_xlabel("finetuning examples D")
  ax.set_ylabel(f"dev {metric}")
  ax.legend(fontsize=8)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--data_sizes", required=True)
  p.add_argument("--knob", default="method.prompt.length")
  p.add_argument("--values", required=True)
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  spec = importlib.util.spec_from_file_location("cfg", a.config)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cast = float if "alpha" in a.knob else int
  res = run(mod.get_config(), [int(v) for v in a.data_sizes.split(",")], a.knob,
            [cast(v) for v in a.values.split(",")], a.out)
  print(json.dumps(res["fits"], indent=1))


if __name__ == "__main__":
  sys.exit(main())
