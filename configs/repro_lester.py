"""Small-scale reproduction of Lester, Al-Rfou & Constant (2021), "The Power of Scale for
Parameter-Efficient Prompt Tuning": its design, at a size that runs on a CPU; its numbers are not
comparable to the paper's.

Design reproduced (each run x 3 seeds, mean and std as in the paper):
  1. Prompt tuning vs model tuning (every weight trained) on each task of a benchmark suite, and
     the suite average (the paper: SuperGLUE, T5 1.1 LM-adapted, 60M to 11B parameters).
  2. Zero-shot domain transfer between two datasets of one task, both directions, prompt vs model
     tuning: train on one, evaluate on the other's dev set (the paper: QQP <-> MRPC paraphrase
     detection, accuracy and F1).

Small scale (the default, ``get_config()``): the tiny T5 pretrained in-repo (468k parameters)
instead of T5 1.1; synthetic stand-in tasks instead of TFDS data (this machine has none):
synthetic_sentiment, synthetic_sentiment_comments (the same labels in another domain) and
synthetic_copy for the suite, and the synthetic pair reviews <-> comments
(``data.domain_shift=reviews_to_comments`` / ``comments_to_reviews``) for QQP <-> MRPC. Prompt
length 10 (the paper: 100), 300 steps of 32 examples (the paper: 30k steps). Model tuning uses
the library's default for method 'full' (AdamW, lr 1e-4). There is no model-size axis: the
paper's headline (prompt tuning closes the gap as the model grows) needs a family of pretrained
sizes, and one tiny model ships. Measured (one seed): prompt tuning reaches ~100% dev accuracy on
both sentiment tasks but 12% on synthetic_copy, which the frozen tiny model cannot be prompted to
do in 300 steps: the suite has a task where model tuning should win.

  prompt-tuning sweep --config configs/repro_lester.py            # 30 runs
  python -m prompt_tuning.analysis.repro --config configs/repro_lester.py
  (or both: python -m prompt_tuning.analysis.repro --run_sweep --config configs/repro_lester.py)

The real tasks (``:real``, needs prepared TFDS super_glue / glue and a T5 checkpoint):

  prompt-tuning sweep --config configs/repro_lester.py:real \\
      --config.model.hf_checkpoint=/ckpt/t5-v1_1-lm-adapt-base
  python -m prompt_tuning.analysis.repro --config configs/repro_lester.py:real \\
      --config.model.hf_checkpoint=/ckpt/t5-v1_1-lm-adapt-base

The analysis writes repro_lester.md (both tables), repro_lester_suite.csv,
repro_lester_transfer.csv and repro_lester.png into output_dir.
"""
from prompt_tuning import optim
from prompt_tuning.default_config import get_config as base

SEEDS = (0, 1, 2)
METHODS = {"prompt": "prompt tuning", "full": "model tuning"}
# prompt-tuning's taskless tasks (T5's formats without the task word), as Lester et al. ran them.
SUPERGLUE = tuple(f"taskless_super_glue_{t}" for t in ("boolq", "cb", "copa", "multirc", "record",
                                                        "rte", "wic", "wsc"))
VARIANTS = {
    "small": dict(
        suite=("synthetic_sentiment", "synthetic_sentiment_comments", "synthetic_copy"),
        pairs=("reviews_to_comments", "comments_to_reviews"),
        setup="Lester et al. 2021 on the 468k-parameter tiny T5 with synthetic stand-ins for "
              "SuperGLUE (sentiment, sentiment in a second domain, copy) and for QQP <-> MRPC "
              "(reviews <-> comments)"),
    "real": dict(
        suite=SUPERGLUE, pairs=("taskless_qqp_to_mrpc", "taskless_mrpc_to_qqp"),
        setup="Lester et al. 2021 on SuperGLUE and QQP <-> MRPC"),
}


def get_config(variant: str = "small"):
  c = base()
  c.unlock()
  c.output_dir = f"runs/repro_lester{'' if variant == 'small' else '_' + variant}"
  c.method.name = "prompt"
  if variant == "real":
    # Needs pretrained weights: model.hf_checkpoint (T5 1.1 LM-adapted, any size).
    c.model.update(hf_checkpoint="", allow_random_init=False, dtype="bfloat16",
                   frozen_dtype="bfloat16")
    c.method.prompt.update(length=100, class_labels=(
        "True", "False", "entailment", "not_entailment", "contradiction", "neutral", "choice1",
        "choice2", "duplicate", "not_duplicate", "equivalent", "not_equivalent"))
    # Lester et al.'s Adafactor settings and z-loss; the optimizer and learning rate stay each
    # method's default (prompt tuning: Adafactor at 0.3). Weight decay is the prompt runs' alone
    # (get_sweep): their model tuning used T5X's fine-tuning Adafactor, without it.
    c.optimizer.update(**{k: v for k, v in optim.LESTER.items()
                          if k not in ("name", "learning_rate", "weight_decay")})
    c.train.z_loss = optim.LESTER_Z_LOSS
    c.data.update(num_train=0, num_eval=0, max_input_length=512, max_target_length=16,
                  truncate=True)
    c.train.update(batch_size=32, num_steps=30000, eval_every=1000, checkpoint_every=1000,
                   max_decode_length=16, max_encoder_length=612)
  elif variant != "small":
    raise ValueError(f"unknown variant {variant!r}; use one of {sorted(VARIANTS)}")
  c.lock()
  return c


def get_sweep(variant: str = "small"):
  v = VARIANTS[variant]
  tags = dict(paper="lester", scale=variant, setup=v["setup"])
  runs = []
  for part, key, values in (("suite", "data.task", v["suite"]),
                            ("transfer", "data.domain_shift", v["pairs"])):
    for value in values:
      for method, label in METHODS.items():
        for seed in SEEDS:
          over = {key: value, "method.name": method, "seed": seed}
          if variant == "real":
            over["optimizer.weight_decay"] = optim.LESTER["weight_decay"] if method == "prompt" \
                else 0.0
          runs.append(dict(
              name=f"{value}_{method}_seed{seed}", group=f"{value}_{method}",
              tags=dict(tags, part=part, task=value, method=label, seed=seed), **over))
  return runs
