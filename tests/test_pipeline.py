"""Input pipelines (issue 10): per-host slicing, exact resume, mixture rates, packing and exact
evaluation batches, for the in-memory path (no TensorFlow) and seqio streaming (mocked TFDS,
local MLSum files; offline)."""
import json
import sys

import numpy as np
import pytest

from prompt_tuning.data import pipeline as P

LENGTHS = {"inputs": 256, "targets": 256}


def wmt_like(n, seed=0, vocab_size=500):
  """Translation-shaped lengths: log-normal around ~30 tokens, at most 256, with EOS = 1."""
  rng = np.random.default_rng(seed)
  li = np.clip(np.round(rng.lognormal(np.log(30), 0.6, n)), 2, 256).astype(int)
  lt = np.clip(np.round(li * rng.lognormal(0, 0.25, n)), 2, 256).astype(int)
  seq = lambda k: np.concatenate([rng.integers(3, vocab_size, k - 1), [1]]).astype(np.int32)
  return P.TokenizedExamples([seq(k) for k in li], [seq(k) for k in lt],
                             [{"i": i} for i in range(n)], "wmt_like")


def small_task(n, seed=0, name="t"):
  rng = np.random.default_rng(seed)
  ins = [np.concatenate([rng.integers(3, 50, rng.integers(1, 12)), [1]]) for _ in range(n)]
  tgt = [np.concatenate([rng.integers(3, 50, rng.integers(1, 4)), [1]]) for _ in range(n)]
  return P.TokenizedExamples(ins, tgt, [{"targets": f"{name}{i}"} for i in range(n)], name)


def take(it, k):
  return [next(it) for _ in range(k)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------ in memory
def test_core_imports_without_tensorflow():
  import subprocess
  code = ("import sys; import prompt_tuning.data.pipeline, prompt_tuning.data.inputs; "
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("pack,model_type", [(False, "encoder_decoder"),
                                             (True, "encoder_decoder"),
                                             (True, "decoder_only")])
def test_host_slices_are_disjoint_and_make_the_global_batch(pack, model_type):
  data = [small_task(300, 0, "a"), small_task(100, 1, "b")]
  kw = dict(feature_lengths={"inputs": 32, "targets": 8}, rates=[2, 1], seed=5, pack=pack,
            model_type=model_type)
  whole = take(P.InMemoryIterator(data, 8, **kw), 6)
  hosts = [take(P.InMemoryIterator(data, 8, num_processes=4, process_index=p, **kw), 6)
           for p in range(4)]
  for s in range(6):
    for k in whole[s]:
      assert hosts[0][s][k].shape[0] == 2
      np.testing.assert_array_equal(np.concatenate([h[s][k] for h in hosts]), whole[s][k])
  with pytest.raises(ValueError, match="divisible"):
    P.InMemoryIterator(data, 8, num_processes=3, process_index=0, **kw)


def test_unpacked_single_task_batches_equal_the_former_array_dataset():
  from prompt_tuning.data import arrays
  data = small_task(37)
  lengths = {"inputs": 16, "targets": 6}
  old = arrays.ArrayDataset(
      {"inputs": data.padded(np.arange(37), 16, 6)["inputs"],
       "targets": data.padded(np.arange(37), 16, 6)["targets"],
       "input_mask": data.padded(np.arange(37), 16, 6)["input_mask"],
       "target_weights": data.padded(np.arange(37), 16, 6)["target_weights"]}, seed=3)
  it = P.InMemoryIterator(data, 8, feature_lengths=lengths, seed=3)
  for step in range(12):  # crosses epochs
    assert_batches_equal([next(it)], [old.train_batch(step, 8)])


def test_tokenize_examples_matches_encode_examples_with_a_nonzero_pad_id():
  from prompt_tuning.data import arrays

  class Vocab:  # GPT-2 style: padding is a real id, so only the masks tell what is real
    pad_id, eos_id = 7, 1

    def encode(self, text):
      return [3 + ord(c) % 40 for c in text]

  ex = [{"inputs": "abc" * k, "targets": "xy"[:k % 2 + 1]} for k in range(1, 9)]
  old = arrays.ArrayDataset(arrays.encode_examples(ex, Vocab(), 30, 4), seed=1)
  it = P.InMemoryIterator(P.tokenize_examples(ex, Vocab(), 30, 4), 4, seed=1,
                          feature_lengths={"inputs": 30, "targets": 4})
  for step in range(5):
    assert_batches_equal([next(it)], [old.train_batch(step, 4)])
  with pytest.raises(ValueError, match="longer than max_input_length"):
    P.tokenize_examples(ex, Vocab(), 10, 4)


@pytest.mark.parametrize("pack,model_type", [(False, "encoder_decoder"),
                                             (True, "encoder_decoder"),
                                             (True, "decoder_only")])
def test_in_memory_exact_resume(pack, model_type):
  data = [wmt_like(500), small_task(200, 1, "b")]
  kw = dict(feature_lengths=LENGTHS, rates=[3, 1], seed=1, pack=pack, model_type=model_type)
  it = P.InMemoryIterator(data, 16, **kw)
  take(it, 7)
  state = it.get_state()
  assert len(state) < 2000  # a step counter and, packed, the deferred examples
  ref = take(it, 5)
  fresh = P.InMemoryIterator(data, 16, **kw)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 5), ref)
  # The global batch does not depend on the process count: a state restores with another one.
  host = P.InMemoryIterator(data, 16, num_processes=2, process_index=1, **kw)
  host.set_state(state)
  assert_batches_equal(take(host, 5), [{k: v[8:] for k, v in b.items()} for b in ref])
  # Without a saved state, start_step replays (packed) or jumps (unpacked) to the same place.
  assert_batches_equal(take(P.InMemoryIterator(data, 16, start_step=7, **kw), 5), ref)
  with pytest.raises(ValueError, match="other options"):
    P.InMemoryIterator(data, 16, **dict(kw, seed=2)).set_state(state)


def test_mixture_schedule_honours_rates_exactly_and_statelessly():
  w = P.quantize_rates([0.5, 0.3, 0.15, 0.05])
  n = np.arange(0, 20001)
  counts = P._cumulative_counts(n, w)
  np.testing.assert_array_equal(counts.sum(0), n)
  assert (np.diff(counts, axis=1) >= 0).all()  # every task's stream only moves forward
  expect = np.outer(w / w.sum(), n)
  assert np.abs(counts - expect).max() <= 2
  task, pos = P.mixture_schedule(np.arange(1000, 1100), w)
  assert [(int(t), int(p)) for t, p in zip(task, pos)] == [
      (int(t), int(p)) for t, p in zip(*P.mixture_schedule(np.arange(1100), w))][1000:]


def test_in_memory_mixture_samples_by_rate_and_keeps_every_example():
  a, b = small_task(2000, 0, "a"), small_task(500, 1, "b")
  it = P.InMemoryIterator([a, b], 50, feature_lengths={"inputs": 16, "targets": 8},
                          rates=[0.8, 0.2])
  seen = {"a": set(), "b": set()}
  rows = 0
  for _ in range(100):  # 5000 rows: 4000 from a (two epochs), 1000 from b (two epochs)
    task, idx = it._examples(np.arange(it.step * 50, (it.step + 1) * 50))
    for t, i in zip(task, idx):
      seen["ab"[t]].add(int(i))
    next(it)
    rows += 50
  assert len(seen["a"]) == 2000 and len(seen["b"]) == 500
  task, _ = it._examples(np.arange(rows))
  assert abs((task == 1).mean() - 0.2) < 0.001
  # Default rates: proportional to the sizes (2000 : 500).
  it = P.InMemoryIterator([a, b], 50, feature_lengths={"inputs": 16, "targets": 8})
  task, _ = it._examples(np.arange(5000))
  assert abs((task == 1).mean() - 0.2) < 0.001


def _check_packed_encdec(batch, data_rows):
  """Segment ids 1..k then padding, positions restarting per segment, each example's inputs and
  targets intact in one segment with the same id."""
  for r, examples in enumerate(data_rows):
    for side, key in (("input", "inputs"), ("target", "targets")):
      seg, pos, tok = (batch[f"{side}_segment_ids"][r], batch[f"{side}_positions"][r],
                       batch[key][r])
      n = sum(len(e[0 if side == "input" else 1]) for e in examples)
      assert (seg[:n] > 0).all() and (seg[n:] == 0).all() and (tok[n:] == 0).all()
      at = 0
      for k, ex in enumerate(examples, start=1):
        seq = ex[0 if side == "input" else 1]
        np.testing.assert_array_equal(tok[at:at + len(seq)], seq)
        assert (seg[at:at + len(seq)] == k).all()
        np.testing.assert_array_equal(pos[at:at + len(seq)], np.arange(len(seq)))
        at += len(seq)
    np.testing.assert_array_equal(batch["input_mask"][r], batch["input_segment_ids"][r] > 0)
    np.testing.assert_array_equal(batch["target_weights"][r] > 0,
                                  batch["target_segment_ids"][r] > 0)


def test_packing_encoder_decoder_is_lossless_and_dense():
  data = wmt_like(3000)
  placed, fractions = [], []
  # A second packer on the same stream tells which examples each row of next(it) holds.
  it = P.InMemoryIterator(data, 32, feature_lengths=LENGTHS, pack=True, seed=0)
  ref_packer = P.Packer(it.packer.sizes, it.packer.capacity, 32, it.packer.min_size)
  for _ in range(10):
    rows = ref_packer.pack()
    batch = next(it)
    task, idx = it._examples(np.asarray([p for r in rows for p in r], np.int64))
    exs = iter([(data.inputs(i), data.targets(i)) for i in idx])
    _check_packed_encdec(batch, [[next(exs) for _ in r] for r in rows])
    placed += [p for r in rows for p in r]
    fractions.append(P.real_token_fraction(batch))
  # Every stream position before `next` is packed exactly once or is still deferred.
  assert len(placed) == len(set(placed))
  assert sorted(placed + ref_packer.pending) == list(range(ref_packer.next))
  assert ref_packer.state() == it.packer.state()
  unpacked = P.InMemoryIterator(data, 32, feature_lengths=LENGTHS)
  base = np.mean([P.real_token_fraction(next(unpacked)) for _ in range(10)])
  assert np.mean(fractions) >= 0.85 and base < 0.25, (np.mean(fractions), base)


def test_packing_decoder_only_layout():
  data = small_task(400)
  it = P.InMemoryIterator(data, 4, feature_lengths={"inputs": 16, "targets": 8}, pack=True,
                          model_type="decoder_only", packed_length=40)
  ref_packer = P.Packer(it.packer.sizes, it.packer.capacity, 4, it.packer.min_size)
  for _ in range(5):
    rows, b = ref_packer.pack(), next(it)
    assert b["tokens"].shape == (4, 40)
    for r, row in enumerate(rows):
      at = 0
      for k, p in enumerate(row, start=1):
        _, (i,) = it._examples(np.asarray([p]))
        inp, tgt = data.inputs(i), data.targets(i)
        n = len(inp) + len(tgt)
        np.testing.assert_array_equal(b["tokens"][r, at:at + n], np.concatenate([inp, tgt]))
        assert (b["segment_ids"][r, at:at + n] == k).all()
        np.testing.assert_array_equal(b["positions"][r, at:at + n], np.arange(n))
        # Loss only on target tokens (each predicted from the tokens before it).
        np.testing.assert_array_equal(b["loss_weights"][r, at:at + n],
                                      np.r_[np.zeros(len(inp)), np.ones(len(tgt))])
        at += n
      assert (b["segment_ids"][r, at:] == 0).all() and (b["loss_weights"][r, at:] == 0).all()


@pytest.mark.parametrize("n,batch,procs,multiple", [(37, 8, 1, 1), (37, 10, 2, 8),
                                                    (5, 16, 4, 8), (64, 16, 2, 1)])
def test_eval_batches_cover_every_example_once(n, batch, procs, multiple):
  data = small_task(n)
  hosts = [list(P.EvalBatches(data, batch, feature_lengths={"inputs": 16, "targets": 6},
                              num_processes=procs, process_index=p, pad_to_multiple=multiple))
           for p in range(procs)]
  assert len({len(h) for h in hosts}) == 1  # every host runs the same number of eval steps
  seen = []
  for h in hosts:
    for b, raw in h:
      rows = b["inputs"].shape[0]
      assert (rows * procs) % multiple == 0 and rows * procs >= batch
      v = b["valid"]
      assert (b["index"][~v] == -1).all() and (b["target_weights"][~v] == 0).all()
      assert (b["inputs"][~v] == 0).all()
      assert [r["targets"] for r in raw] == [f"t{i}" for i in b["index"][v]]
      full = data.padded(b["index"][v], 16, 6)
      np.testing.assert_array_equal(b["targets"][v], full["targets"])
      seen += b["index"][v].tolist()
  assert sorted(seen) == list(range(n))


def test_inputs_factory_synthetic_default_job():
  from prompt_tuning.data import inputs, vocab as vocab_lib
  v = vocab_lib.default_vocab()
  it = inputs.train_iterator("synthetic_sentiment", vocab=v, num_examples=100,
                             feature_lengths={"inputs": 48, "targets": 8}, global_batch_size=8)
  b = next(it)
  assert b["inputs"].shape == (8, 48)
  ev = inputs.eval_batches("synthetic_sentiment", vocab=v, num_examples=20,
                           feature_lengths={"inputs": 48, "targets": 8}, global_batch_size=8)
  got = [(b, raw) for b, raw in ev]
  assert len(got) == 3 and sum(int(b["valid"].sum()) for b, _ in got) == 20
  assert v.decode(got[0][0]["targets"][0]) == got[0][1][0]["targets"]


# ------------------------------------------------------------------------------ seqio
@pytest.fixture(scope="module")
def sq():
  pytest.importorskip("seqio")
  tfds = pytest.importorskip("tensorflow_datasets")
  from prompt_tuning import tasks
  from prompt_tuning.data import seqio_pipeline, vocab as vocab_lib
  # These tests compare with the in-repo vocabulary; an earlier run in this process may have
  # switched the registry to its own (e.g. the shipped T5's).
  tasks.set_vocabulary(vocab_lib.default_vocab().path)
  return tasks, seqio_pipeline, tfds


def _mlsum_dir(tmp_path, sizes):
  for (lang, split), n in sizes.items():
    with open(tmp_path / f"{lang}_{split}.jsonl", "w") as f:
      for i in range(n):
        f.write(json.dumps({"text": f"Dokument {lang} {split} {i} über das Wetter.",
                            "summary": f"{lang} {split} {i}", "url": "u"},
                           ensure_ascii=False) + "\n")
  return str(tmp_path)


@pytest.mark.parametrize("pack,model_type", [(False, "encoder_decoder"),
                                             (True, "encoder_decoder"),
                                             (True, "decoder_only"),
                                             ("first_fit", "encoder_decoder"),
                                             ("first_fit", "decoder_only")])
def test_seqio_exact_resume(sq, pack, model_type):
  tasks, SP, tfds = sq
  with tfds.testing.mock_data(num_examples=30):
    mk = lambda: SP.SeqioIterator("super_glue_rte", 4, feature_lengths={"inputs": 64,
                                                                         "targets": 8},
                                  pack=pack, model_type=model_type, seed=3)
    it = mk()
    take(it, 9)  # past the end of an epoch
    state = it.get_state()
    ref = take(it, 6)
    fresh = mk()
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 6), ref)
    if model_type == "decoder_only":
      b = ref[0]
      assert b["tokens"].shape == (4, 72)
      assert (b["loss_weights"][b["positions"] == 0] == 0).all()
      assert ((b["loss_weights"] > 0) <= (b["segment_ids"] > 0)).all()
    elif pack:
      b = ref[0]
      assert (b["input_segment_ids"].max(1) >= 1).all()
      assert set(np.unique(b["input_segment_ids"])) == set(np.unique(b["target_segment_ids"]))


def _line_task(tmp_path, num_files, lines_per_file):
  """A seqio task over local text files (one example per line), registered for the test."""
  import seqio
  import tensorflow as tf
  from prompt_tuning import metrics
  from prompt_tuning.tasks import registry as R
  from prompt_tuning.data.synthetic import NEUTRAL, POSITIVE
  words = sorted(set(NEUTRAL))  # known to the tiny vocabulary (digits are not)
  for f in range(num_files):
    with open(tmp_path / f"part{f}.txt", "w") as fh:
      fh.write("".join(f"{POSITIVE[f]} {words[i % len(words)]} {words[i // len(words)]} "
                       f"{' '.join(words[:i % 4])}\n" for i in range(lines_per_file)))
  spec = R.TaskSpec("test_lines", lambda x: {"inputs": x, "targets": tf.strings.substr(x, 0, 4)},
                    metrics.accuracy)
  R._register_task("test_lines", spec, seqio.TextLineDataSource(
      {"train": str(tmp_path / "part*.txt")}))
  return "test_lines"


@pytest.mark.parametrize("num_files", [1, 4])  # sharded by example / by file
def test_seqio_hosts_read_disjoint_shards(sq, tmp_path, num_files):
  tasks, SP, tfds = sq
  name = _line_task(tmp_path, num_files, 24 // num_files)
  kw = dict(feature_lengths={"inputs": 16, "targets": 4}, shuffle=False, num_epochs=1)
  whole = np.concatenate([b["inputs"] for b in SP.SeqioIterator(name, 4, **kw)])
  parts = [np.concatenate([b["inputs"] for b in SP.SeqioIterator(
      name, 4, num_processes=2, process_index=p, **kw)]) for p in range(2)]
  assert len(whole) == 24 and [len(p) for p in parts] == [12, 12]
  key = lambda a: sorted(map(bytes, a))
  assert key(np.concatenate(parts)) == key(whole)
  assert not set(map(bytes, parts[0])) & set(map(bytes, parts[1]))


def test_seqio_first_fit_packing_keeps_every_streamed_example_whole(sq, tmp_path):
  tasks, SP, tfds = sq
  name = _line_task(tmp_path, 1, 40)
  kw = dict(feature_lengths={"inputs": 16, "targets": 4}, shuffle=False)
  stream = [b["inputs"][0] for b in take(SP.SeqioIterator(name, 1, **kw), 120)]
  stream = [r[r > 0] for r in stream]
  it = SP.SeqioIterator(name, 4, pack="first_fit", **kw)
  got = []
  for b in take(it, 6):
    for r in range(4):
      seg = b["input_segment_ids"][r]
      for k in range(1, seg.max() + 1):
        np.testing.assert_array_equal(b["input_positions"][r][seg == k],
                                      np.arange((seg == k).sum()))
        got.append(b["inputs"][r][seg == k])
    assert P.real_token_fraction(b) > 0.5
  # The packed examples are exactly the stream's first `next` examples, less the deferred ones.
  expect = [stream[p] for p in range(it.packer.next) if p not in it.packer.pending]
  assert sorted(map(bytes, got)) == sorted(map(bytes, expect))
  assert len(it._buf) < 2 * SP.SeqioIterator._CHUNK  # a bounded window, not the stream


def test_seqio_mixture_rates(sq, tmp_path):
  tasks, SP, tfds = sq
  from prompt_tuning.data import vocab as vocab_lib
  v = vocab_lib.default_vocab()
  # Registered mixtures: examples-proportional (published sizes when TFDS has no metadata).
  import seqio
  sg = seqio.get_mixture_or_task("super_glue")
  assert {t.name: sg.get_rate(t) for t in sg.tasks}["super_glue_cb"] == 250.0
  # ReCoRD and WSC: T5's weights (rows per answer; WSC's positive training rows).
  assert {t.name: sg.get_rate(t) for t in sg.tasks}["super_glue_record"] == 138854.0
  assert {t.name: sg.get_rate(t) for t in sg.tasks}["super_glue_wsc"] == 259.0
  # MLSum: sizes counted from the local files (it used to be 1.0 against CNN/DM's 287k).
  tasks.register_mlsum(_mlsum_dir(tmp_path, {("de", "train"): 30, ("fr", "train"): 10,
                                             ("de", "val"): 3, ("fr", "val"): 2}))
  try:
    mix = tasks.provider("mlsum")
    rates = {t.name: mix.get_rate(t) for t in mix.tasks}
    assert rates == {"mlsum_de": 30.0, "mlsum_es": 266367.0, "mlsum_fr": 10.0,
                     "cnn_dailymail_en": 287113.0}
    assert tasks.mixture_tasks("mlsum_de+mlsum_fr") == [("mlsum_de", 30.0), ("mlsum_fr", 10.0)]
    # Ad-hoc mixtures are sampled by rate while streaming, not zipped to the shorter task.
    it = SP.SeqioIterator("mlsum_de+mlsum_fr", 20, feature_lengths={"inputs": 48,
                                                                     "targets": 16}, seed=0)
    langs = [v.decode(row).split(" ")[0] for b in take(it, 20) for row in b["targets"]]
    assert abs(langs.count("fr") / len(langs) - 0.25) < 0.06, langs.count("fr")
    it = SP.SeqioIterator("mlsum_de:1+mlsum_fr:1", 20, feature_lengths={"inputs": 48,
                                                                         "targets": 16})
    langs = [v.decode(row).split(" ")[0] for b in take(it, 20) for row in b["targets"]]
    assert abs(langs.count("fr") / len(langs) - 0.5) < 0.06, langs.count("fr")
    # In memory: every example of both dev sets (3 + 2), interleaved by rate.
    ex = tasks.text_examples("mlsum_de+mlsum_fr", "validation")
    assert sorted(e["targets"] for e in ex) == ["de val 0", "de val 1", "de val 2",
                                                "fr val 0", "fr val 1"]
  finally:
    tasks.register_mlsum(None)


def test_seqio_eval_batches_cover_every_example_once_with_raw_targets(sq):
  tasks, SP, tfds = sq
  from prompt_tuning.data import vocab as vocab_lib
  v = vocab_lib.default_vocab()
  lengths = {"inputs": 96, "targets": 8}
  with tfds.testing.mock_data(num_examples=11):
    hosts = [list(SP.SeqioEvalBatches("super_glue_multirc", 3, feature_lengths=lengths,
                                      num_processes=2, process_index=p, pad_to_multiple=4))
             for p in range(2)]
    ref = tasks.text_examples("super_glue_multirc", "validation")
    mixed = list(SP.SeqioEvalBatches("super_glue_rte+super_glue_cb", 8, feature_lengths=lengths))
  assert len(hosts[0]) == len(hosts[1]) == 3  # 6 + 5 examples, 2 rows per host and batch
  seen = {}
  for h in hosts:
    for b, raw in h:
      assert b["inputs"].shape == (2, 96)
      assert len(raw) == b["valid"].sum() and (b["index"][~b["valid"]] == -1).all()
      assert (b["target_weights"][~b["valid"]] == 0).all()
      for i, r, t in zip(b["index"][b["valid"]], raw, b["targets"][b["valid"]]):
        assert t[t > 0].tolist() == v.encode(r["targets"]) + [1]  # (the tiny vocab has no "F")
        seen[int(i)] = r
  assert sorted(seen) == list(range(11))
  # Raw fields (with the metric extras) in dev-set order, as text_examples reads them.
  assert [seen[i] for i in range(11)] == ref
  assert "group" in ref[0]
  assert sum(int(b["valid"].sum()) for b, _ in mixed) == 22
  # A mixture's dev sets follow each other (in the order of seqio's Mixture.tasks).
  assert [r["task"] for _, raw in mixed for r in raw] == ["super_glue_cb"] * 11 + \
      ["super_glue_rte"] * 11


def test_record_eval_reads_every_answer_row_in_memory(sq):
  """ReCoRD makes a row per answer: its dev set is read in memory (the streamed eval counts
  source examples and would run past them), alone and inside a mixture."""
  tasks, SP, tfds = sq
  from prompt_tuning.data import inputs
  from prompt_tuning.data import vocab as vocab_lib
  v = vocab_lib.default_vocab()
  lengths = {"inputs": 256, "targets": 16}
  with tfds.testing.mock_data(num_examples=5):
    for task in ("super_glue_record", "super_glue_rte+super_glue_record"):
      ev = inputs.eval_batches(task, vocab=v, feature_lengths=lengths, global_batch_size=4,
                               truncate=True)
      rows = [r for _, raw in ev for r in raw]
      assert not isinstance(ev, SP.SeqioEvalBatches)
      assert rows == [dict(r, task=t) if "+" in task else r for t, _ in
                      tasks.mixture_tasks(task) for r in tasks.text_examples(t, "validation")]


def test_seqio_tokens_equal_in_memory_tokens(sq):
  tasks, SP, tfds = sq
  from prompt_tuning.data import vocab as vocab_lib
  lengths = {"inputs": 96, "targets": 8}
  with tfds.testing.mock_data(num_examples=6):
    ex = tasks.text_examples("super_glue_rte", "validation")
    (b, raw), = list(SP.SeqioEvalBatches("super_glue_rte", 8, feature_lengths=lengths))
  mem = P.tokenize_examples(ex, vocab_lib.default_vocab(), 96, 8, truncate=True)
  full = mem.padded(np.arange(6), 96, 8)
  np.testing.assert_array_equal(b["inputs"][:6], full["inputs"])
  np.testing.assert_array_equal(b["targets"][:6], full["targets"])


def test_mlsum_streams_and_resumes(sq, tmp_path):
  tasks, SP, tfds = sq
  tasks.register_mlsum(_mlsum_dir(tmp_path, {("de", "train"): 25, ("de", "val"): 5}))
  try:
    mk = lambda: SP.SeqioIterator("mlsum_de", 4, feature_lengths={"inputs": 48, "targets": 16},
                                  seed=1, num_processes=2, process_index=1)
    it = mk()
    take(it, 4)
    state = it.get_state()
    ref = take(it, 4)
    fresh = mk()
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), ref)
    (b, raw), = list(SP.SeqioEvalBatches("mlsum_de", 8, feature_lengths={"inputs": 48,
                                                                          "targets": 16}))
    assert [r["targets"] for r in raw] == [f"de val {i}" for i in range(5)]
  finally:
    tasks.register_mlsum(None)


def test_write_cache_and_read_it(sq, tmp_path):
  tasks, SP, tfds = sq
  import seqio
  lengths = {"inputs": 64, "targets": 8}
  with tfds.testing.mock_data(num_examples=12):
    SP.write_cache("super_glue_rte", str(tmp_path), splits=("train", "validation"), num_shards=4)
    seqio.add_global_cache_dirs([str(tmp_path)])
    task = seqio.get_mixture_or_task("super_glue_rte")
    task._cache_dir = None  # looked up again
    it = SP.SeqioIterator("super_glue_rte", 4, feature_lengths=lengths, seed=0,
                          num_processes=2, process_index=0)
    assert it.use_cached
    take(it, 3)
    state = it.get_state()
    ref = take(it, 3)
    fresh = SP.SeqioIterator("super_glue_rte", 4, feature_lengths=lengths, seed=0,
                             num_processes=2, process_index=0)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 3), ref)
    cached = list(SP.SeqioEvalBatches("super_glue_rte", 16, feature_lengths=lengths,
                                      use_cached=True))
    direct = list(SP.SeqioEvalBatches("super_glue_rte", 16, feature_lengths=lengths))
  # The same examples (a cache is read in its own shard order; `index` follows that order).
  rows = lambda evs: sorted((bytes(t), r["inputs"]) for b, raw in evs
                            for t, r in zip(b["targets"][b["valid"]], raw))
  assert len(rows(cached)) == 12 and rows(cached) == rows(direct)
  assert sorted(i for b, _ in cached for i in b["index"][b["valid"]]) == list(range(12))
  seqio.utils.set_global_cache_dirs([])
  task._cache_dir = None


def test_inputs_factory_seqio_subset_in_memory_and_full_set_streamed(sq):
  tasks, SP, tfds = sq
  from prompt_tuning.data import inputs, vocab as vocab_lib
  v = vocab_lib.default_vocab()
  kw = dict(vocab=v, feature_lengths={"inputs": 96, "targets": 8}, global_batch_size=8)
  with tfds.testing.mock_data(num_examples=20):
    mem = inputs.train_iterator("super_glue_rte:1+super_glue_cb:1", num_examples=12,
                                truncate=True, **kw)
    assert isinstance(mem, P.InMemoryIterator)
    assert [len(s) for s in mem.sources] == [6, 6] and mem.rates == [1.0, 1.0]
    streamed = inputs.train_iterator("super_glue_rte", **kw)
    assert isinstance(streamed, SP.SeqioIterator)
    assert next(streamed)["inputs"].shape == (8, 96)
    ev = inputs.eval_batches("super_glue_rte", num_examples=10, pad_to_multiple=4, **kw)
    assert isinstance(ev, SP.SeqioEvalBatches) and len(ev) == 2
    assert sum(int(b["valid"].sum()) for b, _ in ev) == 10


def test_streamed_tasks_tokenize_with_the_runs_vocabulary(sq, tmp_path):
  tasks, SP, tfds = sq
  from prompt_tuning.data import vocab as vocab_lib
  other = vocab_lib.default_vocab(vocab_size=150, cache_dir=str(tmp_path))
  before = tasks.vocabulary_path()
  lengths = {"inputs": 96, "targets": 8}
  try:
    with tfds.testing.mock_data(num_examples=4):
      (b, raw), = list(SP.SeqioEvalBatches("super_glue_rte", 4, feature_lengths=lengths,
                                           vocab_path=other.path))
    assert tasks.vocabulary_path() == other.path
    assert b["inputs"][0][b["inputs"][0] > 0].tolist() == other.encode(raw[0]["inputs"]) + [1]
  finally:
    tasks.set_vocabulary(before)
