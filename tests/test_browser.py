"The student's path in a real browser: JupyterLab on loopback, a notebook run through its menus in headless Chromium."
import hashlib
import sys
from pathlib import Path

import nbformat
import pytest

from jupyter_browser import jupyter_lab, run_notebook_in_browser

MARK = "medgen-browser-check-7f3a"


def _tiny_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A tiny notebook"),
        nbformat.v4.new_code_cell("import pandas as pd\npd.DataFrame({'clip': ['a', 'b'], 'score': [0.5, 0.75]})"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 4])\nplt.title('squares')\nplt.show()"),
        nbformat.v4.new_code_cell(f"print({MARK!r})"),
    ]
    return nb


@pytest.mark.browser
def test_browser_runs_a_notebook(tmp_path):
    nb_path = tmp_path / "tiny.ipynb"
    nbformat.write(_tiny_notebook(), nb_path)
    digest = hashlib.sha256(nb_path.read_bytes()).hexdigest()

    with jupyter_lab(tmp_path, Path(sys.executable)) as url:
        run = run_notebook_in_browser(url, "tiny.ipynb", timeout_s=60, screenshot=tmp_path / "shots" / "tiny.png")

    assert (run.n_cells, run.n_code_cells, run.n_executed) == (4, 3, 3), run
    assert not run.has_error, run.errors
    assert MARK in run.text, run.outputs
    assert run.n_images >= 1, run
    assert run.n_tables >= 1, run
    assert run.screenshot.stat().st_size > 0
    assert hashlib.sha256(nb_path.read_bytes()).hexdigest() == digest, "the browser run changed the notebook file"
