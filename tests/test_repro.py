"""The small-scale paper reproductions: each config's sweep has its paper's design (the grid) and
only known config keys, the pieces they stand on (truncated checkpoints, synthetic instructions
and domain pair, sweep variants) work, and each analysis turns a tiny finished sweep (a subset of
the runs, 2 steps each) into its table and plot."""
import csv
import functools
import importlib.util
import itertools
import os

import numpy as np
import pytest
from flax import nnx

from prompt_tuning import models
from prompt_tuning.analysis import repro, scaling
from prompt_tuning.data import synthetic
from prompt_tuning.default_config import TINY_T5
from prompt_tuning.methods import count_params
from prompt_tuning.models import hf
from prompt_tuning.models.core import base_params
from prompt_tuning.run import build, sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def config_module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def check_overrides(config, runs):
  for run in runs:
    run = {k: v for k, v in run.items() if k not in ("name", "group", "tags")}
    sweep_lib.apply_overrides(config, run)   # raises on an unknown key
  assert len({r["name"] for r in runs}) == len(runs)


def tiny(config, out):
  """The config at test size: 2 steps of 8 examples, 8 dev examples (every test run shares these
  shapes, so each compiled step is reused across the tests through the compilation cache)."""
  c = sweep_lib.apply_overrides(config, {"output_dir": str(out)})
  c.unlock()
  c.data.update(num_train=16, num_eval=8)
  c.train.update(batch_size=8, num_steps=2, log_every=2, eval_every=2, checkpoint_every=2,
                 eval_batch_size=8)
  c.lock()
  return c


def test_lester_sweep_is_the_papers_design():
  mod = config_module("repro_lester")
  for variant, suite, pairs in (
      ("small", ("synthetic_sentiment", "synthetic_sentiment_comments", "synthetic_copy"),
       ("reviews_to_comments", "comments_to_reviews")),
      ("real", mod.SUPERGLUE, ("taskless_qqp_to_mrpc", "taskless_mrpc_to_qqp"))):
    runs = mod.get_sweep(variant)
    check_overrides(mod.get_config(variant), runs)
    design = {(r["tags"]["part"], r["tags"]["task"], r["method.name"], r["seed"]) for r in runs}
    assert design == set(itertools.product(["suite"], suite, ["prompt", "full"], [0, 1, 2])) | \
        set(itertools.product(["transfer"], pairs, ["prompt", "full"], [0, 1, 2]))
    assert len(runs) == len(design) == 6 * (len(suite) + len(pairs))
  assert len(mod.SUPERGLUE) == 8 and mod.get_config("real").model.allow_random_init is False
  # `--config FILE:real` reaches get_sweep through the sweep loader, as config_flags does.
  real = sweep_lib.load_sweep(os.path.join(ROOT, "configs", "repro_lester.py") + ":real")
  assert [r["name"] for r in real] == [r["name"] for r in mod.get_sweep("real")]


def test_albalak_sweep_is_the_papers_design():
  mod = config_module("repro_albalak")
  runs = mod.get_sweep()
  check_overrides(mod.get_config(), runs)
  few = [r for r in runs if r["tags"]["part"] == "few_shot"]
  design = {tuple(r["tags"][k] for k in ("size", "mtl", "instructions", "k", "seed")) for r in few}
  assert design == set(itertools.product(["base", "large"], [False, True], [False, True],
                                         [10, 50, 100], [0, 1, 2]))
  assert len(few) == 72 and all(r["data.num_train"] == r["tags"]["k"] for r in few)
  names = [r["name"] for r in runs]
  sources = {(r["tags"]["size"], r["tags"]["instructions"]): r for r in runs
             if r["tags"]["part"] == "mtl_source"}
  assert len(sources) == 4
  for r in few:   # MTL runs start from their (size, instructions) MTL run, trained before them
    src = sources[(r["tags"]["size"], r["tags"]["instructions"])]
    init = r.get("method.prompt.init_from_run")
    assert (init == "{sweep_dir}/" + src["name"]) == r["tags"]["mtl"]
    assert names.index(src["name"]) < names.index(r["name"])
    assert r["model.hf_checkpoint"] == src["model.hf_checkpoint"]
    assert r["data.instructions"] == src["data.instructions"] == r["tags"]["instructions"]
  for src in sources.values():   # the target is evaluated zero-shot after the auxiliary tasks
    assert "+" in src["data.task"] and src["data.eval_tasks"] == ("synthetic_sentiment",)
  # base: the shipped model cut to one encoder and one decoder layer; large: all of it.
  base, large = (models.checkpoint_config(mod.sizes("small")[s]) for s in ("base", "large"))
  assert (base.num_layers, base.n_decoder_layers) == (1, 1)
  assert (large.num_layers, large.n_decoder_layers) == (2, 2)
  check_overrides(mod.get_config("real"), mod.get_sweep("real"))


def test_zhang_sweep_is_the_papers_design():
  mod = config_module("repro_zhang")
  runs = mod.get_sweep()
  check_overrides(mod.get_config(), runs)
  v = mod.VARIANTS["small"]
  grids = {}
  for r in runs:
    t = r["tags"]
    grids.setdefault((t["grid"], t["method"], t["x"]), set()).add((t["value"], t["D"]))
    assert r["data.num_train"] == t["D"] and r["method.name"] == t["method"]
  assert grids == {
      **{("model size", m, "model_params"): set(itertools.product(["1x1", "2x1", "2x2"],
                                                                  v["data_sizes"]))
         for m in ("full", "prompt", "lora")},
      ("prompt length", "prompt", "trainable_params"): set(itertools.product(
          map(str, v["lengths"]), v["data_sizes"])),
      ("LoRA rank", "lora", "trainable_params"): set(itertools.product(
          map(str, v["ranks"]), v["data_sizes"]))}
  assert len(runs) == 85 and len(v["data_sizes"]) >= 3   # the largest D is held out
  for r in runs:
    if "method.lora.rank" in r:
      assert r["method.lora.alpha"] == 2 * r["method.lora.rank"]
  check_overrides(mod.get_config("real"), mod.get_sweep("real"))


def test_truncated_checkpoint_keeps_the_first_layers_of_the_pretrained_weights(tmp_path):
  full = dict(hf.LazyTensors(TINY_T5))
  same = models.truncate(TINY_T5, str(tmp_path / "2x2"), 2, 2)
  assert set(dict(hf.LazyTensors(same))) == set(full)
  assert all(np.array_equal(v, full[k]) for k, v in dict(hf.LazyTensors(same)).items())
  path = models.truncated(TINY_T5, 1, 1, cache_dir=str(tmp_path))
  assert models.truncated(TINY_T5, 1, 1, cache_dir=str(tmp_path)) == path   # made once
  small = dict(hf.LazyTensors(path))
  assert small and all(np.array_equal(v, full[k]) for k, v in small.items())
  assert not any(".block.1." in k for k in small) and any(".block.1." in k for k in full)
  assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "spiece.model"]
  model = models.load(path)
  assert count_params(nnx.state(model, base_params())) == 246688   # of the full model's 468352
  assert (model.cfg.num_layers, model.cfg.n_decoder_layers) == (1, 1)
  with pytest.raises(ValueError, match="num_decoder_layers=3"):
    models.truncate(TINY_T5, str(tmp_path / "bad"), 1, 3)


def test_synthetic_instructions_and_domain_pair():
  plain = synthetic.get_examples("synthetic_sentiment", 4, 0)
  told = synthetic.get_examples("synthetic_sentiment", 4, 0, instructions=True)
  text = synthetic.INSTRUCTIONS["synthetic_sentiment"]
  assert [t["inputs"] for t in told] == [f"{text} {p['inputs']}" for p in plain]
  assert [t["targets"] for t in told] == [p["targets"] for p in plain]
  comments = synthetic.get_examples("synthetic_sentiment_comments", 200, 0)
  assert all(c["inputs"].startswith("comment: ") for c in comments)
  assert {c["targets"] for c in comments} == {"positive", "negative"}
  for c in comments:   # the label is the polarity of the comment's one opinion word
    words = set(c["inputs"].split())
    assert bool(words & set(synthetic.POSITIVE)) == (c["targets"] == "positive")
    assert bool(words & set(synthetic.NEGATIVE)) == (c["targets"] == "negative")
  mod = config_module("repro_lester")
  c = sweep_lib.apply_overrides(mod.get_config(), {"data.domain_shift": "comments_to_reviews"})
  assert build.resolve_tasks(c) == ("synthetic_sentiment_comments", ("synthetic_sentiment",))


def _finite(table_cells):
  for v in table_cells:
    mean, _, std = v.partition(" ± ")
    assert np.isfinite(float(mean)) and np.isfinite(float(std)), v


def test_lester_analysis_of_a_tiny_sweep(tmp_path):
  mod = config_module("repro_lester")
  runs = [r for r in mod.get_sweep() if r["seed"] == 0 and r["tags"]["task"] in (
      "synthetic_sentiment", "reviews_to_comments")]
  assert len(runs) == 4
  sweep_lib.sweep(tiny(mod.get_config(), tmp_path), runs)
  res = repro.analyze(str(tmp_path))
  assert res["paper"] == "lester"
  (row,) = res["suite"]
  assert row["task"] == "synthetic_sentiment"
  _finite([row["prompt tuning"], row["model tuning"]])
  (prompt, model) = res["transfer"]
  assert (prompt["train"], prompt["eval"], prompt["tuning"]) == (
      "synthetic_sentiment", "synthetic_sentiment_comments", "prompt tuning")
  assert model["tuning"] == "model tuning"
  _finite([prompt["in-domain"], prompt["accuracy"], model["accuracy"]])
  md = (tmp_path / "repro_lester.md").read_text()
  assert md.startswith("small-scale reproduction: Lester et al. 2021") and \
      "not comparable to the paper's numbers" in md.splitlines()[0]
  assert "| task | prompt tuning | model tuning |" in md
  suite = list(csv.DictReader(open(tmp_path / "repro_lester_suite.csv")))
  assert {(r["task"], r["tuning"], r["n"]) for r in suite} == {
      ("synthetic_sentiment", "prompt tuning", "1"), ("synthetic_sentiment", "model tuning", "1")}
  transfer = list(csv.DictReader(open(tmp_path / "repro_lester_transfer.csv")))
  assert {r["metric"] for r in transfer} == {"in-domain", "accuracy"}
  assert all(np.isfinite(float(r["mean"])) for r in suite + transfer)
  assert (tmp_path / "repro_lester.png").read_bytes()[:8] == PNG


def test_albalak_analysis_of_a_tiny_sweep(tmp_path):
  mod = config_module("repro_albalak")
  keep = {"large_mtl_source", "large_k10_seed0", "large_k10_seed1", "large_mtl_k10_seed0"}
  runs = [r for r in mod.get_sweep() if r["name"] in keep]
  for r in runs:   # the MTL stage at test size too
    if r["tags"]["part"] == "mtl_source":
      r.update({"train.batch_size": 8, "train.num_steps": 2, "train.eval_every": 2,
                "train.checkpoint_every": 2, "data.num_train": 16})
  sweep_lib.sweep(tiny(mod.get_config(), tmp_path), runs)
  rows = {(r["model"], r["MTL"]): r for r in repro.analyze(str(tmp_path))["rows"]}
  assert set(rows) == {("large (468k)", "no"), ("large (468k)", "yes")}
  no, yes = rows[("large (468k)", "no")], rows[("large (468k)", "yes")]
  assert no["instructions"] == yes["instructions"] == "no"
  _finite([no["k=10"], yes["k=10"], yes["zero-shot"]])
  assert no["zero-shot"] is None and "k=50" not in no   # zero-shot: after MTL; k: those run
  table = list(csv.DictReader(open(tmp_path / "repro_albalak.csv")))
  two_seeds = [r for r in table if (r["size"], r["mtl"], r["k"]) == ("large", "False", "10")]
  assert [r["n"] for r in two_seeds] == ["2"] and float(two_seeds[0]["std"]) >= 0
  md = (tmp_path / "repro_albalak.md").read_text()
  assert md.startswith("small-scale reproduction: Albalak et al. 2022")
  assert "| model | MTL | instructions | zero-shot | k=10 |" in md
  assert (tmp_path / "repro_albalak.png").read_bytes()[:8] == PNG


def test_zhang_analysis_of_a_tiny_sweep(tmp_path, monkeypatch):
  # One start per fit instead of the grid of starts (tests/test_scaling.py tests the fit): the
  # table is what is tested here, and the grid costs tens of seconds on a busy CPU.
  one_start = dict(a=(5.0,), b=(5.0,), alpha=(0.5,), beta=(0.5,), e=(0.0,))
  monkeypatch.setattr(scaling, "fit", functools.partial(scaling.fit, grid=one_start))
  mod = config_module("repro_zhang")
  d_sizes = {32: 8, 64: 16, 128: 32}   # the config's smallest D, scaled to the test
  runs = [r for r in mod.get_sweep() if r["tags"]["grid"] == "model size"
          and r["method.name"] == "prompt" and r["tags"]["value"] in ("1x1", "2x2")
          and r["tags"]["D"] in d_sizes and not (r["tags"]["D"] == 128 and
                                                 r["tags"]["value"] == "1x1")]
  for r in runs:
    r["data.num_train"] = r["tags"]["D"] = d_sizes[r["tags"]["D"]]
  assert len(runs) == 5
  sweep_lib.sweep(tiny(mod.get_config(), tmp_path), runs)
  res = repro.analyze(str(tmp_path))
  assert [(r["grid"], r["method"], r["form"]) for r in res["fits"]] == [
      ("model size", "prompt", "multiplicative"), ("model size", "prompt", "additive")]
  for r in res["fits"]:
    assert (r["fit_points"], r["held_out_points"]) == (4, 1)
    for k in ("alpha", "beta", "A", "E", "held_out_mad"):
      assert np.isfinite(r[k]), (k, r)
  points = res["points"][("model size", "prompt")]
  assert {p["X"] for p in points} == {246688, 468352}   # X: the model's parameters
  fits = list(csv.DictReader(open(tmp_path / "repro_zhang_fits.csv")))
  assert [r["form"] for r in fits] == ["multiplicative", "additive"]
  md = (tmp_path / "repro_zhang.md").read_text()
  assert md.startswith("small-scale reproduction: Zhang et al. 2024")
  assert "held_out_mad" in md
  assert (tmp_path / "repro_zhang.png").read_bytes()[:8] == PNG


def write_results(out, runs, result):
  """A finished sweep's results.jsonl for ``runs`` with ``result(run)`` as each run's outcome."""
  os.makedirs(out, exist_ok=True)
  for r in runs:
    sweep_lib.append_jsonl(os.path.join(out, "results.jsonl"),
                           dict(run=r["name"], tags=r["tags"], overrides={}, **result(r)))


def test_analyses_lay_out_the_whole_design(tmp_path, monkeypatch):
  """Every run of each design, with outcomes made up so that every cell is known."""
  lester = config_module("repro_lester").get_sweep()
  pair = {"reviews_to_comments": ("synthetic_sentiment", "synthetic_sentiment_comments"),
          "comments_to_reviews": ("synthetic_sentiment_comments", "synthetic_sentiment")}

  def lester_result(r):   # accuracy: 60 + 10 x seed (+ 20 for model tuning)
    acc = 60.0 + 10 * r["seed"] + (20 if r["method.name"] == "full" else 0)
    if r["tags"]["part"] == "suite":
      return {"eval": {r["data.task"]: {"accuracy": acc}}, "trainable_params": 1}
    src, tgt = pair[r["data.domain_shift"]]
    return {"eval": {src: {"accuracy": acc}, tgt: {"accuracy": acc - 50}}, "trainable_params": 1}

  write_results(tmp_path / "lester", lester, lester_result)
  res = repro.analyze(str(tmp_path / "lester"))
  std = float(np.std([60.0, 70.0, 80.0]))
  assert [r["task"] for r in res["suite"]] == [
      "synthetic_sentiment", "synthetic_sentiment_comments", "synthetic_copy", "average"]
  for row in res["suite"]:
    assert (row["prompt tuning"], row["model tuning"]) == (f"70 ± {std:.2g}", f"90 ± {std:.2g}")
  assert [(r["train"], r["tuning"], r["in-domain"], r["accuracy"]) for r in res["transfer"]] == [
      (src, m, f"{70 + d} ± {std:.2g}", f"{20 + d} ± {std:.2g}")
      for src in ("synthetic_sentiment", "synthetic_sentiment_comments")
      for m, d in (("prompt tuning", 0), ("model tuning", 20))]

  albalak = config_module("repro_albalak").get_sweep()
  target = "synthetic_sentiment"

  def albalak_result(r):   # k-shot: k/10 + seed (+ 50 with MTL, + 1 with instructions)
    t = r["tags"]
    size = {"base": 246688, "large": 468352}[t["size"]]
    if t["part"] == "mtl_source":
      return {"eval": {r["data.task"]: {"accuracy": 0.0}, target: {"accuracy": 40.0}},
              "model_params": size}
    acc = t["k"] / 10 + t["seed"] + 50 * t["mtl"] + t["instructions"]
    return {"eval": {target: {"accuracy": acc}}, "model_params": size}

  write_results(tmp_path / "albalak", albalak, albalak_result)
  rows = repro.analyze(str(tmp_path / "albalak"))["rows"]
  assert [(r["model"], r["MTL"], r["instructions"]) for r in rows] == [
      (m, mtl, i) for m in ("base (247k)", "large (468k)") for mtl in ("no", "yes")
      for i in ("no", "yes")]
  std = float(np.std([0.0, 1.0, 2.0]))
  for r in rows:
    extra = 50 * (r["MTL"] == "yes") + (r["instructions"] == "yes")
    assert r["zero-shot"] == ("40 ± 0" if r["MTL"] == "yes" else None)
    assert [r[f"k={k}"] for k in (10, 50, 100)] == [
        f"{k / 10 + 1 + extra:.4g} ± {std:.2g}" for k in (10, 50, 100)]

  zhang = config_module("repro_zhang").get_sweep()
  law = scaling.Fit("multiplicative", {"A": 30.0, "alpha": 0.3, "beta": 0.4, "E": 0.1}, 0.0)
  xs = {"1x1": 246688, "2x1": 339040, "2x2": 468352}

  def zhang_result(r):   # dev loss on an exact multiplicative law
    t = r["tags"]
    x = xs[t["value"]] if t["grid"] == "model size" else 100 * int(t["value"])
    return {"eval": {"synthetic_sentiment": {"loss": float(law.predict(x, t["D"]))}},
            "model_params": xs.get(t["value"], 468352), "trainable_params": x}

  write_results(tmp_path / "zhang", zhang, zhang_result)
  start = dict(a=(3.0,), b=(3.0,), alpha=(0.5,), beta=(0.5,), e=(-2.0,))
  monkeypatch.setattr(scaling, "fit", functools.partial(scaling.fit, grid=start))
  fits = repro.analyze(str(tmp_path / "zhang"))["fits"]
  assert [(r["grid"], r["method"], r["form"]) for r in fits] == [
      (g, m, f) for g, m in [("model size", "full"), ("model size", "prompt"),
                             ("model size", "lora"), ("prompt length", "prompt"),
                             ("LoRA rank", "lora")]
      for f in ("multiplicative", "additive")]
  for r in fits:
    assert r["fit_points"] == 4 * r["held_out_points"] > 0
    if r["form"] == "multiplicative":   # the law the losses follow, found again
      assert r["held_out_mad"] < 5e-3 and abs(r["beta"] - 0.4) < 0.05, r
    else:
      assert np.isfinite(r["held_out_mad"])
