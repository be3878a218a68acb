"""Writes the Colab notebooks in this folder (run after editing the cells below)."""
import os

import nbformat as nbf

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''# On Colab: clone this repository into /content/prompt-tuning-jax first (or upload it).
import os, subprocess, sys
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e",
                    "/content/prompt-tuning-jax[tasks]"], check=True)
# Tests run these notebooks with PT_NOTEBOOK_SMALL=1: tiny step counts (and mock TFDS data).
SMALL = os.environ.get("PT_NOTEBOOK_SMALL") == "1"
import jax
print("JAX", jax.__version__, "devices:", jax.devices())'''


def nb(cells):
  book = nbf.v4.new_notebook()
  book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
  book.metadata["colab"] = {"provenance": []}
  for kind, src in cells:
    book.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
  return book


QUICKSTART = nb([
    ("md", "# Prompt tuning quickstart\n\nSoft-prompt tuning a tiny T5 (random init, made in-repo) "
           "on a synthetic sentiment task, with the library's Python API: build the model, attach "
           "a 20-vector prompt, train only the prompt with Adafactor (lr 0.3), decode."),
    ("code", SETUP),
    ("code", '''import numpy as np
from prompt_tuning import methods, models
from prompt_tuning.data import arrays, synthetic, vocab as vocab_lib
from prompt_tuning.trainer import Trainer

vocab = vocab_lib.default_vocab()          # SentencePiece trained on the bundled corpus
train = arrays.ArrayDataset(arrays.encode_examples(synthetic.sentiment_examples(1024), vocab, 48, 8))
dev = arrays.ArrayDataset(arrays.encode_examples(synthetic.sentiment_examples(128, seed=1), vocab, 48, 8))
print(synthetic.sentiment_examples(2))'''),
    ("code", '''model = models.build(models.preset("tiny"))
method = methods.make("prompt", length=20)
methods.attach(model, method, tokenize=vocab.encode)
trainer = Trainer(model, method)            # Adafactor, lr 0.3: the prompt-tuning defaults
print(f"trainable {trainer.num_trainable:,} of {trainer.num_trainable + trainer.num_frozen:,} parameters")
state = trainer.init_state()
losses = []
for step in range(30 if SMALL else 300):
    state, aux = trainer.train_step(state, train.train_batch(step, 32))
    losses.append(float(aux["loss"]))
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
assert losses[-1] < 0.5 * losses[0]'''),
    ("code", '''print(trainer.evaluate(state.params, dev.eval_batches(64)))
batch = dev.train_batch(0, 4)
for p, t in zip(trainer.decode(state.params, {"inputs": batch["inputs"]}, 8), batch["targets"]):
    print(repr(vocab.decode(p)), "target", repr(vocab.decode(t)))'''),
])

DOMAIN_SHIFT = nb([
    ("md", "# Domain shift: QQP -> MRPC\n\nLester et al. (2021) train a prompt on one paraphrase "
           "dataset and evaluate it zero-shot on the other. Both GLUE tasks are registered in one "
           "shared text format (`paraphrase sentence1: ... sentence2: ...` -> `equivalent` / "
           "`not_equivalent`), so the prompt transfers as is. With real data, point "
           "`model.hf_checkpoint` at a T5 checkpoint; here a tiny T5 keeps it quick. In tests "
           "(`PT_NOTEBOOK_SMALL=1`) TFDS is mocked, so no download happens."),
    ("code", SETUP),
    ("code", '''import contextlib, tempfile
import tensorflow_datasets as tfds
from prompt_tuning.default_config import get_config
from prompt_tuning.run import loop

c = get_config()
c.unlock()
c.output_dir = tempfile.mkdtemp(prefix="qqp_to_mrpc_")
c.method.prompt.length = 20
c.data.update(domain_shift="qqp_to_mrpc", num_train=64 if SMALL else 20000,
              num_eval=32 if SMALL else 2000, max_input_length=96, max_target_length=8,
              truncate=True)
c.train.update(batch_size=16, num_steps=6 if SMALL else 2000, log_every=3 if SMALL else 100,
               eval_every=6 if SMALL else 500, checkpoint_every=6 if SMALL else 500,
               eval_batch_size=32, max_decode_length=6)
c.lock()
data = tfds.testing.mock_data(num_examples=64) if SMALL else contextlib.nullcontext()
with data:
    result = loop.train(c)'''),
    ("code", '''for task, m in result["eval"].items():
    print(f"{task:24s} accuracy {m['accuracy']:6.2f}  F1 {m['f1']:6.2f}  perplexity {m['perplexity']:.3f}")
print("best checkpoint (dev perplexity on QQP):", result["best"])
assert set(result["eval"]) == {"glue_qqp_paraphrase", "glue_mrpc_paraphrase"}'''),
])

COMPARISON = nb([
    ("md", "# LoRA vs prompt tuning vs full fine-tuning\n\nThe same tiny T5 and synthetic task "
           "under three methods; the plot shows the training loss, the table the parameter "
           "counts and dev accuracy."),
    ("code", SETUP),
    ("code", '''import json, tempfile
from prompt_tuning.default_config import get_config
from prompt_tuning.run import loop

settings = {"prompt": dict(lr=0.0), "lora": dict(lr=3e-3), "full": dict(lr=1e-3)}
results = {}
for name, s in settings.items():
    c = get_config()
    c.unlock()
    c.output_dir = tempfile.mkdtemp(prefix=f"compare_{name}_")
    c.method.name = name
    c.method.prompt.length = 20
    c.optimizer.learning_rate = s["lr"]
    c.data.update(num_train=512 if SMALL else 2000, num_eval=64 if SMALL else 256)
    c.train.update(num_steps=20 if SMALL else 300, log_every=5 if SMALL else 10,
                   eval_every=20 if SMALL else 300, checkpoint_every=20 if SMALL else 300)
    c.lock()
    results[name] = loop.train(c)
    results[name]["curve"] = [json.loads(l) for l in open(f"{c.output_dir}/metrics.jsonl") if '"loss"' in l and '"eval"' not in l]'''),
    ("code", '''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 4))
for name, r in results.items():
    ax.plot([p["step"] for p in r["curve"]], [p["loss"] for p in r["curve"]], label=name)
ax.set_xlabel("step"); ax.set_ylabel("training loss"); ax.set_yscale("log"); ax.legend()
fig.tight_layout()
fig.savefig("/tmp/lora_vs_prompt.png", dpi=100)
for name, r in results.items():
    m = r["eval"]["synthetic_sentiment"]
    print(f"{name:7s} trainable {r['trainable_params']:>8,}  dev accuracy {m['accuracy']:.3f}  loss {m['loss']:.4f}")
assert results["prompt"]["trainable_params"] < results["lora"]["trainable_params"] < results["full"]["trainable_params"]'''),
])

if __name__ == "__main__":
  for name, book in (("prompt_tuning_quickstart", QUICKSTART),
                     ("domain_shift_qqp_mrpc", DOMAIN_SHIFT),
                     ("lora_vs_prompt", COMPARISON)):
    nbf.write(book, os.path.join(HERE, f"{name}.ipynb"))
    print("wrote", name)
