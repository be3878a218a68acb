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
