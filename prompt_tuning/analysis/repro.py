"""The tables and plots of the paper reproductions (configs/repro_lester.py, repro_albalak.py,
repro_zhang.py) from a finished sweep.

Reads ``output_dir/results.jsonl``: every run's ``tags`` name the paper and the run's place in its
design (written by run/sweep.py). Writes ``repro_<paper>.md`` (a header line saying what was
reproduced and at which scale, then the paper's table), CSV files and a PNG into ``output_dir``.
Runs missing from the sweep (a subset) leave their cells empty.

  python -m prompt_tuning.analysis.repro --config configs/repro_lester.py \\
      [--run_sweep] [--metric accuracy]

* Lester et al. 2021: task x {prompt tuning, model tuning} (mean ± std over seeds, and the suite
  average), and the domain-transfer table: train -> eval task x tuning, in-domain score and the
  eval task's accuracy / F1 (repro_lester.md, _suite.csv, _transfer.csv, .png).
* Albalak et al. 2022: size x MTL x instructions rows, zero-shot (the MTL run) and k-shot columns
  (mean ± std over seeds) (repro_albalak.md, .csv, .png).
* Zhang et al. 2024: per grid (model size, prompt length, LoRA rank x D) the multiplicative and
  additive law fits and their held-out error (repro_zhang.md, _fits.csv, _points.csv, .png).
"""
from __future__ import annotations

import os
import textwrap

import numpy as np

from prompt_tuning.analysis import scaling_sweep, tables
from prompt_tuning.run import sweep as sweep_lib

SCORE_NOTE = ("score: the task's accuracy, or the mean of its two metrics where it has two (CB, "
              "MultiRC, ReCoRD), as the SuperGLUE score counts them")


def header(records: list[dict]) -> str:
  t = records[0]["tags"]
  if t.get("scale") == "small":
    return f"small-scale reproduction: {t['setup']}; not comparable to the paper's numbers"
  return f"reproduction: {t['setup']}"


def task_score(m: dict, metric: str | None = None) -> float:
  """One number per task: ``metric``, else the score of :data:`SCORE_NOTE`."""
  if metric:
    if metric not in m:
      raise ValueError(f"metric {metric!r} not in the results; have {sorted(m)}")
    return float(m[metric])
  if "avg" in m:                       # CB, MultiRC, ReCoRD: the mean of their two metrics
    return float(m["avg"])
  return float(m["accuracy"])


def stats(values) -> dict | None:
  """Mean and (population, as in sweep summaries) std of ``values``; None when empty."""
  v = np.asarray(list(values), float)
  if not v.size:
    return None
  return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def cell(st: dict | None) -> str | None:
  return None if st is None else f"{st['mean']:.4g} ± {st['std']:.2g}"


def long_row(st: dict | None, **keys) -> dict:
  """A CSV row: the keys, then the mean, std and number of seeds (empty when missing)."""
  return dict(keys, **(st or {"mean": None, "std": None, "n": 0}))


def _write_md(path: str, records: list[dict], blocks: list[list[str]]):
  lines = [header(records)]
  for block in blocks:
    lines += [""] + block
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _figure(ncols: int, title: str, width: float = 5.0, height: float = 4.0):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
  fig.suptitle(textwrap.fill(title, int(14 * width * ncols)), fontsize=9)
  return plt, fig, list(axes[0])


def _save(plt, fig, path: str):
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _bars(ax, groups: list[str], series: list[str], values: dict, ylabel: str):
  """Grouped bars with std error bars: values[(group, series)] = stats."""
  x = np.arange(len(groups))
  width = 0.8 / max(len(series), 1)
  for i, s in enumerate(series):
    st = [values.get((g, s)) for g in groups]
    ax.bar(x + (i - (len(series) - 1) / 2) * width,
           [np.nan if v is None else v["mean"] for v in st], width,
           yerr=[0 if v is None else v["std"] for v in st], capsize=3, label=s)
  ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=8)


# ------------------------------------------------------------------------------ Lester et al.
def lester(records: list[dict], out_dir: str, metric: str | None = None) -> dict:
  methods: list[str] = []
  params: dict[str, int] = {}
  suite: dict[tuple, dict] = {}      # (task, method) -> {seed: score}
  transfer: dict[tuple, dict] = {}   # (train task, eval task, method) -> {column: {seed: value}}
  for r in records:
    t = r["tags"]
    if t["method"] not in methods:
      methods.append(t["method"])
    params[t["method"]] = int(r["trainable_params"])
    if t["part"] == "suite":
      suite.setdefault((t["task"], t["method"]), {})[t["seed"]] = task_score(
          r["eval"][t["task"]], metric)
    else:   # eval order: the training task, then the one it transfers to
      (src, m_src), (tgt, m_tgt) = list(r["eval"].items())[:2]
      vals = transfer.setdefault((src, tgt, t["method"]), {})
      vals.setdefault("in-domain", {})[t["seed"]] = task_score(m_src, metric)
      for k in ([metric] if metric else [k for k in ("accuracy", "f1") if k in m_tgt]):
        vals.setdefault(k, {})[t["seed"]] = float(m_tgt[k])

  tasks = list(dict.fromkeys(task for task, _ in suite))
  suite_stats = {k: stats(v.values()) for k, v in suite.items()}
  if len(tasks) > 1:   # the suite score: per seed the mean over tasks, then over seeds
    for m in methods:
      seeds = set.intersection(*(set(suite.get((task, m), {})) for task in tasks))
      suite_stats[("average", m)] = stats(
          np.mean([suite[(task, m)][s] for task in tasks]) for s in sorted(seeds))
    tasks.append("average")
  rows = [dict(task=task, **{m: cell(suite_stats.get((task, m))) for m in methods})
          for task in tasks]
  tables.write_csv(os.path.join(out_dir, "repro_lester_suite.csv"),
                   ("task", "tuning", "mean", "std", "n"),
                   [long_row(suite_stats.get((task, m)), task=task, tuning=m)
                    for task in tasks for m in methods])

  eval_metrics = list(dict.fromkeys(k for v in transfer.values() for k in v if k != "in-domain"))
  columns = ["in-domain"] + eval_metrics
  transfer_stats = {key: {c: stats(vals.get(c, {}).values()) for c in columns}
                    for key, vals in transfer.items()}
  t_rows = [dict(train=src, eval=tgt, tuning=m, **{c: cell(st[c]) for c in columns})
            for (src, tgt, m), st in transfer_stats.items()]
  tables.write_csv(os.path.join(out_dir, "repro_lester_transfer.csv"),
                   ("train", "eval", "tuning", "metric", "mean", "std", "n"),
                   [long_row(st[c], train=src, eval=tgt, tuning=m, metric=c)
                    for (src, tgt, m), st in transfer_stats.items() for c in columns])

  blocks = []
  if suite:
    blocks.append([f"Prompt tuning vs model tuning, dev {metric or 'score'} per task (mean ± std "
                   "over seeds; average: per seed the mean over tasks). "
                   + ("" if metric else SCORE_NOTE + ". ")
                   + "Trainable parameters: "
                   + ", ".join(f"{m} {params[m]:,}" for m in methods) + ".", ""]
                  + tables.markdown(["task"] + methods, rows))
  if transfer:
    blocks.append(["Zero-shot domain transfer: trained on `train`, evaluated on the `eval` task's "
                   f"dev set ({', '.join(eval_metrics)}; in-domain: the `train` task's own dev "
                   f"{metric or 'score'}), mean ± std over seeds.", ""]
                  + tables.markdown(["train", "eval", "tuning"] + columns, t_rows))
  _write_md(os.path.join(out_dir, "repro_lester.md"), records, blocks)

  plt, fig, axes = _figure(2, header(records))
  _bars(axes[0], tasks, methods, suite_stats, f"dev {metric or 'score'}")
  axes[0].set_title("task suite", fontsize=9)
  shown = eval_metrics[0] if eval_metrics else "in-domain"
  _bars(axes[1], list(dict.fromkeys(f"{s} -> {t}" for s, t, _ in transfer)), methods,
        {(f"{s} -> {t}", m): st[shown] for (s, t, m), st in transfer_stats.items()},
        f"{shown} on the eval task")
  axes[1].set_title("zero-shot domain transfer", fontsize=9)
  _save(plt, fig, os.path.join(out_dir, "repro_lester.png"))
  return {"suite": rows, "transfer": t_rows}


# ------------------------------------------------------------------------------ Albalak et al.
def albalak(records: list[dict], out_dir: str, metric: str | None = None) -> dict:
  few: dict[tuple, dict] = {}    # (size, mtl, instructions) -> {k: [scores over seeds]}
  zero: dict[tuple, list] = {}   # (size, instructions) -> the MTL run's zero-shot target score
  params: dict[str, int] = {}
  shots: set[int] = set()
  for r in records:
    t = r["tags"]
    params[t["size"]] = int(r["model_params"])
    score = task_score(r["eval"][t["target"]], metric)
    if t["part"] == "mtl_source":
      zero.setdefault((t["size"], t["instructions"]), []).append(score)
    else:
      few.setdefault((t["size"], t["mtl"], t["instructions"]), {}).setdefault(
          t["k"], []).append(score)
      shots.add(t["k"])
  ks = sorted(shots)
  sizes = sorted(params, key=params.get)
  rows, csv_rows = [], []
  for size in sizes:
    for mtl in (False, True):
      for instr in (False, True):
        st = {k: stats(few.get((size, mtl, instr), {}).get(k, [])) for k in ks}
        z = stats(zero.get((size, instr), [])) if mtl else None
        if z is None and not any(st.values()):
          continue
        rows.append({"model": f"{size} ({params[size] / 1e3:.0f}k)", "MTL": "yes" if mtl else "no",
                     "instructions": "yes" if instr else "no", "zero-shot": cell(z),
                     **{f"k={k}": cell(st[k]) for k in ks}})
        keys = dict(size=size, model_params=params[size], mtl=mtl, instructions=instr)
        csv_rows += ([long_row(z, k=0, **keys)] if mtl else [])
        csv_rows += [long_row(st[k], k=k, **keys) for k in ks]
  columns = ["model", "MTL", "instructions", "zero-shot"] + [f"k={k}" for k in ks]
  tables.write_csv(os.path.join(out_dir, "repro_albalak.csv"),
                   ("size", "model_params", "mtl", "instructions", "k", "mean", "std", "n"),
                   csv_rows)
  target = records[0]["tags"]["target"]
  _write_md(os.path.join(out_dir, "repro_albalak.md"), records, [
      [f"Dev {metric or 'score'} on {target} after few-shot training on k examples (mean ± std "
       "over seeds); MTL: first trained on the auxiliary tasks, which also gives the zero-shot "
       "column; instructions: each task's instruction prepended. "
       + ("" if metric else SCORE_NOTE + "."), ""] + tables.markdown(columns, rows)])

  plt, fig, axes = _figure(len(sizes), header(records), width=4.5)
  for ax, size in zip(axes, sizes):
    for mtl in (False, True):
      for instr in (False, True):
        st = [stats(few.get((size, mtl, instr), {}).get(k, [])) for k in ks]
        if not any(st):
          continue
        label = f"{'MTL' if mtl else 'no MTL'}, {'instructions' if instr else 'no instructions'}"
        line = ax.errorbar(ks, [np.nan if s is None else s["mean"] for s in st],
                           [0 if s is None else s["std"] for s in st], marker="o", capsize=3,
                           label=label)
        z = stats(zero.get((size, instr), [])) if mtl else None
        if z is not None:   # zero-shot after MTL: a dashed level in the line's colour
          ax.axhline(z["mean"], ls="--", lw=1, color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (training examples)")
    ax.set_ylabel(f"dev {metric or 'score'} on {target}")
    ax.set_title(f"{size} ({params[size]:,} parameters); dashed: zero-shot after MTL", fontsize=8)
    ax.legend(fontsize=7)
  _save(plt, fig, os.path.join(out_dir, "repro_albalak.png"))
  return {"rows": rows}


# ------------------------------------------------------------------------------ Zhang et al.
ZHANG_COLUMNS = ("grid", "method", "form", "alpha", "beta", "A", "B", "E", "fit_points",
                 "held_out_points", "held_out_mad")


def zhang(records: list[dict], out_dir: str, metric: str | None = None) -> dict:
  metric = metric or "loss"
  points: dict[tuple, list] = {}   # (grid, method) -> [{value, X, D, metric}]
  for r in records:
    t = r["tags"]
    task = next(iter(r["eval"]))
    points.setdefault((t["grid"], t["method"]), []).append(
        {"value": t["value"], "X": int(r[t["x"]]), "x": t["x"], "D": int(t["D"]),
         metric: float(r["eval"][task][metric])})
  rows, fits = [], {}
  for (grid, method), pts in points.items():
    d = [p["D"] for p in pts]
    held = scaling_sweep.held_out(d)
    base = dict(grid=grid, method=method, fit_points=int((~held).sum()),
                held_out_points=int(held.sum()))
    if (~held).sum() < 4:   # a law has 4 or 5 parameters: too few points to fit
      rows.append(base)
      continue
    fits[(grid, method)] = res = scaling_sweep.fit_points(
        [p["X"] for p in pts], d, [p[metric] for p in pts])
    for form, f in res.items():
      rows.append(dict(base, form=form, held_out_mad=f["held_out_mad"],
                       **{k: f["params"].get(k) for k in ("alpha", "beta", "A", "B", "E")}))
  tables.write_csv(os.path.join(out_dir, "repro_zhang_fits.csv"), ZHANG_COLUMNS, rows)
  tables.write_csv(os.path.join(out_dir, "repro_zhang_points.csv"),
                   ("grid", "method", "value", "x", "X", "D", metric),
                   [dict(p, grid=g, method=m) for (g, m), pts in points.items() for p in pts])
  _write_md(os.path.join(out_dir, "repro_zhang.md"), records, [
      [f"Scaling-law fits of the dev {metric}: multiplicative L = A / (X^alpha D^beta) + E and "
       "additive L = A / X^alpha + B / D^beta + E, fitted on all but the largest D (with more "
       "than two D) and scored by the mean absolute deviation of the predicted dev "
       f"{metric} on the points of the largest D (held_out_mad). X: the model's parameters "
       "(grid 'model size'), else the trainable parameters.", ""]
      + tables.markdown(ZHANG_COLUMNS, rows)])

  plt, fig, axes = _figure(max(len(fits), 1), header(records), width=4.5)
  for ax, ((grid, method), res) in zip(axes, fits.items()):
    scaling_sweep.plot_points(ax, points[(grid, method)], "value", "X", metric,
                              res["multiplicative"]["params"], name=grid.split()[-1])
    mad = res["multiplicative"]["held_out_mad"]
    ax.set_title(f"{grid} x D, {method}; lines: multiplicative fit"
                 + (f"\nheld-out MAD {mad:.3g}" if mad is not None else ""), fontsize=8)
  _save(plt, fig, os.path.join(out_dir, "repro_zhang.png"))
  return {"fits": rows, "points": points}


ANALYSES = {"lester": lester, "albalak": albalak, "zhang": zhang}


def analyze(out_dir: str, metric: str | None = None) -> dict:
  """The table(s) and plot of the reproduction whose sweep finished in ``out_dir``."""
  records = list(sweep_lib.read_results(out_dir).values())
  papers = {r.get("tags", {}).get("paper") for r in records}
  if len(papers) != 1 or not papers <= set(ANALYSES):
    raise ValueError(f"{out_dir}: results.jsonl is not one reproduction's sweep (papers in the "
                     f"runs' tags: {sorted(map(str, papers))}; known: {sorted(ANALYSES)})")
  paper = papers.pop()
  return dict(ANALYSES[paper](records, out_dir, metric), paper=paper,
              markdown=os.path.join(out_dir, f"repro_{paper}.md"))


def main(argv=None):
  import sys
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "a configs/repro_*.py file (FILE:real for the "
                                  "real tasks)", flag_values=fv, lock_config=True)
  flags.DEFINE_bool("run_sweep", False, "run the config's sweep first", flag_values=fv)
  flags.DEFINE_string("metric", "", "the metric of the tables (default: the task score; "
                      "Zhang et al.: dev loss)", flag_values=fv)
  fv(list(sys.argv if argv is None else argv))
  if fv.run_sweep:
    sweep_lib.sweep(fv.config, sweep_lib.load_sweep(config_flags.get_config_filename(fv["config"])))
  res = analyze(fv.config.output_dir, fv.metric or None)
  print(open(res["markdown"]).read())
  return res


if __name__ == "__main__":
  main()
