"""Integration: copy the repository to a temporary folder and run a real `dvc repro` there, on a small subset of the real
corpus plus bad files: ingest first (a second repro does nothing, a forced rerun gives the same bytes and the same
reports), then select -> domain_clip -> segment -> caption -> the border filter. The student's path is checked in the same
copy: a pipeline notebook run by hand writes to scratch/ and leaves DVC's outputs alone, in a kernel and in a real browser."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import ruamel.yaml
import yaml

from conftest import EXPECTED_BAD, ROOT, make_bad_corpus
from medgen.core import sha256_file

pytestmark = pytest.mark.integration
GOOD_IDS = ("us_viral_whitelung_h1n1", "us_normal_convex_pat2_133824", "us_covid_blines_volpicelli_v2", "us_bact_pneumonia_airbronchogram",
            "us_viral_subpleural_h1n1", "us_normal_convex_182106", "neg_asl_eat", "neg_asl_help", "neg_asl_thanks", "neg_classroom",
            "neg_people_detection")
SKIP = {".git", ".venv", "artifacts", "reports", "data", "data.dvc", "scratch", "dvc_plots", ".pytest_cache", "__pycache__", "cache", ".cache", "tmp"}


def _run(cmd, cwd, timeout=1500):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MPLBACKEND", None)  # the stage notebooks draw inline
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory, corpus):
    "A copy of the project whose `data/` is a subset of the corpus plus bad files; the filters' defect set uses its sources."
    dest = tmp_path_factory.mktemp("repo") / "medgen"
    (dest.parent / "shared").symlink_to(ROOT.parent / "shared")  # where data_reference.dvc's import says it came from
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in SKIP and not (Path(d) == ROOT / "nbs")])
    _run(["git", "init", "-q"], dest)
    make_bad_corpus(dest / "data", corpus, good_ids=GOOD_IDS)
    rt = ruamel.yaml.YAML()  # a knob edit in the copy (the defect set's sources), comments kept as DVC keeps them
    with open(dest / "params.yaml") as f: params = rt.load(f)
    params["defects"].update(calibration_sources=["us_normal_convex_182106", "neg_classroom", "neg_asl_help"],
                             evaluation_sources=["us_covid_blines_volpicelli_v2", "neg_people_detection", "neg_asl_eat"], natural_faces=["neg_asl_help", "neg_asl_eat"],
                             face_donors={"calibration": [{"image": "skimage:astronaut", "face_box": [68, 178, 172, 278]}],
                                          "evaluation": [{"image": "skimage:lfw:0", "face_box": [0, 25, 0, 25]}]})
    with open(dest / "params.yaml", "w") as f: rt.dump(params, f)
    assert "# every stage's random seed" in (dest / "params.yaml").read_text()
    return dest


def test_dvc_repro_ingest(repo):
    _run(["dvc", "repro", "ingest"], repo)
    out = repo / "artifacts" / "ingest"
    videos, rejected = pd.read_parquet(out / "videos.parquet"), pd.read_parquet(out / "rejections.parquet")
    assert sorted(videos.video_id) == sorted(GOOD_IDS)
    assert dict(zip(rejected.video_id, rejected.reason)) == EXPECTED_BAD and rejected.clip_id.isna().all()
    assert {"license", "source", "frames", "fps", "duration_s", "codec", "container"} <= set(videos.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["videos"] == 11 and metrics["rejected"] == len(EXPECTED_BAD) and metrics["by_domain"] == {"medical": 6, "non_medical": 5}
    assert metrics["sha256"]["videos.parquet"] == sha256_file(out / "videos.parquet") and metrics["stage_seconds"] > 0
    report = (repo / "reports" / "ingest.ipynb").read_text()
    assert "image/jpeg" in report and "bad_truncated" in report  # the contact sheet (large: stored as JPEG) and the rejection table are in the report

    # a second repro does nothing
    assert "didn't change, skipping" in _run(["dvc", "repro", "ingest"], repo)
    assert "up to date" in _run(["dvc", "status", "ingest"], repo)

    # a forced rerun gives the same bytes, the executed report included (its progress bars and log times went to the log)
    names = ["videos.parquet", "rejections.parquet", "durations.csv"]
    before = {n: sha256_file(out / n) for n in names} | {"report": sha256_file(repo / "reports" / "ingest.ipynb")}
    _run(["dvc", "repro", "--force", "ingest"], repo)
    assert before == {n: sha256_file(out / n) for n in names} | {"report": sha256_file(repo / "reports" / "ingest.ipynb")}


def test_reports_are_lean(repo):
    "No stderr, progress widgets or timing metadata in an executed report; no HTML beside it (`make docs` renders it)."
    nb = nbformat.read(repo / "reports" / "ingest.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert "duration" not in nb.metadata.get("papermill", {}) and not list((repo / "reports").glob("*.html"))
    _run(["medgen-docs"], repo)
    assert "data:image/jpeg;base64" in (repo / "reports" / "html" / "ingest.html").read_text()


def test_dvc_dag_and_plots(repo):
    assert "ingest" in _run(["dvc", "dag"], repo)
    _run(["dvc", "plots", "show", "-o", "plots_out"], repo)
    page = (repo / "plots_out" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "../vendor/vega/vega.min.js" in page


def test_dvc_repro_curation_chain(repo):
    "select -> domain_clip -> segment -> caption -> border filter: non-medical videos leave with reasons, clips obey the rule and carry their file."
    _run(["dvc", "repro", "filter@border"], repo)
    art = repo / "artifacts"
    selected = pd.read_parquet(art / "select" / "videos.parquet")
    assert sorted(selected.video_id) == sorted(g for g in GOOD_IDS if g.startswith("us_"))
    clips = pd.read_parquet(art / "segment" / "clips.parquet")
    min_seconds = yaml.safe_load((repo / "params.yaml").read_text())["segment"]["min_seconds"]
    assert len(clips) >= 1 and (clips.end_s - clips.start_s >= min_seconds).all()
    assert set(clips.video_id) <= set(selected.video_id) and (clips.license.str.len() > 0).all()
    for f in clips.file:
        assert (art / "segment" / "clips" / f).stat().st_size > 1000
    # MedGen's rule on the frames table: every 1-fps frame inside a clip is medical and similar enough to the one before
    seg = yaml.safe_load((repo / "params.yaml").read_text())["segment"]
    frames = pd.read_parquet(art / "segment" / "frames.parquet")
    for c in clips.itertuples():
        inside = frames[(frames.video_id == c.video_id) & (frames.t_s >= c.start_s - 1e-6) & (frames.t_s <= c.end_s + 1e-6)]
        assert (inside.medical_prob >= seg["threshold"]).all() and (inside.similarity_to_prev.iloc[1:] > seg["tau"]).all(), c.clip_id
    seg_rows = pd.read_parquet(art / "segment" / "rejections.parquet").query("stage == 'segment'")
    assert set(selected.video_id) == set(clips.video_id) | set(seg_rows.video_id)  # every selected video: clips or a reason
    captions = pd.read_parquet(art / "caption" / "captions.parquet")
    assert sorted(captions.clip_id) == sorted(clips.clip_id)
    assert (captions.caption_backend == "grounded").all() and (captions.caption_medgen_detailed.str.split().str.len() > 20).all()
    # each clip carries what later stages need: its file, its source video, its licence
    border = pd.read_parquet(art / "filter_border" / "clips.parquet")
    assert {"file", "video_id", "license"} <= set(border.columns)
    # one rejection table, carried forward: ingest's bad files, select's non-medical videos, segment's too-short video
    rejected = pd.read_parquet(art / "filter_border" / "rejections.parquet")
    videos_own = rejected[rejected.clip_id.isna()].set_index("video_id").stage
    assert {k: videos_own[k] for k in EXPECTED_BAD} == {k: "ingest" for k in EXPECTED_BAD}
    assert all(videos_own[g] == "select" for g in GOOD_IDS if g.startswith("neg_"))
    assert videos_own["us_viral_whitelung_h1n1"] == "segment"  # 4.9 s: shorter than the 6 s rule
    clip_rows = rejected[rejected.clip_id.notna()]
    assert set(clip_rows.stage) <= {"caption", "filter_border"} and clip_rows.reason.str.match(r"^[a-z_]+$").all()
    assert "up to date" in _run(["dvc", "status", "filter@border"], repo)


def test_killed_filter_stage_resumes_from_its_item_cache(repo):
    """Kill the border filter's stage process mid-way (SIGKILL, its kernel included), rerun it: the items it had
    finished come from the item cache (`nbs/04_executor`), and the outputs are the bytes of an uninterrupted run."""
    import signal, time
    import psutil
    _run(["dvc", "repro", "--single-item", "filter@border"], repo)  # (done by the chain test when run in order)
    art = repo / "artifacts" / "filter_border"
    names = ["clips.parquet", "scores.parquet", "rejections.parquet", "defect_eval.parquet"]
    reference = {n: sha256_file(art / n) for n in names}
    cache = repo / ".cache" / "items"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MPLBACKEND", None)
    dvc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "filter@border"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    entries = lambda: len(list(cache.rglob("*.json"))) if cache.exists() else 0
    deadline = time.time() + 600
    while entries() < 5 and dvc.poll() is None and time.time() < deadline: time.sleep(0.2)
    assert dvc.poll() is None, "the stage finished before it could be killed: " + dvc.stdout.read()[-2000:]
    stage = [p for p in psutil.Process(dvc.pid).children(recursive=True) if any("medgen-stage" in a for a in p.cmdline())]
    if not stage: dvc.kill(); dvc.wait(timeout=60)  # never leave a dvc running (its lock would fail the tests after this one)
    assert stage, "no medgen-stage process under dvc"
    for p in stage[0].children(recursive=True) + [stage[0]]: p.send_signal(signal.SIGKILL)
    out = dvc.communicate(timeout=300)[0]
    killed_at = entries()
    assert dvc.returncode != 0 and killed_at >= 5, out[-2000:]
    log = _run(["dvc", "repro", "--single-item", "filter@border"], repo)
    assert "items from the cache" in log, log[-3000:]
    assert {n: sha256_file(art / n) for n in names} == reference
    assert entries() > killed_at  # the rest was computed now, and kept


def test_segment_and_caption_rerun_from_their_item_caches(repo):
    """A forced rerun of segment and of caption (DVC removes their outputs first) takes every video's clips and every
    clip's caption from the item cache: the clip files are written back from it, and every output is the same bytes."""
    _run(["dvc", "repro", "--single-item", "caption"], repo)  # (done by the chain test when run in order)
    seg, cap = repo / "artifacts" / "segment", repo / "artifacts" / "caption"
    outputs = lambda: ({p.relative_to(repo).as_posix(): sha256_file(p) for p in sorted((seg / "clips").iterdir())}
                       | {n: sha256_file(seg / n) for n in ("clips.parquet", "rejections.parquet", "frames.parquet")}
                       | {n: sha256_file(cap / n) for n in ("captions.parquet", "rejections.parquet")})
    reference = outputs()
    n_videos = len(pd.read_parquet(repo / "artifacts" / "select" / "videos.parquet"))
    n_clips = len(pd.read_parquet(seg / "clips.parquet"))
    for stage, message in [("segment", f"segment: {n_videos} of {n_videos} items from the cache"),
                           ("caption", f"caption (grounded): {n_clips} of {n_clips} items from the cache")]:
        _run(["dvc", "repro", "--force", "--single-item", stage], repo)  # fills the cache (the kill test empties it)
        assert message in _run(["dvc", "repro", "--force", "--single-item", stage], repo)
    assert outputs() == reference and "up to date" in _run(["dvc", "status", "caption"], repo)


def test_profile_switch_edits_one_value_and_reruns(repo):
    """`medgen-profile paper` changes common.profile and nothing else in params.yaml; every stage is then stale (the param
    and the profile file), the runner merges params/paper.yaml, and `dvc repro` reruns the stage at paper scale."""
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    try:
        _run(["medgen-profile", "paper"], repo)
        assert params_file.read_text() == original.replace("profile: embedded", "profile: paper", 1)
        status = _run(["dvc", "status", "ingest", "select"], repo)
        assert "params/paper.yaml" in status and "common.profile" in status
        out = _run([sys.executable, "-c", "from medgen.stages import load_stage; print(load_stage('ingest')['thumb_side'])"], repo)
        assert out.strip().splitlines()[-1] == "256"
        assert "Running stage 'ingest'" in _run(["dvc", "repro", "ingest"], repo)
        assert '"thumb_side": 256' in (repo / "reports" / "ingest.ipynb").read_text()  # papermill's record of the values it ran with
    finally:
        _run(["medgen-profile", "embedded"], repo)
    assert params_file.read_text() == original
    _run(["dvc", "repro", "ingest"], repo)
    assert '"thumb_side": 160' in (repo / "reports" / "ingest.ipynb").read_text()
    assert "up to date" in _run(["dvc", "status", "ingest", "select"], repo)


def _dvc_state(repo):
    return _run(["dvc", "status", "--json"], repo), {p: sha256_file(p) for p in sorted((repo / "artifacts").rglob("*")) if p.is_file()}


def test_student_runs_a_stage_notebook_by_hand(repo):
    "The select notebook, run top to bottom from its own folder as JupyterLab does, with params.yaml's values: outputs in scratch/, DVC untouched."
    before = _dvc_state(repo)
    executed = repo / "scratch" / "by_hand_select.ipynb"
    executed.parent.mkdir(exist_ok=True)
    _run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output", str(executed),
          "select.ipynb"], repo / "nbs" / "pipeline")
    assert sorted(pd.read_parquet(repo / "scratch" / "select" / "videos.parquet").video_id) == \
        sorted(pd.read_parquet(repo / "artifacts" / "select" / "videos.parquet").video_id)
    assert before == _dvc_state(repo)


@pytest.mark.browser
def test_student_path_in_a_browser(repo):
    "JupyterLab on loopback, headless Chromium: the index map and the border filter notebook run all cells and show a figure and a table."
    from jupyter_browser import jupyter_lab, run_notebook_in_browser
    before = _dvc_state(repo)
    sources = {p: p.read_bytes() for p in [repo / "nbs" / "index.ipynb", repo / "nbs" / "pipeline" / "filter.ipynb"]}
    with jupyter_lab(repo, Path(sys.executable)) as url:
        index = run_notebook_in_browser(url, "nbs/index.ipynb", timeout_s=300)
        assert not index.has_error and index.n_images >= 1, index.errors
        border = run_notebook_in_browser(url, "nbs/pipeline/filter.ipynb", timeout_s=600,
                                         screenshot=repo.parent / "filter_border_in_browser.png")
    assert not border.has_error, border.errors
    assert border.n_executed == border.n_code_cells
    assert border.n_images >= 2 and border.n_tables >= 1  # the defect flag rates and the audit sheet; the scores table
    assert (repo / "scratch" / "filter_border" / "clips.parquet").exists()
    assert before == _dvc_state(repo) and all(p.read_bytes() == b for p, b in sources.items())


def test_empty_clip_set_flows_to_the_dataset(repo):
    """No video yields a clip (segment's rule set beyond every video's length): caption, the seven filters and the dataset
    stage run on empty tables, each report says so, the funnel still adds up. Runs last: it changes the copy's params."""
    rt = ruamel.yaml.YAML()
    with open(repo / "params.yaml") as f: params = rt.load(f)
    params["segment"]["min_seconds"] = 10_000
    for f in params["filters"].values(): f["eval_defects"] = ["blur", "darken"]  # keep the defect-set evaluation small here (darken: the joint filter's positives)
    with open(repo / "params.yaml", "w") as f: rt.dump(params, f)
    _run(["dvc", "repro", "dataset"], repo)
    art = repo / "artifacts"
    assert len(pd.read_parquet(art / "segment" / "clips.parquet")) == 0
    stages = ["caption", *(f"filter_{f}" for f in params["filters"]), "dataset"]
    for stage in stages:
        assert "Nothing to do: no clip reached" in (repo / "reports" / f"{stage}.ipynb").read_text(), stage
    assert "caption_medgen_detailed" in pd.read_parquet(art / "caption" / "captions.parquet").columns  # empty, with its columns
    metrics = json.loads((art / "dataset" / "metrics.json").read_text())
    assert metrics["clips"] == 0, metrics
    funnel = pd.read_parquet(art / "dataset" / "funnel.parquet")
    assert (funnel.unaccounted == 0).all()
    seg_rows = pd.read_parquet(art / "dataset" / "rejections.parquet").query("stage == 'segment'")
    selected = pd.read_parquet(art / "select" / "videos.parquet")
    assert set(seg_rows.video_id) == set(selected.video_id)  # every selected video left at segment, with its reason
