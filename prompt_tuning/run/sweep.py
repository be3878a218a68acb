"""Sweeps: train every run of a config's ``get_sweep()`` into output_dir/<name> and summarise
the eval metrics per group (mean and std)."""
from __future__ import annotations

import copy
import importlib.util
import json
import os

import numpy as np

from prompt_tuning.run.loop import append_jsonl, train


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


def sweep(config, runs: list[dict]) -> dict:
  """Trains every run of a sweep into output_dir/<name>; writes results.jsonl and summary.json."""
  if not runs:
    raise ValueError("the config's get_sweep() returned no runs")
  base_dir = config.output_dir
  os.makedirs(base_dir, exist_ok=True)
  results, groups = {}, {}
  for run in runs:
    run = dict(run)
    name = run.pop("name")
    groups[name] = run.pop("group", name)
    c = apply_overrides(config, dict(run, output_dir=os.path.join(base_dir, name)))
    print(f"=== sweep run {name}: {run}", flush=True)
    results[name] = train(c)
    append_jsonl(os.path.join(base_dir, "results.jsonl"),
                 {"run": name, "overrides": run, **results[name]})
  summary = summarize(results, groups)
  with open(os.path.join(base_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  return {"runs": list(results), "summary": summary}


def load_sweep(config_path: str) -> list[dict]:
  """The runs of the ``get_sweep()`` defined in a config file."""
  spec = importlib.util.spec_from_file_location("_sweep_config", config_path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  if not hasattr(mod, "get_sweep"):
    raise ValueError(f"{config_path} defines no get_sweep()")
  return mod.get_sweep()
