"""The package loads nothing unsafely: weights only through safetensors or `torch.load(weights_only=True)`, YAML only
with `safe_load`, no pickle, no shell strings, no eval. A scan of the syntax tree of every module of `medgen`, so a
new unsafe call fails the tests the day it is written (the unsafe forms are the scan's known answers, checked below)."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT


def _name(node) -> str:
    "Dotted name of a call's function: `torch.load`, `yaml.load`, `eval`."
    parts = []
    while isinstance(node, ast.Attribute): parts.append(node.attr); node = node.value
    if not isinstance(node, ast.Name): return "<expr>." + ".".join(reversed(parts))  # a method of a value (`model.eval()`): no builtin
    parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name: return k.value
    return None


def unsafe_calls(source: str) -> list[str]:
    "Each unsafe call in a module's source, as 'line: what'."
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call): continue
        name, line = _name(node.func), node.lineno
        if name == "torch.load":
            w = _kw(node, "weights_only")
            if not (isinstance(w, ast.Constant) and w.value is True): found.append(f"{line}: torch.load without weights_only=True")
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"): found.append(f"{line}: {name} (use yaml.safe_load)")
        elif name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve", "marshal") and name.split(".")[-1] in ("load", "loads", "open"):
            found.append(f"{line}: {name}")
        elif name in ("np.load", "numpy.load"):
            a = _kw(node, "allow_pickle")
            if isinstance(a, ast.Constant) and a.value is True: found.append(f"{line}: np.load(allow_pickle=True)")
        elif name in ("eval", "exec"): found.append(f"{line}: {name}")
        elif name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"): found.append(f"{line}: {name} (a shell string)")
        elif name.startswith("subprocess."):
            s = _kw(node, "shell")
            if s is not None and not (isinstance(s, ast.Constant) and s.value is False): found.append(f"{line}: {name}(shell=...)")
            if node.args and isinstance(node.args[0], (ast.JoinedStr, ast.BinOp, ast.Constant)) and not isinstance(getattr(node.args[0], "value", None), bytes):
                found.append(f"{line}: {name} with a command string (use an argument list)")
    return found


KNOWN_UNSAFE = """
import torch, yaml, pickle, subprocess, os, numpy as np
torch.load("w.pt")
torch.load("w.pt", weights_only=False)
yaml.load(open("p.yaml"))
pickle.loads(b"")
np.load("x.npy", allow_pickle=True)
eval("1 + 1")
os.system("ls " + name)
subprocess.run(f"ffmpeg -i {name}", shell=True)
"""
KNOWN_SAFE = """
import torch, yaml, subprocess, numpy as np
model = torch.nn.Linear(1, 1).eval()
torch.load("w.pt", weights_only=True)
yaml.safe_load(open("p.yaml"))
np.load("x.npy")
subprocess.run(["ffmpeg", "-i", name], check=True)
"""


def test_the_scan_knows_unsafe_from_safe():
    assert len(unsafe_calls(KNOWN_UNSAFE)) == 9, unsafe_calls(KNOWN_UNSAFE)  # subprocess.run: shell=True and a command string
    assert unsafe_calls(KNOWN_SAFE) == []


@pytest.mark.parametrize("module", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "medgen").rglob("*.py")))
def test_no_unsafe_loading(module):
    assert unsafe_calls((ROOT / module).read_text()) == [], module


def test_the_rating_page_and_the_card_escape_manifest_text():
    "Text from manifests and prompts is inert where it lands in HTML (the page's own test checks the page; here the card)."
    import pandas as pd
    from medgen.apply.ratings import rating_page
    evil = '</script><img src=x onerror="alert(1)">'
    page = rating_page([dict(item="p", kind="generation", text=evil, videos=[dict(video="v1", letter="A", src="data:,")])])
    assert "<img src=x" not in page and page.count("</script>") == 2
    from medgen.curate.dataset import dataset_card
    import inspect
    assert "html.escape" in inspect.getsource(dataset_card)  # the licence column, the only manifest text the card prints
