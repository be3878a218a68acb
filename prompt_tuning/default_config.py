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
  c.seed = 0
  c.output_dir = "runs/tiny_default"
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
      dropout_rate=0.0,
  ))
  # method.name picks the tuning method; method.<name> holds its options (one section per
  # module of prompt_tuning/methods, with that module's defaults).
  # method.init_from: the initial trainable state instead of the method's own init: a PEFT
  # adapter directory (prompt tuning or LoRA) or a prompt file (.npy / .safetensors / a directory
  # written by `prompt-tuning export --format prompt`); a resumed run restores its checkpoint.
  c.method = ml_collections.ConfigDict(dict(name="prompt", init_from="", **methods.defaults()))
  # Lester et al. (2021) scaled to a 468k-parameter model: 10 prompt vectors (they use 100 on
  # 220M+ models), initialised from the class labels' embeddings (the rest sampled vocabulary).
  c.method.prompt.update(length=10, init="class_labels", class_labels=("positive", "negative"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="",                  # "" = the method's default (Adafactor for prompts, else AdamW)
      learning_rate=0.0,        # 0 = the method's default (0.3 for prompts)
      schedule="constant", warmup_steps=0, decay_rate=0.8, clipping_threshold=1.0,
      multiply_by_parameter_scale=False, weight_decay=0.0, grad_clip_norm=0.0,
  ))
  c.data = ml_collections.ConfigDict(dict(
      task="synthetic_sentiment",  # synthetic task or a registered seqio task name
      eval_tasks=(),               # extra tasks evaluated with the trained params (domain shift)
      domain_shift="",             # a registered pair, e.g. "qqp_to_mrpc" (sets task/eval_tasks)
      num_train=2000, num_eval=256,
      few_shot=False,              # True: num_train examples sampled at random with `seed`
      instructions=False,          # prepend each task's natural-language instruction
                                   # (task may also be "taskA+taskB": an ad-hoc mixture)
      max_input_length=48, max_target_length=8, truncate=False,
      vocab="",                    # SentencePiece .model or tokenizer.json ("" = the checkpoint's
                                   # own tokenizer, else the in-repo tiny vocab)
      pack=False,                  # pack several examples per row (not with soft prompts)
      shuffle_buffer_size=0,       # streamed seqio tasks (0: seqio's default)
      download=False,              # let TFDS download missing datasets (else fail at once)
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, num_steps=300, log_every=25, eval_every=100, checkpoint_every=100,
      max_to_keep=3, eval_batch_size=64, max_decode_length=8, z_loss=0.0,
      max_encoder_length=1024,
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
      coordinator_address="", num_processes=0, process_id=0,
  ))
  c.lock()
  return c
