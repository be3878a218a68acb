"""A small sweep of the default job: soft-prompt length x learning rate, 2 seeds each (8 runs of
100 steps, a few minutes on a CPU).

  prompt-tuning sweep --config configs/sweep_prompt_lr.py

prints a table (dev accuracy and loss, mean ± std over the seeds, the best setting marked) and
writes results.jsonl, summary.json, sweep_table.csv and sweep.png (accuracy against prompt length,
one line per learning rate) into runs/sweep_prompt_lr.
"""
from prompt_tuning.default_config import get_config as base

LENGTHS = (5, 20)
LEARNING_RATES = (0.1, 0.3)
SEEDS = (0, 1)


def get_config():
  c = base()
  c.unlock()
  c.output_dir = "runs/sweep_prompt_lr"
  c.train.update(num_steps=100, eval_every=100, checkpoint_every=100)
  c.lock()
  return c


def get_sweep():
  # Runs differing only in the seed form one row of the table.
  return [{"name": f"len{n}_lr{lr}_seed{s}", "method.prompt.length": n,
           "optimizer.learning_rate": lr, "seed": s}
          for n in LENGTHS for lr in LEARNING_RATES for s in SEEDS]
