"""seqio task registry, offline: exact preprocessing text per task, TFDS mock data through
seqio and the feature converters, MLSum from real local jsonl files, and a domain-shift run."""
import json

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from prompt_tuning import tasks  # noqa: E402
from prompt_tuning.tasks import registry as R  # noqa: E402


def run(fmt, **features):
  ex = {k: tf.constant(v) if not isinstance(v, dict) else {kk: tf.constant(vv) for kk, vv in v.items()}
        for k, v in features.items()}
  out = fmt(ex)
  return {k: v.numpy().decode() if v.dtype == tf.string else str(v.numpy())
          for k, v in out.items()}


def test_superglue_text_formats():
  # T5's texts (string for string against the reference code: test_reference_parity.py).
  assert run(R.fmt_rte, premise="A dog runs.", hypothesis="An animal moves.", label=0) == {
      "inputs": "rte hypothesis: An animal moves. premise: A dog runs.", "targets": "entailment"}
  assert run(R.fmt_boolq, passage="Water is wet.", question="is water wet", label=1) == {
      "inputs": "boolq passage: Water is wet. question: is water wet", "targets": "True"}
  assert run(R.fmt_cb, premise="P.", hypothesis="H.", label=2) == {
      "inputs": "cb hypothesis: H. premise: P.", "targets": "neutral"}
  assert run(R.fmt_copa, premise="It rained.", choice1="Wet.", choice2="Dry.", question="effect",
             label=0) == {"inputs": "copa choice1: Wet. choice2: Dry. premise: It rained. "
                                    "question: effect", "targets": "choice1"}
  out = run(R.fmt_multirc, paragraph="<b>Sent 1: </b>Para.<br>", question="Q?", answer="A.",
            label=1, idx={"paragraph": 3, "question": 7, "answer": 1})
  assert out == {"inputs": "multirc question: Q? answer: A. paragraph: Sent 1: Para. ",
                 "targets": "True", "group": "7"}
  assert run(R.fmt_wic, word="bank", sentence1="S1.", sentence2="S2.", label=0) == {
      "inputs": "wic sentence1: S1. sentence2: S2. word: bank", "targets": "False"}
  assert run(R.fmt_wsc, text="Tom hit Bob because he was angry .", span1_text="Tom",
             span2_text="he", span2_index=4, label=1) == {
      "inputs": "wsc: Tom hit Bob because *he* was angry .", "targets": "Tom", "label": "1"}
  assert run(R.taskless(R.fmt_rte), premise="a", hypothesis="b", label=1) == {
      "inputs": "hypothesis: b premise: a", "targets": "not_entailment"}
  # Unlabeled test examples get T5's "<unk>" target.
  assert run(R.fmt_rte, premise="a", hypothesis="b", label=-1)["targets"] == "<unk>"


def test_record_one_row_per_answer():
  x = {"passage": tf.constant("Obama met Merkel.\n@highlight\nThey talked"),
       "query": tf.constant("@placeholder met Merkel"),
       "entities": tf.constant(["Obama", "Merkel"]), "answers": tf.constant(["Obama", "B. Obama"]),
       "idx": {"passage": tf.constant(2), "query": tf.constant(5)}}
  out = R.fmt_record(x)
  inputs = "record query: @placeholder met Merkel entities: Obama, Merkel passage: Obama met " \
           "Merkel. They talked"
  assert [v.decode() for v in out["inputs"].numpy()] == [inputs, inputs]
  assert [v.decode() for v in out["targets"].numpy()] == ["Obama", "B. Obama"]
  assert {v.decode() for v in out["group"].numpy()} == {"2-5"}
  assert {v.decode() for v in out["answers"].numpy()} == {"Obama\tB. Obama"}


def test_paraphrase_translation_summary_formats():
  qqp = run(R.fmt_qqp, question1="How?", question2="Why?", label=1)
  mrpc = run(R.fmt_mrpc, sentence1="How?", sentence2="Why?", label=0)
  assert qqp == {"inputs": "qqp question1: How? question2: Why?", "targets": "duplicate"}
  assert mrpc == {"inputs": "mrpc sentence1: How? sentence2: Why?", "targets": "not_equivalent"}
  assert run(R.fmt_translate("en", "de"), en="Hello.", de="Hallo.") == {
      "inputs": "translate English to German: Hello.", "targets": "Hallo."}
  assert run(R.fmt_translate("en", "zh"), en="Hello.", zh="你好。") == {
      "inputs": "translate English to Chinese: Hello.", "targets": "你好。"}
  assert run(R.fmt_summarize("summarize: ", "article", "highlights"), article="Doc.",
             highlights="Sum.") == {"inputs": "summarize: Doc.", "targets": "Sum."}


def test_registry_and_mixtures():
  for name in ["super_glue_boolq", "super_glue_cb", "super_glue_copa", "super_glue_multirc",
               "super_glue_record", "super_glue_rte", "super_glue_wic", "super_glue_wsc",
               "glue_qqp", "glue_mrpc", "wmt14_ende", "wmt19_enzh",
               "mlsum_de", "mlsum_es", "mlsum_fr", "cnn_dailymail_en"]:
    assert seqio.get_mixture_or_task(name) is not None
    if name.startswith(("super_glue_", "glue_")):
      assert seqio.get_mixture_or_task("taskless_" + name) is not None
  assert len(seqio.get_mixture_or_task("super_glue").tasks) == 8
  assert len(seqio.get_mixture_or_task("taskless_super_glue").tasks) == 8
  assert {t.name for t in seqio.get_mixture_or_task("mlsum").tasks} == {
      "mlsum_de", "mlsum_es", "mlsum_fr", "cnn_dailymail_en"}
  assert tasks.DOMAIN_SHIFT_PAIRS["qqp_to_mrpc"] == ("glue_qqp", "glue_mrpc_from_qqp")
  # The transfer evaluation task maps QQP's label words into MRPC's before scoring.
  ex = [{"targets": "equivalent"}, {"targets": "not_equivalent"}]
  assert tasks.score("glue_mrpc_from_qqp", ex, ["duplicate", "not_duplicate"]) == {
      "f1": 100.0, "accuracy": 100.0}
  assert tasks.score("glue_mrpc", ex, ["duplicate", "not_duplicate"])["accuracy"] == 0.0
  with pytest.raises(ValueError, match="unknown task"):
    tasks.text_examples("super_glue_nope", "validation", 1)


def test_mock_tfds_through_seqio_and_feature_converters():
  with tfds.testing.mock_data(num_examples=6):
    for name in ["super_glue_rte", "glue_qqp", "wmt14_ende", "cnn_dailymail_en"]:
      ex = tasks.text_examples(name, "validation", 3)
      assert len(ex) == 3 and all(e["inputs"] for e in ex)
    b = next(tasks.get_batches("super_glue_cb", "validation", {"inputs": 48, "targets": 6}, 4))
    assert b["inputs"].shape == (4, 48) and b["targets"].shape == (4, 6)
    # Targets are a class label + EOS; weights cover exactly the non-pad target tokens.
    np.testing.assert_array_equal(b["target_weights"] > 0, b["targets"] > 0)
    assert (b["targets"] == 1).sum(axis=1).max() == 1
    d = next(tasks.get_batches("super_glue_cb", "validation", {"inputs": 48, "targets": 6}, 4,
                               model_type="decoder_only"))
    assert d["decoder_target_tokens"].shape == (4, 54)
    # Decoder-only: loss only on the target part.
    lw, tok = d["decoder_loss_weights"], d["decoder_target_tokens"]
    assert 0 < lw.sum() < (tok > 0).sum()


def test_mlsum_reads_local_jsonl(tmp_path):
  rows = [{"text": "Der Hund lief schnell nach Hause.", "summary": "Hund läuft.", "topic": "x",
           "url": "u", "title": "t", "date": "d"},
          {"text": "Es regnet.", "summary": "Regen.", "topic": "x", "url": "u", "title": "t",
           "date": "d"}]
  with open(tmp_path / "de_val.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
  tasks.register_mlsum(str(tmp_path))
  try:
    ex = tasks.text_examples("mlsum_de", "validation")
    assert ex == [{"inputs": "Summarize the following document in German: Der Hund lief schnell "
                             "nach Hause.", "targets": "Hund läuft."},
                  {"inputs": "Summarize the following document in German: Es regnet.",
                   "targets": "Regen."}]
    b = next(tasks.get_batches("mlsum_de", "validation", {"inputs": 64, "targets": 16}, 2))
    assert b["inputs"].shape == (2, 64)
    assert tasks.score("mlsum_de", ex, ["Hund läuft.", "Sonne."])["rougeL"] == pytest.approx(50.0)
    with pytest.raises(FileNotFoundError, match="fr_val.jsonl"):
      tasks.text_examples("mlsum_fr", "validation")
  finally:
    tasks.register_mlsum(None)


def test_domain_shift_training_run(tmp_path):
  from prompt_tuning.run import loop
  from prompt_tuning.default_config import get_config
  c = get_config()
  c.unlock()
  c.output_dir = str(tmp_path)
  c.method.prompt.length = 8
  c.data.update(domain_shift="qqp_to_mrpc", num_train=32, num_eval=16, max_input_length=64,
                max_target_length=8, truncate=True)
  c.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=4,
                 eval_batch_size=16, max_decode_length=6)
  with tfds.testing.mock_data(num_examples=32):
    res = loop.train(c)
  assert set(res["eval"]) == {"glue_qqp", "glue_mrpc_from_qqp"}
  for m in res["eval"].values():
    assert {"accuracy", "f1", "loss", "perplexity"} <= set(m)
    assert 0.0 <= m["accuracy"] <= 100.0
  assert res["best"]["step"] == 4
  assert res["best"]["dev_perplexity"] == pytest.approx(
      res["eval"]["glue_qqp"]["perplexity"], rel=1e-5)


def test_multitask_mixture_with_instructions_and_held_out_eval(tmp_path):
  from prompt_tuning.run import loop
  from prompt_tuning.default_config import get_config
  with tfds.testing.mock_data(num_examples=16):
    # num_examples=0 / None means all of them, also for mixtures.
    assert len(tasks.text_examples("super_glue_rte+super_glue_cb", "validation", 0)) == 32
    assert len(tasks.text_examples("super_glue_rte+super_glue_cb", "validation", None)) == 32
    plain = tasks.text_examples("super_glue_rte+super_glue_cb", "validation", 4, seed=0)
    instr = tasks.text_examples("super_glue_rte+super_glue_cb", "validation", 4, seed=0,
                                instructions=True)
    # 4 examples split by the mixing rates (RTE 2490 : CB 250 training examples, at least one
    # each), interleaved by rate; nothing is cut to the shorter task.
    assert [e["inputs"].split(" ")[0] for e in plain] == ["rte", "cb", "rte", "rte"]
    assert instr[0]["inputs"] == tasks.INSTRUCTIONS["super_glue_rte"] + " " + plain[0]["inputs"]
    assert instr[1]["inputs"] == tasks.INSTRUCTIONS["super_glue_cb"] + " " + plain[1]["inputs"]
    c = get_config()
    c.unlock()
    c.output_dir = str(tmp_path)
    c.method.prompt.length = 4
    c.data.update(task="super_glue_rte+super_glue_cb", eval_tasks=("glue_mrpc",),
                  instructions=True, num_train=16, num_eval=8, max_input_length=96,
                  max_target_length=8, truncate=True)
    c.train.update(batch_size=8, num_steps=2, log_every=2, eval_every=2, checkpoint_every=2,
                   eval_batch_size=8, max_decode_length=4)
    c.lock()
    res = loop.train(c)
  mix = res["eval"]["super_glue_rte+super_glue_cb"]
  assert {"loss", "perplexity", "accuracy"} <= set(mix)       # exact match for the mixture
  held = res["eval"]["glue_mrpc"]
  assert {"accuracy", "f1"} <= set(held)                      # held-out task: its own metrics
