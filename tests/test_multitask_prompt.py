"""Multi-task prompts (a shared prompt plus a per-task table, selected by the batch's task_ids),
the task_ids feature of in-memory mixtures, and prompt transfer (init_from_run)."""
import os

import jax
import numpy as np
import pytest
from flax import nnx

from prompt_tuning import checkpoint, methods, models, trainer as trainer_lib
from prompt_tuning.data import inputs, pipeline, synthetic
from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.models import core
from tests.helpers import make_trainer, preset_config, sentiment_data, vocab

D = 64
TASKS = ("synthetic_sentiment", "synthetic_copy")


def combined(shared, table, t, combine, parts):
  """Task t's prompt built by hand: shared + table[t], or per stack block shared ++ table[t]."""
  if combine == "add":
    return shared + table[t]
  s, k = np.split(shared, parts), np.split(table[t], parts)
  return np.concatenate([v for a, b in zip(s, k) for v in (a, b)])


@pytest.mark.parametrize("preset,combine,scope,placement", [
    ("tiny", "add", "encoder", "prefix"),
    ("tiny", "concat", "both", "before_eos"),
    ("tiny-bart", "add", "decoder", "prefix"),
    ("tiny-gpt2", "concat", "encoder", "before_eos"),
])
def test_each_row_gets_its_tasks_combined_prompt(preset, combine, scope, placement):
  parts = 2 if scope == "both" else 1
  r = np.random.RandomState(0)
  shared = r.normal(size=(parts * 3, D)).astype(np.float32)
  table = r.normal(size=(3, parts * (3 if combine == "add" else 2), D)).astype(np.float32)
  m = models.build(models.preset(preset))
  m.set_task_prompts(shared, table, combine=combine, placement=placement, scope=scope)
  ids = r.randint(3, 256, (4, 7)).astype(np.int32)
  ids[:, -1] = 1
  mask = np.ones_like(ids)
  dec = r.randint(3, 256, (4, 3)).astype(np.int32)
  task_ids = np.array([2, 0, 2, 0], np.int32)
  enc_dec = m.cfg.is_encoder_decoder

  def logits(mm, **kw):
    return np.asarray(mm(ids, mask, dec, **kw) if enc_dec else mm(ids, mask, **kw))

  decode = lambda mm, **kw: np.asarray(core.greedy_decode(mm, ids, mask, 4, **kw))
  check_decode = scope == "both"   # cached decoding with both stacks' prompts (others: cheap)
  got = logits(m, task_ids=task_ids)
  got_decode = decode(m, task_ids=task_ids) if check_decode else None
  for t in (0, 2):   # task 1 is in no row
    single = models.build(models.preset(preset))
    single.set_prompt(combined(shared, table, t, combine, parts), placement=placement,
                      scope=scope)
    rows = task_ids == t
    np.testing.assert_allclose(got[rows], logits(single)[rows], atol=1e-5, rtol=0)
    if check_decode:
      np.testing.assert_array_equal(got_decode[rows], decode(single)[rows])
  assert m.prompt_length == parts * (3 if combine == "add" else 5)
  with pytest.raises(ValueError, match="pass task_ids"):
    logits(m)


def test_attach_initialises_shared_prompt_and_table():
  m = models.build(models.preset("tiny"))
  cfg = methods.make("prompt", length=3, tasks=("a", "b", "c"), scope="both")
  methods.attach(m, cfg)
  assert m.prompt.shape == (6, D) and m.task_prompts.shape == (3, 6, D)
  assert np.all(np.asarray(m.task_prompts[...]) == 0)   # add: every task starts from shared
  m = models.build(models.preset("tiny"))
  methods.attach(m, methods.make("prompt", length=2, shared_length=4, tasks=("a", "b"),
                                 combine="concat"))
  assert m.prompt.shape == (4, D) and m.task_prompts.shape == (2, 2, D)
  table = np.asarray(m.task_prompts[...])
  assert np.abs(table[0] - table[1]).max() > 0          # concat: each task its own init
  tr = trainer_lib.Trainer(m, methods.make("prompt", length=2, shared_length=4,
                                           tasks=("a", "b"), combine="concat"))
  assert tr.num_trainable == (4 + 2 * 2) * D and tr.extra_length == 6
  out = methods.get("prompt").export(m, tr.init_state().params, tr.method)
  assert sorted(out) == ["prompt", "task_prompts"] and out["task_prompts"].shape == (2, 2, D)


def mixture(n=256, seed=0):
  v = vocab()
  return [pipeline.tokenize_examples(synthetic.get_examples(t, n, seed), v, 48, 8, name=t)
          for t in TASKS]


def test_in_memory_mixture_batches_carry_each_rows_task_id():
  sources = mixture(64)
  ids = inputs.source_task_ids(sources, TASKS[::-1])
  assert ids == [1, 0]
  it = pipeline.InMemoryIterator(sources, 16, feature_lengths={"inputs": 48, "targets": 8},
                                 task_ids=ids)
  first = {t: vocab().encode(p)[0] for t, p in zip(TASKS, ("review:", "copy:"))}
  seen = set()
  for _ in range(3):
    b = next(it)
    assert b["task_ids"].dtype == np.int32 and b["task_ids"].shape == (16,)
    want = np.where(b["inputs"][:, 0] == first["synthetic_sentiment"], 1, 0)
    assert set(b["inputs"][:, 0]) <= set(first.values())
    np.testing.assert_array_equal(b["task_ids"], want)
    seen |= set(b["task_ids"].tolist())
  assert seen == {0, 1}
  # Same batches as without task ids; the state round-trips.
  state = it.get_state()
  nxt = next(it)
  plain = pipeline.InMemoryIterator(sources, 16, feature_lengths={"inputs": 48, "targets": 8},
                                    start_step=3)
  want = next(plain)
  assert sorted(want) == sorted(set(nxt) - {"task_ids"})
  for k, v in want.items():
    np.testing.assert_array_equal(v, nxt[k])
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["task_ids"], nxt["task_ids"])
  with pytest.raises(ValueError, match="unpacked rows"):
    pipeline.InMemoryIterator(sources, 16, feature_lengths={"inputs": 48, "targets": 8},
                              task_ids=ids, pack=True)
  with pytest.raises(ValueError, match="not among the prompt tasks"):
    inputs.source_task_ids(sources, ("synthetic_copy",))
  single = inputs.train_iterator("synthetic_copy", vocab=vocab(), global_batch_size=8,
                                 feature_lengths={"inputs": 48, "targets": 8}, num_examples=32,
                                 task_names=TASKS)
  assert np.all(next(single)["task_ids"] == 1)
  ev = inputs.eval_batches("synthetic_copy", vocab=vocab(), global_batch_size=8,
                           feature_lengths={"inputs": 48, "targets": 8}, num_examples=12,
                           task_names=TASKS)
  batches = [b for b, _ in ev]
  assert [b["task_ids"].tolist() for b in batches] == [[1] * 8, [1] * 4 + [0] * 4]


@pytest.mark.parametrize("preset,combine,placement", [("tiny", "concat", "prefix"),
                                                       ("tiny-llama", "add", "before_eos")])
def test_training_on_a_two_task_mixture(preset, combine, placement):
  """Loss falls on a sentiment + copy mixture; each row trains and decodes with its own task's
  prompt (decoding with task_ids equals decoding with each row's combined prompt)."""
  cfg = methods.make("prompt", length=4, shared_length=4, tasks=TASKS, combine=combine,
                     placement=placement)
  tr = make_trainer(cfg, preset=preset)
  sources = mixture()
  ids = inputs.source_task_ids(sources, TASKS)
  it = pipeline.InMemoryIterator(sources, 32, feature_lengths={"inputs": 48, "targets": 8},
                                 task_ids=ids)
  dev = [pipeline.tokenize_examples(synthetic.get_examples(t, 32, 99), vocab(), 48, 8, name=t)
         for t in TASKS]
  merged = pipeline.TokenizedExamples([s.inputs(i) for s in dev for i in range(len(s))],
                                      [s.targets(i) for s in dev for i in range(len(s))])
  ev = pipeline.EvalBatches(merged, 64, feature_lengths={"inputs": 48, "targets": 8},
                            task_ids=[0] * 32 + [1] * 32)
  st = tr.init_state()
  before = tr.evaluate(st.params, [b for b, _ in ev])["loss"]
  for _ in range(40):
    st, aux = tr.train_step(st, next(it))
  after = tr.evaluate(st.params, [b for b, _ in ev])["loss"]
  assert after < 0.7 * before, (before, after)
  assert tr.trace_counts["train"] == 1
  shared = np.asarray(st.params["prompt"][...])
  table = np.asarray(st.params["task_prompts"][...])
  assert np.abs(table[0] - table[1]).max() > 1e-3     # the two tasks' prompts trained apart
  (batch, _), = list(ev)
  pred = tr.decode(st.params, batch, 8)
  per_row = np.stack([combined(shared, table, t, combine, 1) for t in batch["task_ids"]])
  explicit = tr.decode(st.params, {k: batch[k] for k in ("inputs", "input_mask")}, 8,
                       prompts=per_row)
  np.testing.assert_array_equal(pred, explicit)
  swapped = tr.decode(st.params, dict(batch, task_ids=1 - batch["task_ids"]), 8)
  assert (swapped != pred).any()
  with pytest.raises(ValueError, match=r"task_ids'\] has ids outside \[0, 2\)"):
    tr.train_step(st, dict(next(it), task_ids=np.full(32, 2, np.int32)))


# ------------------------------------------------------------------------------ transfer
def save_run(out, cfg, steps=2, preset="tiny"):
  tr = make_trainer(cfg, preset=preset)
  st = tr.init_state()
  ds = sentiment_data(64)
  for i in range(steps):
    st, _ = tr.train_step(st, ds.train_batch(i, 8))
  ck = checkpoint.Checkpointer(os.path.join(out, "checkpoints"))
  ck.save(st, {"method": methods.describe(cfg)})
  ck.close()
  return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(st.params)}


def test_prompt_transfer_restores_the_other_runs_prompt_exactly(tmp_path):
  src = save_run(str(tmp_path / "a"), methods.make("prompt", length=4))
  np.testing.assert_array_equal(prompt_lib.init_prompt_from_run(str(tmp_path / "a")),
                                src["prompt"])
  m = models.build(models.preset("tiny"))
  methods.attach(m, methods.make("prompt", length=4, init_from_run=str(tmp_path / "a")))
  np.testing.assert_array_equal(np.asarray(m.prompt[...]), src["prompt"])
  # A multi-task run starts its shared prompt from it (and its table from zero).
  m = models.build(models.preset("tiny"))
  methods.attach(m, methods.make("prompt", length=4, tasks=("x", "y"),
                                 init_from_run=str(tmp_path / "a")))
  np.testing.assert_array_equal(np.asarray(m.prompt[...]), src["prompt"])
  # A multi-task source gives its shared prompt.
  multi = save_run(str(tmp_path / "m"), methods.make("prompt", length=4, tasks=TASKS), steps=0)
  np.testing.assert_array_equal(prompt_lib.init_prompt_from_run(str(tmp_path / "m")),
                                multi["prompt"])
  with pytest.raises(ValueError, match=r"prompt of shape \(4, 64\); this config needs \(5, 64\)"):
    methods.attach(models.build(models.preset("tiny")),
                   methods.make("prompt", length=5, init_from_run=str(tmp_path / "a")))
  with pytest.raises(ValueError, match="has no checkpoints directory"):
    prompt_lib.init_prompt_from_run(str(tmp_path / "nothing"))
  save_run(str(tmp_path / "l"), methods.make("lora", targets=("q",)), steps=0)
  with pytest.raises(ValueError, match="not a prompt-tuning run"):
    prompt_lib.init_prompt_from_run(str(tmp_path / "l"))


# ------------------------------------------------------------------------------ run layer
def run_config(out, task="synthetic_sentiment+synthetic_copy", **prompt):
  c = preset_config()   # the shapes and vocabulary of the helpers
  c.unlock()
  c.output_dir = str(out)
  c.method.prompt.update(**dict(dict(length=4), **prompt))
  c.data.update(task=task, num_train=64, num_eval=16)
  c.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=4,
                 eval_batch_size=16)
  c.lock()
  return c


def test_a_multi_task_run_trains_and_evaluates_each_row_with_its_task(tmp_path):
  """The run layer: a synthetic mixture's batches carry task_ids (train and eval), the method's
  tasks name them, a second run transfers the first one's shared prompt."""
  from prompt_tuning.run import build, loop
  c = run_config(tmp_path / "mt", tasks=TASKS, combine="concat", shared_length=2,
                 placement="before_eos", scope="both")
  exp = build.build(c)
  b = next(exp.train_it)
  first = vocab().encode("review:")[0]
  np.testing.assert_array_equal(b["task_ids"], np.where(b["inputs"][:, 0] == first, 0, 1))
  (ev, _), = list(exp.eval_sets["synthetic_sentiment+synthetic_copy"])
  assert ev["task_ids"].tolist() == [0] * 8 + [1] * 8
  res = loop.train(c)
  assert res["eval"]["synthetic_sentiment+synthetic_copy"]["num_examples"] == 16
  shared = prompt_lib.init_prompt_from_run(str(tmp_path / "mt"))
  assert shared.shape == (4, D)   # 2 vectors per stack
  c2 = run_config(tmp_path / "next", task="synthetic_copy", length=2, scope="both",
                  placement="before_eos", init_from_run=str(tmp_path / "mt"))
  (p,) = jax.tree.leaves(build.build(c2, with_data=False).trainer.init_state().params)
  np.testing.assert_array_equal(np.asarray(p), shared)


def test_layouts_other_tools_cannot_hold_are_refused(tmp_path):
  from prompt_tuning import interop
  from prompt_tuning.run import infer
  m = models.build(models.preset("tiny"))
  methods.attach(m, methods.make("prompt", length=2, placement="before_eos"))
  with pytest.raises(ValueError, match="export it as a prompt file"):
    interop.export_peft(m, methods.make("prompt", length=2), str(tmp_path / "peft"))
  m = models.build(models.preset("tiny"))
  methods.attach(m, methods.make("prompt", length=2, tasks=TASKS))
  with pytest.raises(ValueError, match="not one prompt file"):
    interop.export_prompt(m, str(tmp_path / "file"))
  # Mixed-task inference: every run's prompt must have the config's layout.
  from prompt_tuning.run.build import model_reference
  c = run_config(tmp_path / "x", task="synthetic_copy", placement="before_eos")
  ck = checkpoint.Checkpointer(str(tmp_path / "prefix_run" / "checkpoints"))
  tr = make_trainer(methods.make("prompt", length=4))
  ck.save(tr.init_state(), {"method": methods.describe(methods.make("prompt", length=4)),
                            "model": model_reference(c)})
  ck.close()
  with pytest.raises(ValueError, match="share one layout"):
    infer.infer_mixed(c, {"copy": str(tmp_path / "prefix_run")}, [("copy", "copy: x")])
