"""Small-scale reproduction of Albalak et al. (2022), "Data-Efficiency with a Single GPU: An
Exploration of Transfer Methods for Small Language Models": its design, at a size that runs on a
CPU; its numbers are not comparable to the paper's.

Design reproduced: model size (base vs large) x multi-task learning (MTL: first trained on
auxiliary tasks, or not) x instructions (each task's instruction prepended, or not) x few-shot
training on the target task with k = 10 / 50 / 100 examples, each k with 3 seeds (the sample and
the training); the MTL model is also evaluated zero-shot on the target. Table: mean and std over
the seeds per cell.

Two stages: an MTL run per (size, instructions) trains on the auxiliary mixture and evaluates
the target zero-shot; each MTL few-shot run starts from it. What is tuned differs from the paper,
which fine-tunes every weight: here a soft prompt is tuned in both stages (the few-shot run starts
from the MTL run's prompt, ``method.prompt.init_from_run``: prompt transfer as in SPoT).

Small scale (the default): target synthetic_sentiment; auxiliary tasks synthetic_copy (unrelated,
the paper's general-purpose MTL) and synthetic_sentiment_comments (same labels in another domain,
the paper's in-domain MTL), mixed equally, 2000 examples, 300 steps. Few-shot runs: 300 steps of
8. Model size: only one pretrained tiny model ships, and pretraining another is out of reach
here, so "base" is the pretrained tiny T5 truncated to its first encoder and first decoder layer
(247k parameters, ``models.truncated``: the same pretrained weights, never trained at that depth)
and "large" the whole model (2 + 2 layers, 468k parameters). That is a depth axis sharing one
pretraining, a stand-in for the paper's separately pretrained sizes, and it need not order like
the paper's: prompt-tuned for 100 steps of 32, the truncated model reached 98% dev accuracy and
the whole model 53% (it needs about 300 steps).

  prompt-tuning sweep --config configs/repro_albalak.py           # 4 MTL + 72 few-shot runs
  python -m prompt_tuning.analysis.repro --config configs/repro_albalak.py
  (or both: python -m prompt_tuning.analysis.repro --run_sweep --config configs/repro_albalak.py)

The real tasks (``:real``: BART base and large from the local Hugging Face cache, RTE few-shot,
MTL on BoolQ, CB, COPA, MultiRC and QQP; needs prepared TFDS super_glue / glue):

  python -m prompt_tuning.analysis.repro --run_sweep --config configs/repro_albalak.py:real

The analysis writes repro_albalak.md, repro_albalak.csv and repro_albalak.png into output_dir.
"""
from prompt_tuning import models
from prompt_tuning.default_config import TINY_T5, get_config as base

SHOTS = (10, 50, 100)
SEEDS = (0, 1, 2)
VARIANTS = {
    "small": dict(
        target="synthetic_sentiment",
        auxiliary="synthetic_copy+synthetic_sentiment_comments", auxiliary_examples=2000,
        source_steps=300,
        setup="Albalak et al. 2022 on the 468k-parameter tiny T5 (large) and its first encoder "
              "and decoder layer (base: truncated, not re-pretrained), prompt tuning, synthetic "
              "target (sentiment) and auxiliary tasks (copy, sentiment in another domain)"),
    "real": dict(
        target="super_glue_rte",
        auxiliary="super_glue_boolq+super_glue_cb+super_glue_copa+super_glue_multirc"
                  "+glue_qqp", auxiliary_examples=0, source_steps=20000,
        setup="Albalak et al. 2022 with BART base / large, prompt tuning, RTE few-shot"),
}


def sizes(variant: str) -> dict[str, str]:
  """Model size -> checkpoint (the small variant's "base" is made once, into the cache)."""
  if variant == "small":
    return {"base": models.truncated(TINY_T5, 1, 1), "large": TINY_T5}
  return {"base": "facebook/bart-base", "large": "facebook/bart-large"}


def get_config(variant: str = "small"):
  c = base()
  c.unlock()
  c.output_dir = f"runs/repro_albalak{'' if variant == 'small' else '_' + variant}"
  c.method.name = "prompt"
  c.data.update(task=VARIANTS[variant]["target"], few_shot=True, num_train=SHOTS[0])
  c.train.update(batch_size=8, num_steps=300, eval_every=300, checkpoint_every=300)
  if variant == "real":
    # Needs pretrained weights: the BART checkpoints of sizes() in the local HF cache.
    c.model.update(hf_checkpoint="facebook/bart-base", allow_random_init=False)
    c.method.prompt.update(length=50, class_labels=("entailment", "not_entailment"))
    c.data.update(num_eval=0, max_input_length=256, max_target_length=8, truncate=True)
    c.train.update(num_steps=500, eval_every=500, checkpoint_every=500)
  elif variant != "small":
    raise ValueError(f"unknown variant {variant!r}; use one of {sorted(VARIANTS)}")
  c.lock()
  return c


def get_sweep(variant: str = "small"):
  v = VARIANTS[variant]
  tags = dict(paper="albalak", scale=variant, setup=v["setup"], target=v["target"])
  runs = []
  for size, ckpt in sizes(variant).items():
    for instructions in (False, True):
      cell = dict(size=size, instructions=instructions)
      source = f"{size}_mtl_source{'_instr' if instructions else ''}"
      common = {"model.hf_checkpoint": ckpt, "data.instructions": instructions}
      # Stage 1: the auxiliary mixture; the target is evaluated zero-shot.
      runs.append(dict(name=source, tags=dict(tags, part="mtl_source", mtl=True, **cell), **{
          **common, "data.task": v["auxiliary"], "data.eval_tasks": (v["target"],),
          "data.few_shot": False, "data.num_train": v["auxiliary_examples"],
          "train.batch_size": 32, "train.num_steps": v["source_steps"],
          "train.eval_every": v["source_steps"], "train.checkpoint_every": v["source_steps"]}))
      for mtl in (False, True):
        init = {"method.prompt.init_from_run": f"{{sweep_dir}}/{source}"} if mtl else {}
        for k in SHOTS:
          for seed in SEEDS:
            name = (f"{size}{'_mtl' if mtl else ''}{'_instr' if instructions else ''}"
                    f"_k{k}_seed{seed}")
            runs.append(dict(
                name=name, group=name.rsplit("_seed", 1)[0],
                tags=dict(tags, part="few_shot", mtl=mtl, k=k, seed=seed, **cell),
                **common, **init, **{"data.num_train": k, "seed": seed}))
  return runs
