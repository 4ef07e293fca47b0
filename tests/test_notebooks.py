"The library notebooks' own tests (nbdev-test): every example and assertion in nbs/ runs; stage notebooks (nbs/pipeline/) run under DVC instead."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_library_notebooks():
    exe = Path(sys.executable).with_name("nbdev-test")
    r = subprocess.run([str(exe), "--n-workers", "2", "--do-print", "--skip-folder-re", "^pipeline$"], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-6000:]
    assert "pipeline/" not in r.stdout  # stage notebooks run under DVC, not here
