"""The Colab notebooks execute end to end on CPU (small settings, mocked TFDS)."""
import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))


def test_three_notebooks_exist():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert names == {"prompt_tuning_quickstart.ipynb", "domain_shift_qqp_mrpc.ipynb",
                   "lora_vs_prompt.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path, tmp_path, monkeypatch):
  monkeypatch.setenv("PT_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  if "lora_vs_prompt" in path:
    assert os.path.getsize("/tmp/lora_vs_prompt.png") > 1000
