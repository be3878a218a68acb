"""The README's Python example runs and prints what the README says it prints."""
import contextlib
import io
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_python_example_prints_the_documented_output():
  with open(os.path.join(ROOT, "README.md")) as f:
    (code,) = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
  documented = re.findall(r"^print\(.*?#\s*(.+)$", code, re.M)
  assert out.getvalue().splitlines() == documented


def test_supported_checkpoints_table_lists_exactly_the_registered_model_types():
  from prompt_tuning.models import families
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  table = text[text.index("## Supported checkpoints"):text.index("## What is here")]
  listed = set()
  for row in table.splitlines():
    if row.startswith("| `") and "`model_type`" not in row:   # not the header
      listed |= set(re.findall(r"`(\w+)`", row.split("|")[1]))
  assert listed == set(families.BY_MODEL_TYPE)
