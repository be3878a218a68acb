"""Our registered seqio tasks, metrics and Adafactor against what the official reference code
(T5, prompt-tuning, T5X) produced on the same edge-case rows: tests/fixtures/*.json, made by
scripts/make_reference_fixtures.py (offline; the rows go through our tasks in memory)."""
import base64
import functools
import json
import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def load(name):
  with open(os.path.join(FIXTURES, name)) as f:
    return json.load(f)


# ------------------------------------------------------------------------------ tasks
@pytest.fixture(scope="module")
def ref():
  return load("reference_tasks.json")


@functools.lru_cache(maxsize=None)
def signature(tfds_name):
  tf = pytest.importorskip("tensorflow")
  tfds = pytest.importorskip("tensorflow_datasets")
  name, _, config = tfds_name.partition("/")
  info = tfds.builder(name, config=config or None).info.features.get_tensor_info()
  return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.tf_dtype), info)


def rows_source(task, tfds_name, rows, monkeypatch):
  """Our task's TFDS source reading ``rows`` (typed like the TFDS features) instead of disk."""
  import tensorflow as tf
  sig = signature(tfds_name)
  loader = task.source.tfds_dataset
  monkeypatch.setattr(loader, "load", lambda split, **kw: (
      tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=sig)))
  monkeypatch.setattr(loader, "size", lambda split: len(rows))


def test_every_task_gives_the_reference_texts(ref, monkeypatch):
  seqio = pytest.importorskip("seqio")
  from prompt_tuning import tasks
  checked = 0
  # Through seqio's Task (the training / streaming path) for the tasks with their own row
  # handling (ReCoRD's rows per answer, WSC's training filter, a taskless variant); through
  # text_examples (the same formatting, without tokenizing: fast) for every task.
  via_seqio = {"super_glue_record", "super_glue_wsc", "taskless_super_glue_multirc"}
  for name, case in ref["tasks"].items():
    task = seqio.get_mixture_or_task(name)
    rows_source(task, case["tfds"], case["rows"], monkeypatch)
    for split, expected in case["splits"].items():
      if name in via_seqio:
        ds = task.get_dataset(None, split=split, shuffle=False, use_cached=False)
        got = [{"inputs": ex["inputs_pretokenized"].decode(),
                "targets": ex["targets_pretokenized"].decode()}
               for ex in ds.as_numpy_iterator()]
        assert got == expected, (name, split)
      mem = [{k: ex[k] for k in ("inputs", "targets")}
             for ex in tasks.text_examples(name, split)]
      assert mem == expected, (name, split)
      checked += 1
    assert tasks.SPECS[name].reference == case["reference_task"]
  assert checked == 2 * len(ref["tasks"]) >= 2 * 22


def test_metrics_equal_the_reference(ref, monkeypatch):
  seqio = pytest.importorskip("seqio")
  from prompt_tuning import tasks
  for case in ref["metrics"]:
    name = case["task"]
    if "targets" in case:  # generation metrics: straight on the strings
      examples = [{"targets": t} for t in case["targets"]]
    else:  # classification / QA: our validation examples, labeled ones, in order
      # a transfer evaluation task reads its target task's rows
      src = ref["tasks"]["glue_" + name.split("_")[1] if "_from_" in name else name]
      rows_source(seqio.get_mixture_or_task(name), src["tfds"], src["rows"], monkeypatch)
      examples = [ex for ex in tasks.text_examples(name, "validation")
                  if ex["targets"] != "<unk>" and int(ex.get("label", 0)) >= 0]
    got = tasks.score(name, examples, case["predictions"])
    for key, value in case["reference"].items():
      assert got[key] == pytest.approx(value, abs=1e-6), (name, key, got)


def test_removed_task_names_say_what_replaces_them():
  pytest.importorskip("seqio")
  from prompt_tuning import tasks
  with pytest.raises(ValueError, match=r"^task 'glue_qqp_paraphrase' was removed; use glue_qqp"):
    tasks.check_task_name("glue_qqp_paraphrase+super_glue_rte")
  with pytest.raises(ValueError, match=r"was removed; use glue_mrpc"):
    tasks.provider("glue_mrpc_paraphrase")


# ------------------------------------------------------------------------------ Adafactor
@pytest.mark.parametrize("run", ["from_1100000", "from_0"])
def test_adafactor_equals_t5x_over_50_steps(run):
  """Lester et al.'s Adafactor (decay 0.8, no parameter scaling, clipping 1, lr 0.3, weight
  decay 1e-5), T5X's step continuing from the checkpoint's: ours == T5X's own updates."""
  import jax
  import jax.numpy as jnp
  from prompt_tuning import optim
  fx = load("reference_adafactor.json")
  rng = np.random.default_rng(fx["seed"])
  shapes = {k: tuple(v) for k, v in fx["shapes"].items()}
  params = {k: (rng.standard_normal(s).astype(np.float32) * fx["init_scale"])
            for k, s in shapes.items()}
  grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(fx["num_steps"])]
  r = fx["runs"][run]
  cfg = optim.OptimizerConfig(name="adafactor", learning_rate=0.3, decay_rate=0.8,
                              clipping_threshold=1.0, multiply_by_parameter_scale=False,
                              weight_decay=1e-5, step_offset=r["start_step"])
  tx = optim.make(cfg)
  params = {k: jnp.asarray(v) for k, v in params.items()}
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  for g in grads:
    upd, state = step(params, state, g)
    params = jax.tree.map(lambda a, b: a + b, params, upd)
  for k, s in shapes.items():
    want = np.frombuffer(base64.b64decode(r["params"][k]), "<f4").reshape(s)
    np.testing.assert_allclose(np.asarray(params[k]), want, rtol=0, atol=1e-5)
  if run == "from_1100000":  # the offset matters: the same updates from step 0 differ
    zero = fx["runs"]["from_0"]["params"]["prompt"]
    other = np.frombuffer(base64.b64decode(zero), "<f4").reshape(shapes["prompt"])
    assert np.abs(np.asarray(params["prompt"]) - other).max() > 1e-2


def test_paper_configs_use_lesters_settings():
  import importlib.util
  root = os.path.join(os.path.dirname(__file__), "..", "configs")
  for name in ("superglue_prompt", "qqp_to_mrpc", "repro_lester"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("real") if name == "repro_lester" else mod.get_config()
    o = c.optimizer
    wd = o.weight_decay
    if name == "repro_lester":  # weight decay: the prompt runs' (model tuning had none)
      runs = mod.get_sweep("real")
      wd, = {r["optimizer.weight_decay"] for r in runs if r["method.name"] == "prompt"}
      assert {r["optimizer.weight_decay"] for r in runs if r["method.name"] == "full"} == {0.0}
    assert (o.decay_rate, o.clipping_threshold, o.multiply_by_parameter_scale, wd,
            o.step_offset, o.schedule) == (0.8, 1.0, False, 1e-5, 1_100_000, "constant"), name
    assert c.train.z_loss == 1e-4, name
    if name != "repro_lester":  # the sweep keeps each method's optimizer (prompt: Adafactor 0.3)
      assert (o.name, o.learning_rate) == ("adafactor", 0.3), name
  assert mod.SUPERGLUE[0] == "taskless_super_glue_boolq"
