"""Scaling sweep: train over finetuning-data sizes x a method knob (prompt length or LoRA rank),
write a results table, fit the scaling laws, and plot.

  python -m prompt_tuning.analysis.scaling_sweep --config configs/tiny.py \\
      --data_sizes 100,300,1000 --knob method.prompt.length --values 5,20,80 --out runs/scaling

X in the fits is the number of trainable parameters of each run.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys

import numpy as np

from prompt_tuning.analysis import scaling


def run(config, data_sizes, knob: str, values, out_dir: str, metric: str = "loss") -> dict:
  from prompt_tuning.run import sweep as sweep_lib
  c = sweep_lib.apply_overrides(config, {"output_dir": out_dir})
  runs = [{"name": f"D{d}_{knob.split('.')[-1]}{v}", "data.num_train": int(d), knob: v}
          for d in data_sizes for v in values]
  sweep_lib.sweep(c, runs)
  rows = []
  with open(os.path.join(out_dir, "results.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      task, m = next(iter(r["eval"].items()))
      rows.append({"run": r["run"], "D": r["overrides"]["data.num_train"],
                   knob: r["overrides"][knob], "trainable_params": r["trainable_params"],
                   "task": task, metric: m[metric]})
  with open(os.path.join(out_dir, "scaling_table.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  x = np.array([r["trainable_params"] for r in rows], float)
  d = np.array([r["D"] for r in rows], float)
  y = np.array([r[metric] for r in rows], float)
  held = d == d.max() if len(set(d)) > 2 else np.zeros_like(d, bool)
  fits = scaling.compare_forms(x, d, y, held)
  with open(os.path.join(out_dir, "scaling_fits.json"), "w") as f:
    json.dump(fits, f, indent=1)
  _plot(rows, knob, metric, fits, os.path.join(out_dir, "scaling.png"))
  return {"rows": rows, "fits": fits}


def _plot(rows, knob, metric, fits, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  mult = scaling.Fit("multiplicative", fits["multiplicative"]["params"], 0.0)
  for v in sorted({r[knob] for r in rows}):
    pts = sorted((r["D"], r[metric], r["trainable_params"]) for r in rows if r[knob] == v)
    ds = np.array([p[0] for p in pts], float)
    line, = ax.plot(ds, [p[1] for p in pts], "o", label=f"{knob.split('.')[-1]}={v}")
    grid = np.geomspace(ds.min(), ds.max(), 50)
    ax.plot(grid, mult.predict(np.full_like(grid, pts[0][2]), grid), "-", color=line.get_color())
  ax.set_xscale("log")
  ax.set_xlabel("finetuning examples D")
  ax.set_ylabel(f"dev {metric}")
  ax.set_title("points: runs; lines: multiplicative law fit")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
