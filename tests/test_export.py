"medgen/ must be exactly what nbdev-export makes from nbs/: fails when someone edits medgen/ by hand or forgets to export."
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _py_files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*.py") if "__pycache__" not in p.parts}


def test_medgen_is_exported_from_nbs(tmp_path):
    for name in ["pyproject.toml", "params.yaml"]:
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (tmp_path / "medgen").mkdir()
    shutil.copy(ROOT / "medgen" / "__init__.py", tmp_path / "medgen" / "__init__.py")  # the one hand-kept file
    exe = Path(sys.executable).with_name("nbdev-export")
    subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True, text=True)
    made, ours = _py_files(tmp_path / "medgen"), _py_files(ROOT / "medgen")
    assert ours == made, f"modules in medgen/ that nbs/ does not make: {sorted(ours - made)}; missing: {sorted(made - ours)}"
    differ = [f for f in sorted(made) if not filecmp.cmp(tmp_path / "medgen" / f, ROOT / "medgen" / f, shallow=False)]
    assert not differ, f"medgen/ differs from `nbdev-export` of nbs/ in {differ}: edit the notebook, run nbdev-export, commit both"
