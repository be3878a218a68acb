"""Writes the README's "Your own data" example files: the synthetic sentiment task as
{"text", "label"} jsonl records with int labels (train 2000, dev 256: the default job's
examples), the same as a Hugging Face DatasetDict saved with save_to_disk (label a ClassLabel;
needs `datasets`), and the synthetic copy task as {"source", "target"} jsonl records.

  python scripts/own_data_example.py DIR
"""
import json
import os
import sys

from prompt_tuning.data import synthetic

EVAL_SEED = 10_000   # the default job's dev seed (data/inputs.py EVAL_SEED_OFFSET)


def sentiment(n, seed):
  return [{"text": e["inputs"].removeprefix("review: "), "label": int(e["targets"] == "positive")}
          for e in synthetic.sentiment_examples(n, seed)]


def copy(n, seed):
  return [{"source": e["inputs"], "target": e["targets"]}
          for e in synthetic.copy_first_word_examples(n, seed)]


def write_jsonl(path, records):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def main(out):
  os.makedirs(out, exist_ok=True)
  splits = {"train": (2000, 0), "dev": (256, EVAL_SEED)}
  for split, (n, seed) in splits.items():
    write_jsonl(os.path.join(out, f"{split}.jsonl"), sentiment(n, seed))
    write_jsonl(os.path.join(out, f"copy_{split}.jsonl"), copy(n, seed))
  try:
    import datasets
  except ImportError:
    print("datasets is not installed: no HF example written", file=sys.stderr)
    return
  feats = datasets.Features({"text": datasets.Value("string"),
                             "label": datasets.ClassLabel(names=["negative", "positive"])})
  datasets.DatasetDict({
      name: datasets.Dataset.from_list(sentiment(n, seed), features=feats)
      for name, (n, seed) in (("train", splits["train"]), ("validation", splits["dev"]))
  }).save_to_disk(os.path.join(out, "hf_sentiment"))


if __name__ == "__main__":
  main(sys.argv[1])
