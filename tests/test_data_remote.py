"""`make data CORPUS=...` from every state, and the DVC remote round trip, in fresh git clones of this project.

The clones sit beside a link to the shared folder (so `../shared/corpus`, data.dvc's source, resolves as in the real
checkout) and use this project's environment through a `.venv` link (`make -o .venv/.installed` never reinstalls it).
Checked: a fresh clone brings the sample corpus in; another corpus replaces it after setup and after an earlier
import; `make repro` keeps it (and ingest names it); `make data` alone brings the sample back; a folder without a manifest is refused with a message. Then `make push`
from one clone and `make pull` into another, where `dvc repro` has nothing to do."""
import hashlib, json, os, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.integration
SHARED = (ROOT / ".." / "shared").resolve()


def _make(cwd: Path, *args: str, ok: bool = True) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MPLBACKEND", None)
    r = subprocess.run(["make", "-o", ".venv/.installed", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert (r.returncode == 0) == ok, f"make {args}: rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _dvc(cwd: Path, *args: str) -> str:
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "dvc"), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    assert r.returncode == 0, f"dvc {args}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "shared").symlink_to(SHARED)
    return tmp_path


def _clone(work: Path, name: str) -> Path:
    dest = work / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def _small_corpus(dest: Path, ids: list[str]) -> Path:
    man = pd.read_csv(SHARED / "corpus" / "manifest.csv", dtype=str, keep_default_na=False).set_index("clip_id")
    (dest / "videos").mkdir(parents=True)
    for i in ids: shutil.copy(SHARED / "corpus" / man.loc[i, "file"], dest / man.loc[i, "file"])
    man.loc[ids].reset_index().to_csv(dest / "manifest.csv", index=False)
    return dest


def _source(clone: Path) -> Path:
    return (clone / yaml.safe_load((clone / "data.dvc").read_text())["deps"][0]["path"]).resolve()


def test_make_data_from_every_state(work):
    clone = _clone(work, "clone")
    sample = (SHARED / "corpus" / "manifest.csv").read_bytes()
    _make(clone, "data")  # a fresh clone: the sample corpus comes in
    assert (clone / "data" / "manifest.csv").read_bytes() == sample and (clone / "data_pocus" / "manifest.csv").exists()
    one = _small_corpus(work / "corpus one", ["neg_asl_eat", "us_viral_whitelung_h1n1"])  # a space in the path, too
    _make(clone, "data", f"CORPUS={one}")  # after setup: data/ exists
    assert (clone / "data" / "manifest.csv").read_bytes() == (one / "manifest.csv").read_bytes() and _source(clone) == one.resolve()
    assert sorted(p.name for p in (clone / "data" / "videos").iterdir()) == ["neg_asl_eat.mkv", "us_viral_whitelung_h1n1.mp4"]
    two = _small_corpus(work / "two", ["neg_classroom"])
    _make(clone, "data", f"CORPUS={two}")  # after an earlier import
    assert _source(clone) == two.resolve() and len(list((clone / "data" / "videos").iterdir())) == 1
    assert "importing" not in _make(clone, "data", f"CORPUS={two}")  # the same folder again: nothing to do
    out = _make(clone, "repro", "STAGES=ingest")  # no CORPUS=: make repro keeps the corpus data.dvc tracks
    assert "importing" not in out and _source(clone) == two.resolve(), out[-3000:]
    assert pd.read_parquet(clone / "artifacts" / "ingest" / "videos.parquet").video_id.tolist() == ["neg_classroom"]
    corpus = json.loads((clone / "artifacts" / "ingest" / "corpus.json").read_text())  # the run names its corpus
    assert Path(corpus["imported_from"]).resolve() == two.resolve() and corpus["manifest_sha256"] == hashlib.sha256((two / "manifest.csv").read_bytes()).hexdigest()
    assert f"make: corpus data/ <- {corpus['imported_from']}" in out
    _make(clone, "data")  # back to the sample corpus
    assert (clone / "data" / "manifest.csv").read_bytes() == sample and _source(clone) == (SHARED / "corpus").resolve()
    out = _make(clone, "data", f"CORPUS={work / 'nowhere'}", ok=False)
    assert "has no manifest.csv" in out and (clone / "data" / "manifest.csv").read_bytes() == sample  # refused, nothing lost


def test_push_pull_round_trip(work):
    store = work / "store"
    a, b = _clone(work, "a"), _clone(work, "b")
    for c in (a, b): _dvc(c, "remote", "modify", "--local", "store", "url", str(store))
    _make(a, "data")
    _dvc(a, "repro", "--single-item", "ingest")
    outs = lambda lock: {o["path"]: o["md5"] for o in yaml.safe_load(lock)["stages"]["ingest"]["outs"] if "artifacts/ingest/" in o["path"] and not o["path"].endswith(".json")}
    assert outs((a / "dvc.lock").read_text()) == outs((b / "dvc.lock").read_text())  # the data bytes the commit names (metrics carry times)
    targets = "TARGETS=data.dvc data_pocus.dvc ingest"
    _make(a, "push", targets)
    assert store.exists() and any(store.rglob("*"))
    _make(b, "pull", targets)  # a fresh clone: everything comes from the remote, nothing is recomputed
    assert (b / "artifacts" / "ingest" / "videos.parquet").read_bytes() == (a / "artifacts" / "ingest" / "videos.parquet").read_bytes()
    assert "didn't change" in _dvc(b, "repro", "--single-item", "ingest")
