"""Sweeps: train every run of a config's ``get_sweep()`` into output_dir/<name> and summarise
the eval metrics per group (mean and std).

A run is a dict: ``name``, optional ``group`` (runs summarised together), optional ``tags`` (the
run's design factors, e.g. {"k": 10, "seed": 0}: recorded in results.jsonl for an analysis to read,
never applied to the config), and dotted config overrides. A string override may contain
``{sweep_dir}``, the sweep's output_dir: e.g. ``method.prompt.init_from_run`` naming an earlier
run of the same sweep (runs train in order). ``get_sweep(variant)`` receives the text after ``:``
in ``--config FILE:variant`` (the same text ``get_config(variant)`` gets).
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np

from prompt_tuning import config_io
from prompt_tuning.data.vocab import default_cache_dir
from prompt_tuning.run.loop import append_jsonl, train

SWEEP_DIR = "{sweep_dir}"


def apply_overrides(config, overrides: dict):
  """Returns a copy of ``config`` with dotted-key overrides ("method.prompt.length": 50); an
  unknown key or a value of the wrong type is a ConfigError naming it."""
  c = copy.deepcopy(config)
  c.unlock()
  for key, value in overrides.items():
    config_io.check_key(c, key, "sweep override key")
    node, parts = c, key.split(".")
    for p in parts[:-1]:
      node = node[p]
    try:
      node[parts[-1]] = value
    except TypeError as e:   # ml_collections refuses a value of another type than the default's
      raise config_io.ConfigError(f"sweep override {key}={value!r}: {e}") from None
  c.lock()
  return c


def summarize(results: dict[str, dict], groups: dict[str, str]) -> dict:
  """Mean and (population) std of every numeric eval metric over the runs of each group."""
  by_group: dict[str, list] = {}
  for name, res in results.items():
    by_group.setdefault(groups.get(name, name), []).append(res)
  out = {}
  for g, runs in by_group.items():
    vals: dict[str, list] = {}
    for r in runs:
      for task, m in r["eval"].items():
        for k, v in m.items():
          vals.setdefault(f"{task}/{k}", []).append(float(v))
    out[g] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
              for k, v in vals.items()}
  return out


def share_compilations():
  """The runs of a sweep mostly repeat a few shapes (seeds, data sizes): JAX's persistent
  compilation cache lets each shape compile once, which on a CPU turns a small model's run from
  tens of seconds of compiling into seconds. A cache directory the user set is kept."""
  import jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(default_cache_dir(), "jax"))


def sweep(config, runs: list[dict], metric: str | None = None) -> dict:
  """Trains every run of a sweep into output_dir/<name>; writes results.jsonl, summary.json and
  the table of every run in results.jsonl (:func:`write_table`: sweep_table.csv, sweep.png)."""
  if not runs:
    raise ValueError("the config's get_sweep() returned no runs")
  base_dir = config.output_dir
  os.makedirs(base_dir, exist_ok=True)
  share_compilations()
  results, groups, planned = {}, {}, []
  for run in runs:   # every run's config first: a bad override stops the sweep before run 1
    run = dict(run)
    name = run.pop("name")
    groups[name] = run.pop("group", name)
    tags = run.pop("tags", {})
    run = {k: v.replace(SWEEP_DIR, base_dir) if isinstance(v, str) else v
           for k, v in run.items()}
    planned.append((name, tags, run, apply_overrides(
        config, dict(run, output_dir=os.path.join(base_dir, name)))))
  for name, tags, run, c in planned:
    print(f"=== sweep run {name}: {run}", flush=True)
    results[name] = train(c)
    append_jsonl(os.path.join(base_dir, "results.jsonl"),
                 {"run": name, "group": groups[name], "tags": tags, "overrides": run,
                  **results[name]})
  summary = summarize(results, groups)
  with open(os.path.join(base_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  return {"runs": list(results), "summary": summary,
          "table": write_table(base_dir, list(read_results(base_dir).values()), metric)}


# ------------------------------------------------------------------------------ tables
LOWER_IS_BETTER = ("loss", "perplexity")
NOT_AXES = ("seed", "output_dir")   # seeds are aggregated, never an axis


def _label(v) -> str:
  return v if isinstance(v, str) else json.dumps(v)


def axes(records: list[dict]) -> list[str]:
  """The swept axes: overrides and tags whose values differ between runs (not the seed)."""
  out = []
  for source in ("overrides", "tags"):
    for key in dict.fromkeys(k for r in records for k in r.get(source, {})):
      if key in NOT_AXES or key in out:
        continue
      if len({_label(r.get(source, {}).get(key)) for r in records}) > 1:
        out.append(key)
  return out


def _value(record: dict, key: str):
  return record.get("overrides", {}).get(key, record.get("tags", {}).get(key))


TRAIN = "train"   # the task label of "each run's own training task" (runs on several tasks)


def _metrics(record: dict, task: str) -> dict:
  """A run's dev metrics on ``task`` (TRAIN: on its training task, the first it evaluates)."""
  return next(iter(record["eval"].values())) if task == TRAIN else record["eval"].get(task, {})


def pick_metric(records: list[dict], metric: str | None) -> str:
  """``TASK/NAME``: the given one; NAME alone (or nothing: accuracy where every run has it, else
  loss) on the training task, which is TRAIN when the runs train different tasks."""
  tasks = {next(iter(r["eval"])) for r in records}
  task = tasks.pop() if len(tasks) == 1 else TRAIN
  if metric is None:
    name = "accuracy" if all("accuracy" in _metrics(r, TRAIN) for r in records) else "loss"
    metric = f"{task}/{name}"
  elif "/" not in metric:
    metric = f"{task}/{metric}"
  t, name = metric.split("/", 1)
  if not any(name in _metrics(r, t) for r in records):
    known = sorted({f"{t}/{k}" for r in records for t, m in r["eval"].items() for k in m})
    raise ValueError(f"sweep metric {metric!r} is not in the runs' results; known: "
                     f"{', '.join(known)}")
  return metric


def table(records: list[dict], metric: str | None = None) -> dict:
  """Rows of a sweep: one per setting (group, when runs name one, and the swept axes), the
  seeds of a setting aggregated into mean and (population) std. Columns: the axes, n, the
  chosen metric on every eval task that has it, and the training task's loss. ``best``: the
  row index with the best mean of ``metric``."""
  if not records:
    raise ValueError("the sweep has no results")
  metric = pick_metric(records, metric)
  main_task, name = metric.split("/", 1)
  keys = axes(records)
  grouped = any(r["group"] != r["run"] for r in records)
  tasks = [main_task] if main_task == TRAIN else list(records[0]["eval"])
  columns = [f"{t}/{name}" for t in tasks if name in _metrics(records[0], t)] or [metric]
  if f"{main_task}/loss" not in columns:
    columns.append(f"{main_task}/loss")
  rows: dict[tuple, dict] = {}
  for r in records:
    key = ((r["group"],) if grouped else ()) + tuple(_label(_value(r, k)) for k in keys)
    row = rows.setdefault(key, {"setting": dict(zip((["group"] if grouped else []) + keys,
                                                    key)), "values": {c: [] for c in columns},
                                "runs": []})
    row["runs"].append(r["run"])
    for c in columns:
      t, k = c.split("/", 1)
      if k in _metrics(r, t):
        row["values"][c].append(float(_metrics(r, t)[k]))
  out = []
  for row in rows.values():
    stats = {c: (float(np.mean(v)), float(np.std(v))) for c, v in row["values"].items() if v}
    out.append({"setting": row["setting"], "runs": row["runs"], "n": len(row["runs"]),
                "stats": stats})
  sign = -1.0 if name in LOWER_IS_BETTER else 1.0
  scored = [i for i, row in enumerate(out) if metric in row["stats"]]
  best = max(scored, key=lambda i: sign * out[i]["stats"][metric][0])
  return {"metric": metric, "columns": (["group"] if grouped else []) + keys,
          "value_columns": columns, "rows": out, "best": best}


def format_table(t: dict) -> str:
  """A plain-text table; the best row is marked with ``*``."""
  def cell(row, c):
    if c not in row["stats"]:
      return "-"
    mean, std = row["stats"][c]
    return f"{mean:.4g} ± {std:.2g}" if row["n"] > 1 else f"{mean:.4g}"
  header = [""] + t["columns"] + ["n"] + t["value_columns"]
  body = [["*" if i == t["best"] else ""] + [str(row["setting"][c]) for c in t["columns"]]
          + [str(row["n"])] + [cell(row, c) for c in t["value_columns"]]
          for i, row in enumerate(t["rows"])]
  widths = [max(len(x[j]) for x in [header] + body) for j in range(len(header))]
  lines = ["  ".join(x[j].ljust(widths[j]) for j in range(len(header))).rstrip()
           for x in [header] + body]
  best = "lowest" if t["metric"].split("/", 1)[1] in LOWER_IS_BETTER else "highest"
  return "\n".join(lines + [f"* best: {best} mean {t['metric']} (mean ± std over the runs of "
                            f"a row, n runs)"])


def write_table(out_dir: str, records: list[dict], metric: str | None = None) -> str:
  """Writes sweep_table.csv and (with matplotlib) sweep.png; returns the table's text with the
  paths written."""
  import csv
  t = table(records, metric)
  csv_path = os.path.join(out_dir, "sweep_table.csv")
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(t["columns"] + ["n", "best"] + [f"{c} {s}" for c in t["value_columns"]
                                                for s in ("mean", "std")] + ["runs"])
    for i, row in enumerate(t["rows"]):
      w.writerow([row["setting"][c] for c in t["columns"]] + [row["n"], int(i == t["best"])]
                 + [x for c in t["value_columns"] for x in row["stats"].get(c, ("", ""))]
                 + [" ".join(row["runs"])])
  lines = [format_table(t), f"table: {csv_path}"]
  try:
    lines.append(f"plot: {plot(t, os.path.join(out_dir, 'sweep.png'))}")
  except ImportError:
    lines.append("plot: not written (needs matplotlib: pip install matplotlib, or "
                 "pip install -e '.[plot]')")
  return "\n".join(lines)


def plot(t: dict, path: str) -> str:
  """The metric (mean, std as error bars) against the first swept axis, one line per value of
  the others; with no axis, one bar per row."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  metric, cols = t["metric"], t["columns"]
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  rows = [r for r in t["rows"] if metric in r["stats"]]
  if not cols:
    ax.bar(range(len(rows)), [r["stats"][metric][0] for r in rows],
           yerr=[r["stats"][metric][1] for r in rows], capsize=3)
    ax.set_xticks(range(len(rows)), [" ".join(r["runs"])[:20] for r in rows], rotation=30)
  else:
    x_key = next((c for c in cols if c != "group"), cols[0])
    rest = [c for c in cols if c != x_key]
    xs = list(dict.fromkeys(r["setting"][x_key] for r in rows))
    numeric = all(_is_number(x) for x in xs)
    position = {x: (float(x) if numeric else i) for i, x in enumerate(xs)}
    lines: dict[str, list] = {}
    for r in rows:
      lines.setdefault(", ".join(f"{c}={r['setting'][c]}" for c in rest), []).append(r)
    for name, rs in lines.items():
      rs = sorted(rs, key=lambda r: position[r["setting"][x_key]])
      ax.errorbar([position[r["setting"][x_key]] for r in rs],
                  [r["stats"][metric][0] for r in rs], yerr=[r["stats"][metric][1] for r in rs],
                  marker="o", capsize=3, label=name or None)
    if not numeric:
      ax.set_xticks(range(len(xs)), xs, rotation=30)
    elif len(xs) > 2 and min(position.values()) > 0 and \
        max(position.values()) / min(position.values()) >= 100:
      ax.set_xscale("log")
    ax.set_xlabel(x_key)
    if rest:
      ax.legend(fontsize=8)
  best = t["rows"][t["best"]]
  ax.set_ylabel(metric)
  setting = ", ".join(f"{k}={v}" for k, v in best["setting"].items())
  ax.set_title(f"best: {setting or best['runs'][0]}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _is_number(x: str) -> bool:
  try:
    float(x)
    return True
  except ValueError:
    return False


def read_results(out_dir: str) -> dict[str, dict]:
  """{run name: its last record} from a sweep's results.jsonl (a re-run appends records)."""
  path = os.path.join(out_dir, "results.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no sweep results in {out_dir!r} (results.jsonl); run the sweep first")
  out = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        rec = json.loads(line)
        out[rec["run"]] = rec
  return out


def load_sweep(config_path: str) -> list[dict]:
  """The runs of the ``get_sweep()`` defined in a config file; ``FILE:variant`` (as
  ml_collections' config flags take it) calls ``get_sweep(variant)``."""
  path, variant = config_io.split_spec(config_path)
  runs = config_io.call(config_io.load_module(path), path, "get_sweep", variant)
  bad = [r for r in runs if not isinstance(r, dict) or "name" not in r] \
      if isinstance(runs, (list, tuple)) else [runs]
  if bad:
    raise config_io.ConfigError(f"config file {path!r}: get_sweep() must return a list of dicts "
                                f"with a 'name' each; got {bad[0]!r}")
  return list(runs)
