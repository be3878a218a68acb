"""Writes the tiny T5's pretraining corpus, prompt_tuning/data/assets/pretrain_corpus.txt.

  python scripts/make_pretrain_corpus.py            # deterministic: same file on every machine

A toy "general English" of one-line utterances (lowercase, no final full stop): narration
(who did what, where, when), opinions ("the concert was superb and lovely"), sentences in which
the words "positive" and "negative" occur naturally next to opinion words ("the food was good so
the mood was positive", "my sister felt negative because the weather was dreadful", "people use
dreadful in a negative way"), and short stories of two or three such sentences ("a farmer
found a wooden box . the weather was awful . it was a negative day"). A third of the lines carry
no opinion at all.

What it deliberately does NOT contain: the downstream task. No line starts with "review", the
word "review" never occurs, no line is a bag of words followed by a label, and "positive" /
"negative" never stand alone as a line: the demo job (synthetic_sentiment, "review: <neutral
words with one opinion word>" -> "positive" / "negative") has to be learnt by prompt tuning,
transferring what the frozen model knows about these words.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "prompt_tuning", "data", "assets", "pretrain_corpus.txt")

PEOPLE = ["the teacher", "a farmer", "my neighbour", "the mayor", "a quiet poet", "a tired soldier",
          "a traveller", "the doctor", "our guide", "a young student", "her brother",
          "the small child", "an old fisherman", "the baker", "my sister", "the captain",
          "his friend", "the painter", "a stranger", "the old woman"]
ACTIONS = ["walked to", "wrote about", "found", "looked at", "painted", "opened", "carried",
           "described", "followed", "visited", "remembered", "cleaned", "sold", "watched",
           "drew", "left", "reached", "talked about"]
THINGS = ["the green hills", "an empty house", "a wooden box", "the sea", "the market square",
          "the stone tower", "a letter from home", "a broken clock", "the harbour lights",
          "the village church", "a map of the coast", "the winter garden", "a bright lantern",
          "a small boat", "the old bridge", "the morning train", "a red door", "the long road",
          "the river", "a blue cup"]
WHEN = ["in the morning", "before the storm", "near the sea", "after dinner", "at night",
        "during the festival", "on a cold day", "while it rained", "under the stars",
        "with great care", "without a word", "at the end of summer", "in the evening",
        "after the rain", "on the first day", "in the spring"]
# Things people judge.
EVENTS = ["the food", "the weather", "the music", "the film", "the book", "the play",
          "the journey", "the view", "the party", "the meal", "the lesson", "the concert",
          "the room", "the service", "the trip", "the game", "the story", "the show",
          "the festival", "the weekend", "the visit", "the song", "the dinner", "the hotel"]
POSITIVE = ["good", "great", "wonderful", "excellent", "happy", "lovely", "delightful", "superb",
            "pleasant", "brilliant", "nice", "fine", "charming", "perfect"]
NEGATIVE = ["bad", "terrible", "awful", "poor", "sad", "horrible", "dreadful", "boring", "ugly",
            "disappointing", "dull", "rude", "nasty", "miserable"]
# Where the polarity words themselves live in this language.
MOOD = ["the mood", "the feeling", "the reaction", "her answer", "his opinion", "the tone",
        "the news", "the first impression", "the verdict", "the atmosphere"]
PLACES = ["in the village", "at the harbour", "in the house", "at the market", "in the town",
          "on the boat", "at school", "in the garden"]


def _pick(rng, xs):
  return xs[int(rng.randint(len(xs)))]


def _two(rng, xs):
  """Two different words of one polarity."""
  i, j = rng.choice(len(xs), size=2, replace=False)
  return xs[int(i)], xs[int(j)]


def _narration(rng, short=False):
  p, a, t, w = _pick(rng, PEOPLE), _pick(rng, ACTIONS), _pick(rng, THINGS), _pick(rng, WHEN)
  k = int(rng.randint(2 if short else 5))
  if k == 0:
    return f"{p} {a} {t} {w}"
  if k == 1:
    return f"{w} {p} {a} {t}"
  if k == 2:
    return f"{p} {a} {t} and then {_pick(rng, ACTIONS)} {_pick(rng, THINGS)}"
  if k == 3:
    return f"{p} {a} {t} {w} and {_pick(rng, PEOPLE)} {_pick(rng, ACTIONS)} {_pick(rng, THINGS)}"
  return f"{w} {p} and {_pick(rng, PEOPLE)} {a} {t}"


def _opinion(rng, words, short=False):
  """A judgement with no polarity word."""
  e, p = _pick(rng, EVENTS), _pick(rng, PEOPLE)
  o, o2 = _two(rng, words)
  k = int(rng.randint(3 if short else 7))
  if k == 0:
    return f"{e} was {o}"
  if k == 1:
    return f"{e} was {o} and {o2}"
  if k == 2:
    return f"{p} said that {e} was {o}"
  if k == 3:
    return f"{_narration(rng)} and it was {o}"
  if k == 4:
    return f"what a {o} day {p} had"
  if k == 5:
    return f"{p} thought {e} {_pick(rng, WHEN)} was {o}"
  return f"{p} found {e} {o} and {o2}"


def _polarity(rng, words, pol):
  """A judgement next to the word `positive` or `negative` (`pol`), in varied order."""
  e, p = _pick(rng, EVENTS), _pick(rng, PEOPLE)
  o, o2 = _two(rng, words)
  m, where = _pick(rng, MOOD), _pick(rng, PLACES)
  k = int(rng.randint(14))
  if k == 0:
    return f"{e} was {o} so {m} was {pol}"
  if k == 1:
    return f"{e} was {o} and {m} {where} was {pol}"
  if k == 2:
    return f"{p} felt {pol} because {e} was {o}"
  if k == 3:
    return f"{p} was {pol} about {e} and called it {o}"
  if k == 4:
    return f"it was {o} and {o2} , a {pol} day for {p}"
  if k == 5:
    return f"{o} is a {pol} word"
  if k == 6:
    return f"people use {o} in a {pol} way"
  if k == 7:
    return f"{p} said {e} was {o} , which sounds {pol}"
  if k == 8:
    return f"after {e} , which was {o} , {m} was {pol}"
  if k == 9:
    return f"{_narration(rng)} , it was {o} and {m} was {pol}"
  if k == 10:
    return f"a {pol} sign : {e} was {o}"
  if k == 11:
    return f"{m} was {pol} since {e} was {o}"
  if k == 12:
    return f"the word {o} has a {pol} meaning"
  return f"{p} gave a {pol} answer when asked about {e} : {o}"


def _summary(rng, pol):
  """What people made of it: a sentence that carries only the polarity word."""
  k = int(rng.randint(6))
  if k == 0:
    return f"{_pick(rng, MOOD)} was {pol}"
  if k == 1:
    return f"it was a {pol} day"
  if k == 2:
    return f"everyone felt {pol}"
  if k == 3:
    return f"{_pick(rng, PEOPLE)} stayed {pol} {_pick(rng, WHEN)}"
  if k == 4:
    return f"all in all {pol}"
  return f"{_pick(rng, MOOD)} {_pick(rng, PLACES)} was {pol}"


def _line(rng):
  good = rng.rand() < 0.5
  words, pol = (POSITIVE, "positive") if good else (NEGATIVE, "negative")
  r = rng.rand()
  if r < 0.3:
    return _narration(rng)
  if r < 0.45:
    return _opinion(rng, words)
  if r < 0.7:
    return _polarity(rng, words, pol)
  # A short story: what happened, how it was, and (mostly) what people made of it.
  parts = [_narration(rng, short=True), _opinion(rng, words, short=True)]
  if rng.rand() < 0.7:
    parts.append(_summary(rng, pol))
  return " . ".join(parts)


def make_corpus(n_lines: int = 12000, seed: int = 0) -> list[str]:
  rng = np.random.RandomState(seed)
  return [_line(rng) for _ in range(n_lines)]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=OUT)
  ap.add_argument("--lines", type=int, default=12000)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  lines = make_corpus(args.lines, args.seed)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {len(lines)} lines to {args.out}")


if __name__ == "__main__":
  main()
