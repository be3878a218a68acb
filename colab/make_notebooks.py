"""Writes the Colab notebooks in this folder (run after editing the cells below); with
``--execute`` also runs each one and saves it with its outputs (commit them so).

  python colab/make_notebooks.py --execute
"""
import os

import nbformat as nbf

HERE = os.path.dirname(os.path.abspath(__file__))


# The repository the notebooks install from on Colab: set it once here (then rerun this script)
# or in each notebook's first cell.
REPO_URL = "https://github.com/YOUR-ORG/prompt-tuning-jax"


def setup(packages=()):
  """The first code cell: installs the library (a regular install, importable at once; an
  editable one would need a runtime restart) from REPO: a git repository, or the path of an
  uploaded copy. Tests run it as Colab would, from a fresh directory, with PT_NOTEBOOK_REPO (the
  local checkout), PT_NOTEBOOK_PIP_ARGS (no dependencies, into a scratch directory) and
  PT_NOTEBOOK_SMALL=1 (fewer steps)."""
  more = "".join(f"""
if importlib.util.find_spec({p!r}) is None:
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", {p!r}], check=True)"""
                 for p in packages)
  return f'''# >>> Where to install prompt-tuning-jax from: its git repository (your fork), or the
# path of an uploaded copy (e.g. "/content/prompt-tuning-jax" after uploading and unzipping it).
REPO = "{REPO_URL}"
# <<<
import importlib, os, subprocess, sys
REPO = os.environ.get("PT_NOTEBOOK_REPO", REPO)


def pip_install(extras=""):
  """Installs prompt-tuning-jax from REPO, with optional extras such as "[tasks]"."""
  if os.path.exists(REPO):
    spec = os.path.abspath(REPO) + extras
  elif "YOUR-ORG" in REPO:
    raise ValueError("set REPO in the first cell to the repository to install from, or upload "
                     "a copy of it and give its path")
  else:
    spec = f"prompt-tuning-jax{{extras}} @ git+{{REPO}}"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  *os.environ.get("PT_NOTEBOOK_PIP_ARGS", "").split(), spec], check=True)
  importlib.invalidate_caches()


pip_install(){more}
# Tests run these notebooks with PT_NOTEBOOK_SMALL=1: fewer steps.
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
    ("md", "# Prompt tuning quickstart\n\nThe library's default job (`prompt-tuning train` with "
           "no flags): prompt-tune the tiny T5 pretrained in this repository (468k parameters, "
           "`prompt_tuning/assets/tiny_t5`) on a synthetic sentiment task it never saw. Only 10 "
           "prompt vectors (960 parameters) are trained, initialised from the embeddings of the "
           "class labels, with Adafactor at lr 0.3; the model stays frozen. The dev accuracy is "
           "measured before training and every 25 steps. The same job on a randomly initialised "
           "copy of the model (`model.random_init=True`) shows what the pretraining contributes."),
    ("code", setup()),
    ("code", '''import json, os, tempfile
from prompt_tuning.data import synthetic
from prompt_tuning.default_config import get_config
from prompt_tuning.run import loop
from prompt_tuning.run.build import build
from prompt_tuning.run.evaluate import evaluate_all

TASK = "synthetic_sentiment"
for example in synthetic.sentiment_examples(3):
  print(example)


def config(random_init):
  """The default job, evaluated every 25 steps (evaluations run at checkpoint steps)."""
  c = get_config()
  c.unlock()
  c.output_dir = tempfile.mkdtemp(prefix="quickstart_")
  c.model.random_init = random_init
  c.data.num_eval = 128 if SMALL else 256
  c.train.update(num_steps=200 if SMALL else 300, eval_every=25, checkpoint_every=25)
  c.lock()
  return c


def run(c):
  """Trains; returns {step: dev metrics}, step 0 (the initial prompt) included: the training
  loop evaluates at checkpoints only, so step 0 is evaluated here on the same experiment."""
  exp = build(c)
  curve = {0: evaluate_all(exp, exp.trainer.init_state().params)[TASK]}
  loop.train(c)
  with open(os.path.join(c.output_dir, "metrics.jsonl")) as f:
    for record in map(json.loads, f):
      if "eval" in record:
        curve[record["step"]] = record["eval"][TASK]
  return curve'''),
    ("code", '''pretrained = config(random_init=False)
curves = {"pretrained": run(pretrained)}'''),
    ("md", "The same job with the architecture's weights drawn at random: the prompt has nothing "
           "to steer."),
    ("code", '''random_init = config(random_init=True)
curves["random init"] = run(random_init)'''),
    ("md", "Dev accuracy in percent. *accuracy*: the greedily generated text equals the label "
           "(0 at step 0: with the untrained prompt the model does not answer with a label). "
           "*rank*: the label the model gives the higher likelihood (rank classification; ~50% "
           "is chance)."),
    ("code", '''import matplotlib.pyplot as plt

print("step  pretrained: accuracy   rank  random init: accuracy   rank")
for step in curves["pretrained"]:
  p, r = curves["pretrained"][step], curves["random init"][step]
  print(f"{step:4d}  {p['accuracy']:20.1f} {p['rank_accuracy']:6.1f}"
        f"  {r['accuracy']:21.1f} {r['rank_accuracy']:6.1f}")

fig, ax = plt.subplots(figsize=(7, 4))
for (name, curve), color in zip(curves.items(), ("C0", "C1")):
  steps, metrics = list(curve), list(curve.values())
  ax.plot(steps, [m["accuracy"] for m in metrics], color=color, marker="o",
          label=f"{name}: accuracy")
  ax.plot(steps, [m["rank_accuracy"] for m in metrics], color=color, ls="--",
          label=f"{name}: rank")
ax.axhline(50, color="gray", lw=0.5)
ax.set_xlabel("training step"); ax.set_ylabel("dev accuracy (%)"); ax.legend(loc="lower right")
fig.tight_layout()
plt.show()

# The numbers tests/test_notebooks.py checks.
with open("quickstart_results.json", "w") as f:
  json.dump({name: {"step": list(curve),
                    "accuracy": [m["accuracy"] for m in curve.values()],
                    "rank_accuracy": [m["rank_accuracy"] for m in curve.values()]}
             for name, curve in curves.items()}, f)'''),
    ("md", "On the pretrained model the prompt first learns to answer with a label at all "
           "(accuracy from 0 to about 50%: one label for everything), then to pick the right one "
           "(to 100%). On the random model it never gets past chance.\n\n"
           "Decoding new reviews with the stored pretrained run, from Python:"),
    ("code", '''from prompt_tuning.run.infer import infer

texts = ["review: the farmer found a wonderful box near the sea",
         "review: my neighbour wrote about the dreadful storm"]
out = infer(pretrained, texts, rank=True)
for text, decoded, ranked in zip(texts, out["outputs"], out["ranked"]):
  scores = ", ".join(f"{label} {s:.2f}" for label, s in ranked["scores"].items())
  print(f"{text:55s} -> {decoded!r:11s} log-likelihoods: {scores}")'''),
    ("md", "The same from the command line: `prompt-tuning infer --run RUN` reads the model, "
           "method, tokenizer and task from the run itself; `--input_file` takes a jsonl file "
           "(one `{\"inputs\": ...}` per line, `-` for stdin) and writes each record with the "
           "decoded `output` and, for a classification task, the labels ranked by "
           "log-likelihood."),
    ("code", '''with open("reviews.jsonl", "w") as f:
  for i, text in enumerate(texts + ["review: a lovely and calm evening at the lake"]):
    f.write(json.dumps({"id": i, "inputs": text}) + "\\n")
# In a Colab cell: !prompt-tuning infer --run RUN --input_file reviews.jsonl --output_file ...
command = ["prompt-tuning", "infer", "--run", pretrained.output_dir,
           "--input_file", "reviews.jsonl", "--output_file", "predictions.jsonl"]
print("$", " ".join(command))
r = subprocess.run([sys.executable, "-m", "prompt_tuning.cli"] + command[1:],
                   capture_output=True, text=True)
print(r.stdout + r.stderr)
with open("predictions.jsonl") as f:
  for record in map(json.loads, f):
    print(record["id"], record["output"], record["ranked"]["label"],
          {label: round(s, 2) for label, s in record["ranked"]["scores"].items()})'''),
])

PEFT_EXPORT = nb([
    ("md", "# Export to PEFT, load in transformers\n\nA LoRA run on the pretrained tiny T5, "
           "exported as a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`, "
           "what `prompt-tuning export --format peft` writes), then loaded with "
           "`peft.PeftModel.from_pretrained` on top of "
           "`transformers.T5ForConditionalGeneration`. The PyTorch model gives the same logits "
           "as ours (float32, within 1e-4) and generates the same answers. A prompt-tuning run "
           "exports the same way, as a `PROMPT_TUNING` adapter."),
    ("code", setup(packages=("peft",))),
    ("code", '''import json, os, tempfile
from prompt_tuning.default_config import TINY_T5, get_config
from prompt_tuning.run import loop

c = get_config()
c.unlock()
c.output_dir = tempfile.mkdtemp(prefix="lora_")
c.method.name = "lora"             # rank 4, alpha 8 on q, k, v, o and the MLP
c.optimizer.learning_rate = 3e-3   # AdamW (LoRA's default) at 3x its lr: a short run
c.data.num_eval = 128 if SMALL else 256
steps = 40 if SMALL else 150
c.train.update(num_steps=steps, log_every=10, eval_every=steps, checkpoint_every=steps)
c.lock()
result = loop.train(c)
print(f"dev accuracy after {result['step']} steps: "
      f"{result['eval']['synthetic_sentiment']['accuracy']:.1f}%")'''),
    ("md", "Export. From a shell this is `prompt-tuning export --run RUN --format peft --out "
           "DIR` (the run's own config is read from its checkpoint)."),
    ("code", '''from prompt_tuning.run import export

adapter_dir = os.path.join(c.output_dir, "peft_adapter")
print(export.export(c, adapter_dir, "peft"))
with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
  adapter_config = json.load(f)
print({k: adapter_config[k] for k in ("peft_type", "task_type", "r", "lora_alpha",
                                      "target_modules", "base_model_name_or_path")})'''),
    ("md", "Our side: the trained run restored into the JAX model; a batch of dev examples "
           "tokenized with the checkpoint's SentencePiece model."),
    ("code", '''import numpy as np
from flax import nnx
from prompt_tuning import checkpoint
from prompt_tuning.data import arrays, synthetic
from prompt_tuning.run.build import build

exp = build(c, with_data=False)
ckpt = checkpoint.Checkpointer(os.path.join(c.output_dir, "checkpoints"))
state, _ = ckpt.restore(exp.trainer.init_state())
ckpt.close()
nnx.update(exp.model, state.params)   # the trained LoRA factors into the frozen model

examples = synthetic.sentiment_examples(8, seed=1)
batch = arrays.encode_examples(examples, exp.vocab, c.data.max_input_length,
                               c.data.max_target_length)
# Teacher forcing: the decoder reads the start token (0) and then the target shifted right.
decoder_inputs = np.pad(batch["targets"][:, :-1], ((0, 0), (1, 0)))
ours = np.asarray(exp.model(batch["inputs"], batch["input_mask"], decoder_inputs))
print("our logits", ours.shape)'''),
    ("md", "PyTorch side: the base checkpoint, then the adapter on it."),
    ("code", '''import peft, torch, transformers

def torch_logits(model):
  with torch.no_grad():
    return model(input_ids=torch.tensor(batch["inputs"], dtype=torch.long),
                 attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long),
                 decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long)).logits.numpy()

base = transformers.T5ForConditionalGeneration.from_pretrained(TINY_T5).eval()
plain = torch_logits(base)   # before PEFT injects the adapter into `base`
peft_model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
theirs = torch_logits(peft_model)
max_diff = float(np.abs(ours - theirs).max())
adapter_effect = float(np.abs(theirs - plain).max())
print(f"max |ours - PEFT| = {max_diff:.2e}   (the adapter itself moves the logits by up to "
      f"{adapter_effect:.2f})")'''),
    ("md", "Greedy generation with the PEFT model, next to our decoder (`infer`'s):"),
    ("code", '''from prompt_tuning.run.infer import decode_texts

texts = [e["inputs"] for e in examples]
with torch.no_grad():
  generated = peft_model.generate(
      input_ids=torch.tensor(batch["inputs"], dtype=torch.long),
      attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long),
      max_new_tokens=c.train.max_decode_length, do_sample=False, num_beams=1)
peft_texts = [exp.vocab.decode(ids[1:]) for ids in generated.tolist()]   # after the start token
our_texts = decode_texts(exp, state.params, texts)
for e, p, o in zip(examples, peft_texts, our_texts):
  print(f"target {e['targets']:9s} PEFT {p:9s} ours {o:9s} {e['inputs']}")

# The numbers tests/test_notebooks.py checks.
with open("peft_export_results.json", "w") as f:
  json.dump({"max_abs_diff": max_diff, "adapter_effect": adapter_effect,
             "generations_match": peft_texts == our_texts,
             "peft_accuracy": 100.0 * float(np.mean([p == e["targets"]
                                                    for p, e in zip(peft_texts, examples)]))},
            f)'''),
])

DOMAIN_SHIFT = nb([
    ("md", "# Domain shift: train a prompt on one domain, evaluate it zero-shot on another\n\n"
           "Lester et al. (2021) train a prompt on one paraphrase dataset (QQP) and evaluate it "
           "zero-shot on the other (MRPC). **This notebook uses small built-in data by default** "
           "and downloads nothing: the synthetic sentiment task in two domains, product reviews "
           "(`review: ...`) and comments about events (`comment: ... was ...`), with the same "
           "labels. Set `USE_GLUE = True` below for the paper's pair, which TFDS downloads "
           "(GLUE QQP and MRPC, about 42 MB; it installs the `[tasks]` extra: TensorFlow, seqio, "
           "TFDS) and which wants a real T5 checkpoint in `model.hf_checkpoint` to mean "
           "anything. Both pairs are one config key, `data.domain_shift`."),
    ("code", setup()),
    ("code", '''# >>> False: built-in reviews -> comments (no download). True: GLUE QQP -> MRPC.
USE_GLUE = False
# <<<
import tempfile
from prompt_tuning.data import synthetic
from prompt_tuning.default_config import get_config
from prompt_tuning.run import loop

c = get_config()
c.unlock()
c.output_dir = tempfile.mkdtemp(prefix="domain_shift_")
if USE_GLUE:
  pip_install("[tasks]")
  # QQP trains in its own T5 format (-> duplicate / not_duplicate); MRPC is evaluated in MRPC's,
  # the predicted label words mapped (duplicate -> equivalent), as prompt-tuning's glue_transfer.
  c.method.prompt.update(length=20, class_labels=("duplicate", "not_duplicate"))
  c.data.update(domain_shift="qqp_to_mrpc", num_train=20000, num_eval=2000, max_input_length=96,
                truncate=True, download=True)
  c.train.update(batch_size=16, num_steps=2000, log_every=100, eval_every=500,
                 checkpoint_every=500)
else:
  c.data.update(domain_shift="reviews_to_comments", num_train=512 if SMALL else 2000,
                num_eval=64 if SMALL else 256)
  c.train.update(num_steps=40 if SMALL else 300, log_every=20 if SMALL else 50,
                 eval_every=40 if SMALL else 100, checkpoint_every=40 if SMALL else 100)
  source, target = synthetic.DOMAIN_SHIFT_PAIRS["reviews_to_comments"]
  print("trained on:          ", synthetic.TASKS[source](1)[0])
  print("evaluated zero-shot: ", synthetic.TASKS[target](1)[0])
c.lock()
result = loop.train(c)'''),
    ("md", "Dev metrics of the trained prompt on both domains (the second one never seen in "
           "training). The checkpoint kept in `best/` is the one with the lowest dev perplexity "
           "on the training domain."),
    ("code", '''for task, m in result["eval"].items():
  print(f"{task:30s} accuracy {m['accuracy']:6.2f}  rank accuracy "
        f"{m.get('rank_accuracy', float('nan')):6.2f}  perplexity {m['perplexity']:.3f}")
print("best checkpoint (dev perplexity on the training domain):", result["best"])
assert len(result["eval"]) == 2'''),
])

COMPARISON = nb([
    ("md", "# LoRA vs prompt tuning vs full fine-tuning\n\nThe default job's pretrained tiny T5 "
           "and synthetic task under three methods; the plot shows the training loss, the table "
           "the parameter counts and dev accuracy."),
    ("code", setup()),
    ("code", '''import json, tempfile
from prompt_tuning.default_config import get_config
from prompt_tuning.run import loop

# lr 0: the method's default (Adafactor 0.3 for the prompt).
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
  with open(f"{c.output_dir}/metrics.jsonl") as f:
    results[name]["curve"] = [r for r in map(json.loads, f) if "loss" in r]'''),
    ("code", '''import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 4))
for name, r in results.items():
  ax.plot([p["step"] for p in r["curve"]], [p["loss"] for p in r["curve"]], label=name)
ax.set_xlabel("step"); ax.set_ylabel("training loss"); ax.set_yscale("log"); ax.legend()
fig.tight_layout()
fig.savefig("lora_vs_prompt.png", dpi=100)
plt.show()
for name, r in results.items():
  m = r["eval"]["synthetic_sentiment"]
  print(f"{name:7s} trainable {r['trainable_params']:>8,}  dev accuracy {m['accuracy']:5.1f}%  "
        f"loss {m['loss']:.4f}")
assert (results["prompt"]["trainable_params"] < results["lora"]["trainable_params"]
        < results["full"]["trainable_params"])'''),
])

def execute(path: str):
  """Runs a notebook top to bottom as Colab would (a fresh directory; its first cell installs
  this checkout, without dependencies, into a scratch directory that is the kernel's only path
  to the package) and saves it with its outputs, so it reads on GitHub."""
  import tempfile
  import nbclient
  with tempfile.TemporaryDirectory() as tmp:
    site, work = os.path.join(tmp, "site"), os.path.join(tmp, "work")
    os.makedirs(site)
    os.makedirs(work)
    env = {"PT_NOTEBOOK_REPO": os.path.dirname(HERE), "PYTHONPATH": site,
           "PT_NOTEBOOK_PIP_ARGS": f"--no-deps --no-build-isolation --target {site}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      book = nbf.read(path, as_version=4)
      nbclient.NotebookClient(book, timeout=3600, kernel_name="python3",
                              resources={"metadata": {"path": work}}).execute()
    finally:
      for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
  nbf.write(book, path)


if __name__ == "__main__":
  import sys
  chosen = [a for a in sys.argv[1:] if not a.startswith("--")]   # names: only these
  for name, book in (("prompt_tuning_quickstart", QUICKSTART),
                     ("peft_export", PEFT_EXPORT),
                     ("domain_shift_qqp_mrpc", DOMAIN_SHIFT),
                     ("lora_vs_prompt", COMPARISON)):
    if chosen and name not in chosen:
      continue
    path = os.path.join(HERE, f"{name}.ipynb")
    nbf.write(book, path)
    print("wrote", name)
    if "--execute" in sys.argv:   # full size: about 15 minutes on 2 CPU cores for all four
      execute(path)
      print("executed", name, flush=True)
