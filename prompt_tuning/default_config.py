"""The embedded default experiment: prompt tuning the tiny T5 pretrained in-repo
(prompt_tuning/assets/tiny_t5, made by scripts/pretrain_tiny_t5.py: span corruption then LM
adaptation on bundled text, with its own SentencePiece model) on a synthetic sentiment task it
never saw. Runs on a CPU in about a minute. Experiment configs under configs/ start from this one
(those that name a ``model.preset`` clear ``model.hf_checkpoint``)."""
import os

import ml_collections

from prompt_tuning import methods, sharding

# The shipped pretrained tiny T5: a Hugging Face checkpoint directory with its spiece.model.
TINY_T5 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tiny_t5")


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0                     # random init, data order, method init, dropout
  c.output_dir = "runs/tiny_default"   # checkpoints/, best/, metrics.jsonl, tensorboard/
  c.model = ml_collections.ConfigDict(dict(
      hf_checkpoint=TINY_T5,    # HF checkpoint directory, or a Hub id in the local HF cache
      preset="",                # or instead a preset (random init), e.g. "tiny-llama"
      random_init=False,        # True: hf_checkpoint's architecture with random weights (seed):
                                # the no-pretraining baseline
      dtype="float32",          # compute dtype
      frozen_dtype="",          # dtype of the frozen weights ("" = as loaded, e.g. "bfloat16")
      remat="none",             # "none" | "full" | "dots" (rematerialise all but matmul outputs)
      scan_layers=False,        # one jax.lax.scan over the layers (fast compiles, same numbers)
      attention_impl="xla",     # "xla" | "cudnn" (fused, GPU, bfloat16)
      allow_random_init=True,   # False: refuse to run without hf_checkpoint (paper configs)
      dropout_rate=0.0,         # dropout in the model while training (0: none)
  ))
  # method.name picks the tuning method; method.<name> holds its options (one section per
  # module of prompt_tuning/methods, with that module's defaults).
  # method.init_from: the initial trainable state instead of the method's own init: a PEFT
  # adapter directory (of the method's PEFT type) or a prompt file (.npy / .safetensors / a
  # directory written by `prompt-tuning export --format prompt`); a resumed run restores its
  # checkpoint.
  c.method = ml_collections.ConfigDict(dict(
      name="prompt",            # a method of prompt_tuning/methods: prompt | lora | dora | pissa |
                                # full | layers | prefix | ia3 | mask
      init_from="",             # a PEFT adapter directory or a prompt file to start from
      **methods.defaults()))
  # Lester et al. (2021) scaled to a 468k-parameter model: 10 prompt vectors (they use 100 on
  # 220M+ models), initialised from the class labels' embeddings (the rest sampled vocabulary).
  c.method.prompt.update(length=10, init="class_labels", class_labels=("positive", "negative"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="",                  # "" = the method's default (Adafactor for prompts, else AdamW)
      learning_rate=0.0,        # 0 = the method's default (0.3 for prompts)
      schedule="constant",      # "constant" | "linear" | "cosine" | "rsqrt" (after warmup_steps)
      warmup_steps=0,           # linear warm-up from 0 over this many steps
      decay_rate=0.8,           # Adafactor's second-moment decay exponent
      clipping_threshold=1.0,   # Adafactor's update clipping
      multiply_by_parameter_scale=False,   # Adafactor: scale updates by the parameters' RMS
      weight_decay=0.0,         # decoupled weight decay (AdamW; Adafactor: T5X's param *= 1 - rate)
      grad_clip_norm=0.0,       # clip the gradients' global norm to this (0: no clipping)
      step_offset=0,            # Adafactor's step counter starts here (T5X: the pretrained
                                # checkpoint's step, 1_100_000 for LM-adapted T5 1.1)
  ))
  c.data = ml_collections.ConfigDict(dict(
      task="synthetic_sentiment",  # synthetic task or a registered seqio task name
      eval_tasks=(),               # extra tasks evaluated with the trained params (domain shift)
      domain_shift="",             # a registered pair, e.g. "qqp_to_mrpc" (sets task/eval_tasks)
      num_train=2000,              # training examples (0: every example of the split)
      num_eval=256,                # dev examples evaluated (0: the whole split)
      few_shot=False,              # True: num_train examples sampled at random with `seed`
      instructions=False,          # prepend each task's natural-language instruction
                                   # (task may also be "taskA+taskB": an ad-hoc mixture)
      max_input_length=48,         # tokens per input (EOS included; prompts not counted)
      max_target_length=8,         # tokens per target (EOS included)
      truncate=False,              # cut longer examples (False: a longer one is an error)
      vocab="",                    # SentencePiece .model or tokenizer.json ("" = the checkpoint's
                                   # own tokenizer, else the in-repo tiny vocab)
      pack=False,                  # pack several examples per row (not with soft prompts)
      shuffle_buffer_size=0,       # streamed seqio tasks (0: seqio's default)
      download=False,              # let TFDS download missing datasets (else fail at once)
  ))
  # Your own data (prompt_tuning/data/files.py); train_file or hf_dataset replaces data.task,
  # and every example is used (num_train / num_eval do not apply).
  c.data.update(dict(
      train_file="",               # jsonl / json / csv / tsv file or glob
      eval_file="",                # the dev set (needed with train_file), same formats
      hf_dataset="",               # a Hugging Face dataset: save_to_disk directory, directory of
                                   # data files, or a name in the local HF cache (offline)
      hf_config="",                # its configuration name ("" = the default one)
      hf_train_split="train",      # the hf_dataset split to train on
      hf_eval_split="validation",  # the hf_dataset split to evaluate on
      input_template="",           # e.g. "review: {text}" ("" = the text / source / inputs field)
      target_field="",             # "" = the label / target / targets / output / answer field
      label_map="",                # e.g. "0=negative,1=positive": target value -> target text
      task_type="",                # classification | generation ("" = classification when the
                                   # target field is "label" or there is a label map)
      metrics="",                  # generation: some of exact_match,rouge,bleu ("" = exact_match)
      stream_above_mb=256,         # training files larger in total stream per host (0: always)
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,               # global batch (all hosts and devices together)
      num_steps=300,               # training steps in all (a resumed run trains up to this)
      log_every=25,                # loss / throughput to stdout, metrics.jsonl, TensorBoard
      eval_every=100,              # dev evaluation (at checkpoint steps)
      checkpoint_every=100,        # save the trainable state and the data iterator
      max_to_keep=3,               # checkpoints kept (best/ is kept apart)
      eval_batch_size=64,          # global batch of evaluation and inference
      max_decode_length=8,         # greedy decoding: tokens generated at most
      z_loss=0.0,                  # auxiliary log(Z)^2 loss weight (T5X)
      max_encoder_length=1024,     # prompt positions + max_input_length must fit in this
      divergence_factor=10.0,      # stop when the loss stays above this x its best ...
      divergence_patience=3,       # ... for this many logs in a row
      record_batches=False,        # debugging: save each host's batch of every step
  ))
  c.mesh = ml_collections.ConfigDict(dict(
      shape=(-1, 1, 1),           # (data, fsdp, model); -1 = all remaining devices. 2 entries
                                  # (older configs) mean (data, model), fsdp = 1
      # (logical axis, mesh axis | (mesh axes) | None) pairs, T5X / MaxText style: which mesh
      # axes split each named dimension of the weights and activations (prompt_tuning/sharding.py)
      axis_rules=sharding.DEFAULT_RULES,
      # multi-host: jax.distributed's coordinator, process count and this process ("", 0: one host)
      coordinator_address="", num_processes=0, process_id=0,
  ))
  c.lock()
  return c
