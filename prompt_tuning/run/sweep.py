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
import importlib.util
import json
import os

import numpy as np

from prompt_tuning.data.vocab import default_cache_dir
from prompt_tuning.run.loop import append_jsonl, train

SWEEP_DIR = "{sweep_dir}"


def apply_overrides(config, overrides: dict):
  """Returns a copy of ``config`` with dotted-key overrides ("method.prompt.length": 50)."""
  c = copy.deepcopy(config)
  c.unlock()
  for key, value in overrides.items():
    node, parts = c, key.split(".")
    for p in parts[:-1]:
      node = node[p]
    if parts[-1] not in node:
      raise ValueError(f"sweep override names unknown config key {key!r}")
    node[parts[-1]] = value
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


def sweep(config, runs: list[dict]) -> dict:
  """Trains every run of a sweep into output_dir/<name>; writes results.jsonl and summary.json."""
  if not runs:
    raise ValueError("the config's get_sweep() returned no runs")
  base_dir = config.output_dir
  os.makedirs(base_dir, exist_ok=True)
  share_compilations()
  results, groups = {}, {}
  for run in runs:
    run = dict(run)
    name = run.pop("name")
    groups[name] = run.pop("group", name)
    tags = run.pop("tags", {})
    run = {k: v.replace(SWEEP_DIR, base_dir) if isinstance(v, str) else v
           for k, v in run.items()}
    c = apply_overrides(config, dict(run, output_dir=os.path.join(base_dir, name)))
    print(f"=== sweep run {name}: {run}", flush=True)
    results[name] = train(c)
    append_jsonl(os.path.join(base_dir, "results.jsonl"),
                 {"run": name, "group": groups[name], "tags": tags, "overrides": run,
                  **results[name]})
  summary = summarize(results, groups)
  with open(os.path.join(base_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  return {"runs": list(results), "summary": summary}


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
  path, variant = config_path, None
  if not os.path.exists(path) and ":" in path:
    path, variant = path.rsplit(":", 1)
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  if not hasattr(mod, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep()")
  return mod.get_sweep() if variant is None else mod.get_sweep(variant)
