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


def test_make_lab_keeps_a_token(tmp_path, root):
    "`make lab` serves on loopback with Jupyter's token: its URL (printed, with the token) answers; without the token, 403."
    import os, re, signal, subprocess, time, urllib.error, urllib.request
    from jupyter_browser import _free_port
    port = _free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = tmp_path / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "-o", ".venv/.installed", "lab", f"LAB_PORT={port}"], cwd=root, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, url = time.monotonic() + 90, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(rf"http://127\.0\.0\.1:{port}/lab\S*\?token=([0-9a-f]+)", log.read_text(errors="replace"))
            url = found and found.group(0); time.sleep(0.5)
        assert url, f"no URL with a token printed:\n{log.read_text(errors='replace')[-3000:]}"
        token = re.search(r"token=([0-9a-f]+)", url).group(1)
        assert len(token) >= 32
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/Makefile?content=0&token={token}", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/Makefile?content=0", timeout=10)
        assert refused.value.code == 403
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
