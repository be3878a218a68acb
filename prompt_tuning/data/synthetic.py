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


# The second domain of the sentiment labels: fluent one-line comments about an event, with other
# context words than the reviews' (the same opinion words, so that the labels mean the same).
SPEAKERS = ("the mayor", "a stranger", "my sister", "the captain", "an old fisherman", "the baker",
            "a young student", "the painter")
EVENTS = ("the trip", "the concert", "the meal", "the play", "the party", "the show", "the film",
          "the game")
PLACES = ("at the harbour", "in the town", "at the market", "on the boat", "after the rain",
          "in the evening")


def comment_examples(n: int, seed: int = 0):
  """"comment: <who> said that <event> <where> was <opinion word>" (or "<event> <where> was
  <opinion word> said <who>") -> "positive" / "negative": the task of :func:`sentiment_examples`
  in another domain, the stand-in for a domain shift between two datasets of one task (QQP and
  MRPC in Lester et al. 2021)."""
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    label = int(rng.randint(2))
    who, event, where = (str(rng.choice(xs)) for xs in (SPEAKERS, EVENTS, PLACES))
    word = str(rng.choice(POSITIVE if label else NEGATIVE))
    text = (f"{who} said that {event} {where} was {word}" if rng.randint(2)
            else f"{event} {where} was {word} said {who}")
    out.append({"inputs": "comment: " + text, "targets": "positive" if label else "negative"})
  return out


TASKS = {"synthetic_sentiment": sentiment_examples, "synthetic_copy": copy_first_word_examples,
         "synthetic_sentiment_comments": comment_examples}
CLASS_LABELS = {"synthetic_sentiment": ("positive", "negative"),
                "synthetic_sentiment_comments": ("positive", "negative")}
# Prepended to the inputs when data.instructions is on (as prompt_tuning.tasks does for seqio
# tasks), in the words the tiny T5's pretraining corpus uses.
INSTRUCTIONS = {"synthetic_sentiment": "is the opinion positive or negative ?",
                "synthetic_sentiment_comments": "is the opinion positive or negative ?",
                "synthetic_copy": "say the first word again ."}
# Train on the first task, evaluate zero-shot on the second (data.domain_shift), like the
# registered seqio pairs qqp_to_mrpc / mrpc_to_qqp.
DOMAIN_SHIFT_PAIRS = {
    "reviews_to_comments": ("synthetic_sentiment", "synthetic_sentiment_comments"),
    "comments_to_reviews": ("synthetic_sentiment_comments", "synthetic_sentiment")}


def mixture_parts(name: str) -> list[str] | None:
  """The synthetic tasks of ``name``: one task, or an ad-hoc mixture "taskA+taskB" of synthetic
  tasks (equal rates); None when ``name`` is not synthetic."""
  parts = name.split("+")
  return parts if all(p in TASKS for p in parts) else None


def get_examples(name: str, n: int, seed: int, instructions: bool = False):
  """``n`` examples of synthetic task ``name``; ``instructions``: its instruction prepended."""
  if name not in TASKS:
    raise ValueError(f"unknown synthetic task {name!r}; known: {sorted(TASKS)}")
  examples = TASKS[name](n, seed)
  if instructions:
    examples = [dict(ex, inputs=f"{INSTRUCTIONS[name]} {ex['inputs']}") for ex in examples]
  return examples
