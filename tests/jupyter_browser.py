"""Drive the student's path in a real browser: JupyterLab served on loopback, a notebook opened and run through the UI.

Not a test file: helpers for tests that open notebooks in JupyterLab with Playwright and Debian's Chromium
(`/usr/bin/chromium`, installed by `make browser`; Playwright's own browser download is never used).

API
---
`jupyter_lab(root, python_bin, *, startup_timeout_s=60)`
    Context manager. Starts `python_bin -m jupyter lab` serving `root` on a free 127.0.0.1 port with a random token
    (as `make lab` keeps Jupyter's own), `--allow-root --no-browser`, waits (bounded) until it answers and yields the
    server's URL with its token (`http://127.0.0.1:PORT/?token=TOKEN`, as Jupyter prints it).
    On exit it stops the server with SIGTERM (which shuts its kernels down), kills whatever is left of it and its
    kernels, and removes its scratch folder: nothing stays running. The server is isolated from the user's Jupyter
    setup (its own config, data, runtime, settings and workspace folders in a temporary directory, `MPLBACKEND`
    removed so matplotlib is inline as for a student) and set up for a faithful, harmless run:
      - autosave off, so a notebook run in the browser is never written back to disk;
      - notebook windowing off (`windowingMode: none`), so every cell is in the DOM and can be read;
      - the preferred kernel starts without a "Select Kernel" dialog; no news, update checks or extension manager
        requests (nothing leaves 127.0.0.1);
      - `window.jupyterapp` exposed, which `run_notebook_in_browser` reads (never drives) to tell errors exactly.
    `python_bin` is the venv's python (for example `Path(sys.executable)`): not resolved, so the venv stays active;
    its folder goes first on PATH (as with `make lab`).

`run_notebook_in_browser(base_url, rel_path, timeout_s=300, *, screenshot=None, load_timeout_s=60, shutdown_kernel=True)`
    Opens `{server}/lab/tree/{rel_path}?reset&token=...` (`?reset`: an empty workspace, so no tab or kernel of an earlier
    run comes back) in headless Chromium, waits until every cell is shown and the kernel is idle (bounded by
    `load_timeout_s`), clears old outputs (Edit > Clear Outputs of All Cells), clicks Run > Run All Cells in the menu
    bar, waits until no cell shows `[*]` and the kernel is idle (at most `timeout_s` from that click; TimeoutError
    otherwise, RuntimeError at once if the kernel dies or a dialog opens), and returns a
    `NotebookRun`: `n_cells`, `n_code_cells`, `n_executed` (code cells showing `[N]`), `outputs` (the text of every
    code cell's output area, in order; `text` joins them), `n_images` (`img` in output areas), `n_tables` (rendered
    HTML tables in output areas), `has_error` / `errors` (traceback outputs, i.e. nbformat `error` outputs; stderr
    text such as warnings or progress bars is not an error), `console_errors` (browser console), `elapsed_s` and
    `screenshot` (a full-notebook PNG when a path is given; also written when the run times out).
    The notebook is never saved: autosave is off, nothing presses save, the page is closed without saving, and the
    file's modification time on the server is compared before and after (RuntimeError if it changed). The
    notebook's kernel is shut down afterwards, also after a failure, unless `shutdown_kernel=False`. rel_path is
    relative to the server's root_dir, with "/" separators.
    Meant for a server started by `jupyter_lab` (which sets the settings above).

Example::

    with jupyter_lab(repo_root, Path(sys.executable)) as url:
        run = run_notebook_in_browser(url, "nbs/index.ipynb", timeout_s=600, screenshot=tmp_path / "index.png")
    assert not run.has_error, run.errors
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import secrets
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root has no usable sandbox in a container
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-gpu",
    "--no-proxy-server",  # talk to 127.0.0.1 directly, never through a proxy from the environment
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",  # no name resolves but loopback
]

# User settings the server starts with (files under --LabApp.user_settings_dir).
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

# Loopback only, never through a proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def server_of(url: str) -> tuple[str, str]:
    "`(base URL, token)` of a server URL as `jupyter_lab` yields it (`http://127.0.0.1:PORT/?token=TOKEN`; no token: '')."
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}", urllib.parse.parse_qs(parts.query).get("token", [""])[0]


def _api(url: str, path: str, method: str = "GET", timeout: float = 10):
    "Call the Jupyter server's REST API with its token; the same made-up value in cookie and header passes its XSRF check."
    base_url, token = server_of(url)
    headers = {"X-XSRFToken": "medgen-tests", "Cookie": "_xsrf=medgen-tests"} | ({"Authorization": f"token {token}"} if token else {})
    req = urllib.request.Request(f"{base_url}{path}", method=method, headers=headers)
    with _HTTP.open(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


def _descendants(pid: int) -> list:
    try:
        import psutil
        return psutil.Process(pid).children(recursive=True)
    except Exception:  # psutil missing or the process already gone
        return []


@contextlib.contextmanager
def jupyter_lab(root: Path, python_bin: Path, *, startup_timeout_s: float = 60) -> Iterator[str]:
    "Serve `root` with JupyterLab from `python_bin`'s environment on 127.0.0.1; yield the base URL. See the module docstring."
    root, python_bin = Path(root).absolute(), Path(python_bin).absolute()  # absolute, not resolved: keep the venv's python
    with tempfile.TemporaryDirectory(prefix="jupyter-browser-") as tmp:
        tmp = Path(tmp)
        for name, values in LAB_SETTINGS.items():
            f = tmp / "settings" / f"{name}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values))
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # a student's kernel draws inline
        env.update(JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
                   JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"),
                   PATH=f"{python_bin.parent}{os.pathsep}{env.get('PATH', '')}")
        port, token = _free_port(), secrets.token_hex(24)
        base_url = f"http://127.0.0.1:{port}/?token={token}"
        cmd = [str(python_bin), "-m", "jupyter", "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={tmp / 'settings'}",
               f"--LabApp.workspaces_dir={tmp / 'workspaces'}", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"]
        log = tmp / "server.log"
        with open(log, "wb") as logf:
            # Own session: the server and anything it starts without a session of its own die with one killpg.
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # Ready when the REST API and the /lab page both answer 200; give up on exit or after startup_timeout_s.
            deadline = time.monotonic() + startup_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited with code {proc.returncode} before answering on {base_url}:\n{_tail(log)}")
                try:
                    _api(base_url, "/api/status", timeout=2)
                    with _HTTP.open(f"{server_of(base_url)[0]}/lab?token={token}", timeout=5) as r:
                        if r.status == 200:
                            break
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer on {base_url} within {startup_timeout_s:.0f} s:\n{_tail(log)}")
                time.sleep(0.25)
            yield base_url
        finally:
            # Kernels run in sessions of their own: note them (and their children) before stopping the server.
            leftovers = _descendants(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # jupyter_server's SIGTERM handler shuts all kernels down, then exits
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    # Still not reaped, so its id is still its group's: kill the server's own group.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            for p in leftovers:  # psutil checks each is still the process noted (no pid reuse)
                with contextlib.suppress(Exception):
                    if p.is_running():
                        p.kill()
                        p.wait(timeout=5)


@dataclass
class NotebookRun:
    "What a browser run of a notebook showed (see the module docstring)."
    n_cells: int
    n_code_cells: int
    n_executed: int
    outputs: list[str]
    n_images: int
    n_tables: int
    has_error: bool
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    screenshot: Path | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.outputs)


# In the page: the state of the notebook panel showing `path` (the only one open in a fresh workspace).
_JS_STATE = r"""(path) => {
  const app = window.jupyterapp;
  let panel = null;
  if (app) {  // exposed by jupyter_lab(): find the panel of this very notebook
    for (const w of app.shell.widgets('main')) if (w.context && w.context.path === path) { panel = w.node; break; }
  } else {
    panel = [...document.querySelectorAll('.jp-NotebookPanel')].find(p => p.offsetParent !== null) || null;
  }
  if (!panel) return {found: false};
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
  const code = cells.filter(c => c.classList.contains('jp-CodeCell'));
  const prompts = code.map(c => (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '');
  const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const dialogs = [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText);
  return {found: true, cells: cells.length, code: code.length,
          running: prompts.filter(t => t.includes('*')).length,
          executed: prompts.filter(t => /\[\d+\]/.test(t)).length,
          status: ind ? ind.getAttribute('data-status') : null, dialogs};
}"""

# In the page: everything the result reports, read once the run is over.
_JS_RESULT = r"""(path) => {
  const app = window.jupyterapp;
  let panel = null;
  if (app) {
    for (const w of app.shell.widgets('main')) if (w.context && w.context.path === path) { panel = w; break; }
  }
  const node = panel ? panel.node : [...document.querySelectorAll('.jp-NotebookPanel')].find(p => p.offsetParent !== null);
  const code = [...node.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const areas = code.map(c => c.querySelector('.jp-OutputArea'));
  let errors = null;  // exact, from the notebook model: nbformat outputs of type "error"
  if (panel) {
    errors = [];
    const cells = panel.content.model.cells;
    for (let i = 0; i < cells.length; i++) {
      const c = cells.get(i);
      if (c.type !== 'code') continue;
      for (const o of c.toJSON().outputs || []) if (o.output_type === 'error') errors.push(`${o.ename}: ${o.evalue}`);
    }
  }
  return {outputs: areas.map(a => a ? a.innerText : ''),
          images: node.querySelectorAll('.jp-OutputArea img').length,
          tables: node.querySelectorAll('.jp-OutputArea table').length,
          stderr: [...node.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.innerText),
          errors};
}"""

# Without the app model, an error output looks like stderr in the DOM (JupyterLab renders a traceback with the stderr
# mime type); ipykernel's tracebacks start with a rule of dashes or "Traceback", or end with "SomeError: ...".
_TRACEBACK = re.compile(r"^-{20,}\s*$|^Traceback \(most recent call last\)|^\w+(Error|Exception|Interrupt)\b.*$", re.M)


def _wait_images(page) -> None:
    "Let every image in an output area finish loading and decoding (rendering is asynchronous)."
    page.evaluate("""() => Promise.all([...document.querySelectorAll('.jp-OutputArea img')].map(
        i => i.complete ? null : i.decode().catch(() => null)))""")


def _screenshot(page, path: Path) -> None:
    "A PNG of the whole notebook: the notebook scrolls inside its panel, so grow the viewport to its height first."
    height = page.evaluate("""() => Math.max(0, ...[...document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')]
        .map(e => e.scrollHeight))""")
    width = page.viewport_size["width"] if page.viewport_size else 1400
    page.set_viewport_size({"width": width, "height": int(min(max(900, height + 250), 16000))})
    page.wait_for_timeout(300)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


def run_notebook_in_browser(base_url: str, rel_path: str, timeout_s: float = 300, *, screenshot: Path | None = None,
                            load_timeout_s: float = 60, shutdown_kernel: bool = True) -> NotebookRun:
    "Open `rel_path` in JupyterLab at `base_url`, Run All Cells through the menu, wait, report; never save. See the module docstring."
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    rel_path = str(rel_path).lstrip("/")
    server, token = server_of(base_url)
    quoted = urllib.parse.quote(rel_path)
    before = _api(base_url, f"/api/contents/{quoted}?content=0")["last_modified"]
    n_cells = len(_api(base_url, f"/api/contents/{quoted}")["content"]["cells"])
    t0 = time.monotonic()
    console_errors: list[str] = []

    try:
        # A scratch HOME: Chromium's profile bits and crash database stay out of the user's ~/.config.
        with tempfile.TemporaryDirectory(prefix="chromium-home-") as home, sync_playwright() as pw:
            env = {**os.environ, "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config", "XDG_CACHE_HOME": f"{home}/.cache"}
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, env=env)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: console_errors.append(str(e)))

                def wait_for(what: str, ok, limit_s: float, stable_s: float = 0.0) -> dict:
                    """Poll the page state every 0.25 s until ok(state) has held for stable_s seconds (a debounce
                    against short idle gaps and late renders); fail at once on a dead kernel or an unexpected dialog,
                    and after limit_s with the last state in the message (and the screenshot, when one is asked for)."""
                    end, since = time.monotonic() + limit_s, None
                    while True:
                        s = page.evaluate(_JS_STATE, rel_path)
                        if s.get("status") in ("dead", "autorestarting"):  # a crash restarts the kernel and drops the queue
                            raise RuntimeError(f"{rel_path}: the kernel died while waiting for {what}: {s}")
                        if s.get("dialogs"):
                            raise RuntimeError(f"{rel_path}: unexpected JupyterLab dialog while waiting for {what}: {s['dialogs']}")
                        if s.get("found") and ok(s):
                            since = since or time.monotonic()
                            if time.monotonic() - since >= stable_s:
                                return s
                        else:
                            since = None
                        if time.monotonic() > end:
                            if screenshot:
                                with contextlib.suppress(Exception):
                                    _screenshot(page, screenshot)
                            raise TimeoutError(f"{rel_path}: no {what} within {limit_s:.0f} s; last state {s}")
                        page.wait_for_timeout(250)

                def menu(bar_label: str, command: str) -> None:
                    "Click a menu-bar entry, then its item (found by command id, which does not depend on the UI language)."
                    page.locator(".lm-MenuBar-item", has_text=re.compile(rf"^\s*{bar_label}\s*$")).click()
                    page.locator(f"li.lm-Menu-item[data-command='{command}']").click()

                # `?reset`: start from an empty workspace, so no tab (and kernel) of an earlier run is restored.
                page.goto(f"{server}/lab/tree/{quoted}?reset&token={token}", wait_until="domcontentloaded")  # the token sets the login cookie
                # Loaded: every cell of the file is in the DOM (windowing is off) and the kernel has started and is idle.
                wait_for("loaded notebook with an idle kernel", lambda s: s["cells"] == n_cells and s["status"] == "idle",
                         load_timeout_s, stable_s=0.5)
                # Clear stored outputs and counts, so that every `[N]` and output seen afterwards comes from this run.
                menu("Edit", "editmenu:clear-all")
                n_code = wait_for("cleared outputs", lambda s: s["executed"] == 0, 10)["code"]
                menu("Run", "runmenu:run-all")
                t_run = time.monotonic()  # timeout_s bounds the execution, from the click on Run All Cells
                left = lambda: max(1.0, timeout_s - (time.monotonic() - t_run))
                # Started: Run All marks every queued cell `[*]` at once; a very short run may already be over (cells numbered).
                if n_code:
                    wait_for("start of execution", lambda s: s["running"] > 0 or s["executed"] > 0 or s["status"] == "busy",
                             min(30.0, left()))
                # Finished: no cell waits or runs (`[*]`) and the kernel is idle, holding for 1 s. After an error
                # JupyterLab drops the queued cells (their prompt turns back to `[ ]`), so this also ends a failed run.
                done = wait_for("end of execution", lambda s: s["running"] == 0 and s["status"] == "idle", left(), stable_s=1.0)
                _wait_images(page)
                r = page.evaluate(_JS_RESULT, rel_path)
                if r["errors"] is None:  # no app model to read: recognise tracebacks among the stderr outputs
                    r["errors"] = [t.strip().splitlines()[-1] for t in r["stderr"] if _TRACEBACK.search(t)]
                if screenshot:
                    _screenshot(page, screenshot)
                # Leave without saving: the page closes with no beforeunload prompt and nothing is sent to the server.
                context.close()
            finally:
                browser.close()
    finally:
        if shutdown_kernel:  # also after a timeout: a busy kernel left behind would slow whatever runs next
            with contextlib.suppress(OSError, ValueError):
                for s in _api(base_url, "/api/sessions"):
                    if s.get("path") == rel_path:
                        _api(base_url, f"/api/sessions/{s['id']}", method="DELETE", timeout=30)

    after = _api(base_url, f"/api/contents/{quoted}?content=0")["last_modified"]
    if after != before:
        raise RuntimeError(f"{rel_path} was saved during the browser run (last_modified {before} -> {after}); "
                           "was the server started by jupyter_lab() (autosave off)?")
    return NotebookRun(n_cells=n_cells, n_code_cells=n_code, n_executed=done["executed"], outputs=r["outputs"],
                       n_images=r["images"], n_tables=r["tables"], has_error=bool(r["errors"]), errors=r["errors"],
                       console_errors=console_errors, elapsed_s=round(time.monotonic() - t0, 2),
                       screenshot=Path(screenshot) if screenshot else None)
