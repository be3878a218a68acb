"""Pretrains the tiny T5 shipped in prompt_tuning/assets/tiny_t5 (the embedded default job's model).

  python scripts/make_pretrain_corpus.py       # (re)writes the bundled corpus; deterministic
  python scripts/pretrain_tiny_t5.py           # writes prompt_tuning/assets/tiny_t5/

Recipe, scaled down from the papers that define it:

1. Vocabulary: a SentencePiece unigram model trained on the bundled corpus
   (prompt_tuning/data/assets/pretrain_corpus.txt, made by scripts/make_pretrain_corpus.py) with
   T5's special ids (pad 0, eos 1, unk 2), plus NUM_SENTINELS sentinel ids at the top of the
   embedding table (T5's <extra_id_i> = vocab_size - 1 - i).
2. Span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
   Text-to-Text Transformer", sec. 3.1.4 / 3.3): 15% of the tokens of a line are dropped in spans
   of mean length 3; the encoder sees the line with one sentinel per span, the decoder produces
   the sentinels followed by the dropped spans.
3. LM adaptation (Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient
   Prompt Tuning", sec. 3.1): training continues with the prefix-LM objective (a line is split
   before a random word; the encoder sees the prefix, the decoder produces the rest and EOS).
   Lester et al. found span-corruption-only T5 hard to prompt-tune (it has only ever produced
   sentinel-laden outputs) and this short continued training fixes it; they adapt for 100k steps
   after 1M+, we spend a larger share (1500 of 2500 steps) of a much shorter run.

The model is T5 v1.1 style (gated-GELU feed-forward, RMSNorm, bucketed relative positions, no
biases) with a tied, d_model**-0.5 scaled output head: transformers 5 always ties the T5 head
(an untied v1.1 head is not expressible there), so the checkpoint is what transformers 5 writes
for T5ForConditionalGeneration (config.json with tie_word_embeddings / scale_decoder_outputs,
model.safetensors) plus its spiece.model.

Model: d_model 96, 4 heads of 24, d_ff 192, 2 encoder + 2 decoder blocks, vocabulary 240 + 16
sentinels: 468k parameters, 1.9 MB of float32 safetensors. Training: AdamW (lr 3e-3, 100 warmup
steps, cosine decay to 3e-4, weight decay 0.01, clipping 1.0), batch 64 lines of <= 48 tokens,
1000 span-corruption steps then 1500 prefix-LM steps.

Everything is seeded (corpus, vocabulary, initialisation, batches, masks): two runs on one machine
write bit-identical files. A run takes about 9 minutes of CPU time (9 to 25 minutes wall on a
2-core machine, depending on what else runs). The downstream task of the demo
(synthetic_sentiment) is never trained on: see scripts/make_pretrain_corpus.py for what the
corpus holds and what it avoids.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from prompt_tuning import models  # noqa: E402

CORPUS = os.path.join(ROOT, "prompt_tuning", "data", "assets", "pretrain_corpus.txt")
OUT = os.path.join(ROOT, "prompt_tuning", "assets", "tiny_t5")
SPM_SIZE = 240          # SentencePiece pieces (every opinion word and both labels are one piece)
NUM_SENTINELS = 16      # span-corruption sentinels: ids SPM_SIZE .. SPM_SIZE + 15
D_MODEL, D_KV, D_FF, LAYERS, HEADS = 96, 24, 192, 2, 4   # 2 encoder + 2 decoder blocks
MAX_LEN = 48            # tokens per line (with EOS); longer lines are cut
PAD, EOS = 0, 1


# ------------------------------------------------------------------------------ library calls
# Every use of the library's model API is here (model construction, forward, greedy decoding,
# Hugging Face save and load).
def model_config():
  """T5 v1.1 wiring with the tied, d_model**-0.5-scaled head transformers 5 writes for T5."""
  from prompt_tuning.models import t5
  return t5.config(D_MODEL, D_FF, LAYERS, HEADS, d_kv=D_KV, vocab_size=SPM_SIZE + NUM_SENTINELS,
                   tie_word_embeddings=True, logits_scale=True, model_type="t5")


def forward(model, inputs, input_mask, decoder_inputs):
  return model(inputs, input_mask, decoder_inputs)


def save_hf(model, spm_path: str, out_dir: str):
  """config.json, model.safetensors and spiece.model (no torch / transformers needed), swapped
  into place at once."""
  tmp = out_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  models.save(model, tmp)
  shutil.copy(spm_path, os.path.join(tmp, "spiece.model"))
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)


# ------------------------------------------------------------------------------ objectives
def random_spans_noise_mask(length, rng, noise_density=0.15, mean_span=3.0):
  """T5's random_spans_noise_mask: exactly round(length * density) noise tokens in
  round(noise / mean_span) spans, alternating with non-noise spans, starting with non-noise."""
  num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
  num_spans = max(1, int(round(num_noise / mean_span)))
  num_nonnoise = length - num_noise

  def segment(n, k):  # n items into k non-empty segments, uniformly at random
    cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False)) if k > 1 else []
    return np.diff(np.concatenate([[0], cuts, [n]])).astype(int)

  num_spans = min(num_spans, num_noise, num_nonnoise)
  noise_lens, keep_lens = segment(num_noise, num_spans), segment(num_nonnoise, num_spans)
  mask = np.zeros(length, bool)
  pos = 0
  for keep, noise in zip(keep_lens, noise_lens):
    pos += keep
    mask[pos:pos + noise] = True
    pos += noise
  return mask


def span_corruption(ids, rng, vocab_size):
  """(inputs, targets) token lists, both ending in EOS."""
  ids = list(ids)
  mask = random_spans_noise_mask(len(ids), rng)
  inputs, targets, s = [], [], 0
  prev = False
  for tok, m in zip(ids, mask):
    if m and not prev:
      inputs.append(vocab_size - 1 - s)
      targets.append(vocab_size - 1 - s)
      s += 1
    if m:
      targets.append(tok)
    else:
      inputs.append(tok)
    prev = m
  if not mask[-1]:  # T5 ends the targets with the sentinel of the trailing kept tokens
    targets.append(vocab_size - 1 - s)
  return inputs + [EOS], targets + [EOS]


def prefix_lm(ids, rng, word_start):
  """(prefix + EOS, rest + EOS), split before a uniformly random word (not inside one: the
  continuation starts with a whole word, as the answers of downstream tasks do)."""
  cuts = [k for k in range(1, len(ids)) if word_start[ids[k]]] or list(range(1, len(ids)))
  k = cuts[int(rng.randint(len(cuts)))]
  return list(ids[:k]) + [EOS], list(ids[k:]) + [EOS]


def make_batch(lines, rng, batch_size, objective, vocab_size, word_start):
  inp = np.zeros((batch_size, MAX_LEN), np.int32)
  tgt = np.zeros((batch_size, MAX_LEN), np.int32)
  for b, i in enumerate(rng.randint(len(lines), size=batch_size)):
    if objective == "span":
      x, y = span_corruption(lines[i], rng, vocab_size)
    else:
      x, y = prefix_lm(lines[i], rng, word_start)
    inp[b, :len(x)], tgt[b, :len(y)] = x, y
  return inp, tgt


# ------------------------------------------------------------------------------ training
def train(args):
  from prompt_tuning.data import vocab as vocab_lib
  t_start = time.time()
  with open(args.corpus) as f:
    texts = [l.strip() for l in f if l.strip()]
  vocab_lib.spm.set_random_generator_seed(args.seed)
  spm_dir = os.path.join(args.work_dir, "spm")
  spm_path = vocab_lib.train_sentencepiece(texts, spm_dir, SPM_SIZE)
  vocab = vocab_lib.SentencePieceVocab(spm_path)
  if vocab.vocab_size != SPM_SIZE:
    raise SystemExit(f"SentencePiece made {vocab.vocab_size} pieces, expected {SPM_SIZE}")
  word_start = np.array([vocab.sp.id_to_piece(i).startswith("\u2581")
                         for i in range(vocab.vocab_size)] + [False] * NUM_SENTINELS)
  lines = [vocab.encode(t)[:MAX_LEN - 1] for t in texts]
  lines = [l for l in lines if len(l) >= 2]
  model = models.build(model_config(), seed=args.seed)
  graphdef, params = nnx.split(model, nnx.Param)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  vocab_size = model.cfg.vocab_size
  print(f"{len(lines)} lines, vocab {vocab_size}, {n_params:,} parameters", flush=True)

  total = args.span_steps + args.lm_steps
  lr = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup, total, args.lr * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, b2=0.99, weight_decay=0.01))
  opt_state = tx.init(params)

  def loss_fn(params, inp, tgt):
    m = nnx.merge(graphdef, params)
    dec_in = jnp.concatenate([jnp.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
    logits = forward(m, inp, (inp != PAD).astype(jnp.int32), dec_in)
    w = (tgt != PAD).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
    return jnp.sum(ce * w) / jnp.sum(w)

  @jax.jit
  def step(params, opt_state, inp, tgt):
    loss, grads = jax.value_and_grad(loss_fn)(params, inp, tgt)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.RandomState(args.seed)
  t0, losses = time.time(), []
  for s in range(total):
    objective = "span" if s < args.span_steps else "prefix_lm"
    inp, tgt = make_batch(lines, rng, args.batch_size, objective, vocab_size, word_start)
    params, opt_state, loss = step(params, opt_state, inp, tgt)
    losses.append(loss)
    if (s + 1) % args.log_every == 0 or s + 1 == total:
      print(f"step {s + 1:5d} [{objective}] loss {np.mean(jax.device_get(losses)):.3f}  "
            f"{(time.time() - t0) / len(losses):.3f} s/step", flush=True)
      t0, losses = time.time(), []

  model = nnx.merge(graphdef, params)
  save_hf(model, spm_path, args.out)
  size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
  print(f"wrote {args.out} ({size / 1e6:.2f} MB) after {time.time() - t_start:.0f} s", flush=True)
  check(model, args.out, vocab)


def check(model, path, vocab):
  """The written checkpoint reproduces the trained model, in our loader and (if installed) in
  transformers; prints a few continuations."""
  rng = np.random.RandomState(1)
  inp = rng.randint(3, SPM_SIZE, size=(3, 12)).astype(np.int32)
  mask = np.ones_like(inp)
  mask[1, 8:] = 0
  dec = rng.randint(3, SPM_SIZE, size=(3, 5)).astype(np.int32)
  dec[:, 0] = 0
  ref = np.asarray(forward(model, inp, mask, dec))
  ours = np.asarray(forward(models.load(path), inp, mask, dec))
  print(f"our loader: max |logit diff| {np.abs(ours - ref).max():.2e}")
  try:
    import torch
    import transformers
    hf = transformers.T5ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
      out = hf(input_ids=torch.tensor(inp, dtype=torch.long),
               attention_mask=torch.tensor(mask, dtype=torch.long),
               decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
    print(f"transformers: max |logit diff| {np.abs(out - ref).max():.2e}")
  except ImportError:
    print("transformers / torch not installed: HF parity not checked")
  prompts = ["the concert was excellent so the mood was", "the food was awful so the mood was",
             "the teacher walked to the sea . the weather was lovely .", "my sister felt"]
  x = np.zeros((len(prompts), MAX_LEN), np.int32)
  for i, p in enumerate(prompts):
    ids = vocab.encode(p) + [EOS]
    x[i, :len(ids)] = ids
  out = np.asarray(models.greedy_decode(model, x, (x != PAD).astype(np.int32), 12))
  for p, o in zip(prompts, out):
    print(f"  {p!r} -> {vocab.decode(o)!r}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--corpus", default=CORPUS)
  ap.add_argument("--out", default=OUT)
  ap.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "pretrain_tiny_t5"))
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--span_steps", type=int, default=1000)
  ap.add_argument("--lm_steps", type=int, default=1500)
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--warmup", type=int, default=100)
  ap.add_argument("--log_every", type=int, default=100)
  train(ap.parse_args())


if __name__ == "__main__":
  main()
