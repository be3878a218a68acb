"""Few-shot prompt tuning of BART (Albalak et al. 2022 style): k in {10, 50, 100} training
examples sampled with each of 3 seeds. `prompt-tuning sweep --config configs/bart_few_shot.py`
runs the 9 runs and writes summary.json with the mean and std of every metric per k."""
from prompt_tuning.default_config import get_config as base

SHOTS = (10, 50, 100)
SEEDS = (0, 1, 2)


def get_config():
  c = base()
  c.unlock()
  c.output_dir = "runs/bart_few_shot"
  # A paper setup: needs pretrained weights (a bart-base checkpoint in model.hf_checkpoint);
  # --config.model.preset=bart-base --config.model.allow_random_init=True runs random ones.
  c.model.update(hf_checkpoint="", allow_random_init=False)
  c.method.name = "prompt"
  c.method.prompt.update(length=50, init="class_labels",
                         class_labels=("entailment", "not_entailment"))
  c.data.update(task="super_glue_rte", few_shot=True, num_train=100, num_eval=0,
                max_input_length=256, max_target_length=8, truncate=True)
  c.train.update(batch_size=8, num_steps=500, eval_every=100, checkpoint_every=100,
                 max_decode_length=8)
  c.lock()
  return c


def get_sweep():
  return [dict(name=f"k{k}_seed{s}", group=f"k{k}", **{"data.num_train": k, "seed": s})
          for k in SHOTS for s in SEEDS]
