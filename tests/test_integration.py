"""Integration: copy the repository to a temporary folder and run a real `dvc repro` there, on a small subset of the real
corpus plus bad files: ingest first (then a second repro does nothing and a forced rerun gives the same bytes), then the
curation chain select -> clip -> segment -> caption."""
import os, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import EXPECTED_BAD, ROOT, make_bad_corpus
from medgen.core import sha256_file

pytestmark = pytest.mark.integration
GOOD_IDS = ("us_viral_whitelung_h1n1", "us_normal_convex_pat2_133824", "us_covid_blines_volpicelli_v2", "us_bact_pneumonia_airbronchogram",
            "us_viral_subpleural_h1n1", "us_normal_convex_182106", "neg_asl_eat", "neg_asl_help", "neg_asl_thanks", "neg_classroom",
            "neg_people_detection")
SKIP = {".git", ".venv", "artifacts", "reports", "data", "scratch", "dvc_plots", ".pytest_cache", "__pycache__", "cache", "tmp"}


def _run(cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MPLBACKEND", None)  # the stage notebooks draw inline
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory, corpus):
    dest = tmp_path_factory.mktemp("repo") / "medgen"
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in SKIP and not (Path(d) == ROOT / "nbs")])
    _run(["git", "init", "-q"], dest)
    make_bad_corpus(dest / "subset", corpus, good_ids=GOOD_IDS)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["common"]["corpus_dir"] = "subset"
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def test_dvc_repro_ingest(repo):
    _run(["dvc", "repro", "ingest"], repo)
    out = repo / "artifacts" / "ingest"
    videos, rejected = pd.read_parquet(out / "videos.parquet"), pd.read_parquet(out / "rejections.parquet")
    assert sorted(videos.clip_id) == sorted(GOOD_IDS)
    assert dict(zip(rejected.clip_id, rejected.reason)) == EXPECTED_BAD
    assert {"license", "source", "frames", "fps", "duration_s", "codec", "container"} <= set(videos.columns)
    metrics = yaml.safe_load((out / "metrics.json").read_text())
    assert metrics["videos"] == 11 and metrics["rejected"] == 5 and metrics["by_domain"] == {"medical": 6, "non_medical": 5}
    assert metrics["sha256"]["videos.parquet"] == sha256_file(out / "videos.parquet")
    html = (repo / "reports" / "ingest.html").read_text()
    assert "image/png" in html and "bad_truncated" in html  # the contact sheet and the rejection table are in the report

    # a second repro does nothing
    assert "didn't change, skipping" in _run(["dvc", "repro", "ingest"], repo)
    assert "up to date" in _run(["dvc", "status", "ingest"], repo)

    # a forced rerun gives the same bytes
    before = {n: sha256_file(out / n) for n in ["videos.parquet", "rejections.parquet", "durations.csv"]}
    _run(["dvc", "repro", "--force", "ingest"], repo)
    assert before == {n: sha256_file(out / n) for n in before}


def test_dvc_dag_and_plots(repo):
    assert "ingest" in _run(["dvc", "dag"], repo)
    _run(["dvc", "plots", "show", "-o", "plots_out"], repo)
    page = (repo / "plots_out" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "../vendor/vega/vega.min.js" in page


def test_dvc_repro_curation_chain(repo):
    "select -> clip -> segment -> caption on the subset: non-medical videos leave with reasons, clips obey the rule, every clip gets a caption."
    _run(["dvc", "repro", "caption"], repo)
    art = repo / "artifacts"
    selected = pd.read_parquet(art / "select" / "videos.parquet")
    assert sorted(selected.clip_id) == sorted(g for g in GOOD_IDS if g.startswith("us_"))
    clips = pd.read_parquet(art / "segment" / "clips.parquet")
    params = yaml.safe_load((repo / "params.yaml").read_text())["segment"]
    assert len(clips) >= 1 and (clips.end_s - clips.start_s >= params["min_seconds"]).all()
    assert set(clips.video_id) <= set(selected.clip_id) and (clips.license.str.len() > 0).all()
    for f in clips.file:
        assert (art / "segment" / "clips" / f).stat().st_size > 1000
    captions = pd.read_parquet(art / "caption" / "captions.parquet")
    assert sorted(captions.clip_id) == sorted(clips.clip_id)
    assert (captions.caption_backend == "grounded").all() and (captions.detailed_caption.str.split().str.len() > 20).all()
    # one rejection table, carried forward: ingest's bad files, select's non-medical videos, segment's too-short video
    rejected = pd.read_parquet(art / "caption" / "rejections.parquet")
    by_id = dict(zip(rejected.clip_id, rejected.stage))
    assert {k: by_id[k] for k in EXPECTED_BAD} == {k: "ingest" for k in EXPECTED_BAD}
    assert all(by_id[g] == "select" for g in GOOD_IDS if g.startswith("neg_"))
    assert by_id["us_viral_whitelung_h1n1"] == "segment"  # 4.9 s: shorter than the 6 s rule
    assert "up to date" in _run(["dvc", "status", "caption"], repo)
