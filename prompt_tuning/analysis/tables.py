"""The tables the analyses write: CSV for programs, Markdown for people."""
from __future__ import annotations

import csv


def fmt(v) -> str:
  """A table cell: None as '-', floats to 4 significant digits."""
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def markdown(columns, rows: list[dict]) -> list[str]:
  """The lines of a Markdown table of ``rows`` (dicts) in ``columns`` order."""
  return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
          + ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows])


def write_csv(path: str, columns, rows: list[dict]):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
