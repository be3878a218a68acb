"""Small synthetic text-to-text tasks for the embedded default job and the tests."""
from __future__ import annotations

import numpy as np

POSITIVE = "good great wonderful excellent happy lovely delightful superb pleasant brilliant".split()
NEGATIVE = "bad terrible awful poor sad horrible dreadful boring ugly disappointing".split()
NEUTRAL = ("the teacher walked to the green hills in the morning a farmer wrote about an empty "
           "house before the storm my neighbour found a wooden box near the sea").split()


def sentiment_examples(n: int, seed: int = 0, min_words: int = 4, max_words: int = 10):
  """"review: ..." -> "positive" / "negative": the label is the polarity of the one opinion
  word hidden among neutral words."""
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    label = int(rng.randint(2))
    k = int(rng.randint(min_words, max_words + 1))
    words = list(rng.choice(NEUTRAL, size=k))
    words.insert(int(rng.randint(k + 1)), str(rng.choice(POSITIVE if label else NEGATIVE)))
    out.append({"inputs": "review: " + " ".join(words),
                "targets": "positive" if label else "negative"})
  return out


def copy_first_word_examples(n: int, seed: int = 0):
  """"copy: w1 w2 ..." -> "w1": needs the model to route information from the input."""
  rng = np.random.RandomState(seed)
  words = POSITIVE + NEGATIVE
  out = []
  for _ in range(n):
    ws = list(rng.choice(words, size=int(rng.randint(3, 7))))
    out.append({"inputs": "copy: " + " ".join(ws), "targets": ws[0]})
  return out


TASKS = {"synthetic_sentiment": sentiment_examples, "synthetic_copy": copy_first_word_examples}
CLASS_LABELS = {"synthetic_sentiment": ("positive", "negative")}


def mixture_parts(name: str) -> list[str] | None:
  """The synthetic tasks of ``name``: one task, or an ad-hoc mixture "taskA+taskB" of synthetic
  tasks (equal rates); None when ``name`` is not synthetic."""
  parts = name.split("+")
  return parts if all(p in TASKS for p in parts) else None


def get_examples(name: str, n: int, seed: int):
  if name not in TASKS:
    raise ValueError(f"unknown synthetic task {name!r}; known: {sorted(TASKS)}")
  return TASKS[name](n, seed)
