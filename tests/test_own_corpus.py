"""A researcher's own corpus: lung POCUS clips only (no non-medical video; real clips of `../shared/corpus_pocus`, ids
with spaces and accents among them), run by `dvc repro` from a shell that has not activated the project's environment.
Curation runs through segment (its frame classifier learns from the shipped reference set), the seven filters and the
dataset stage; the short, low-resolution clips leave as rejection rows; the unicode id is kept, its clip files get a
safe name; the dataset card names the corpus."""
import json, os, shutil, subprocess
from pathlib import Path

import pandas as pd
import pytest
import ruamel.yaml

from conftest import ROOT
from test_integration import SKIP

pytestmark = pytest.mark.integration
POCUS = (ROOT / ".." / "shared" / "corpus_pocus").resolve()
LONG = {"us_normal_convex_pat3_134904": "pocus ünïcode pat3", "us_normal_convex_pat4_135904": "us_normal_convex_pat4_135904",
        "us_normal_linear_18122": "us_normal_linear_18122"}  # 9.8-10.6 s: long enough for MedGen's 6 s rule
SHORT = {"us_covid_pocusatlas_43": "us_covid_pocusatlas_43", "us_covid_pocusatlas_44": "us_covid_pocusatlas_44"}  # ~4 s, 139-163 px


def dvc_without_environment(args: list[str], cwd: Path, ok: bool = True) -> str:
    "`dvc ARGS` with a PATH that has no project environment on it (a DVC user's shell): the stage commands find .venv themselves."
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=2400)
    assert (r.returncode == 0) == ok, f"dvc {args}: rc {r.returncode}\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"
    return r.stdout + r.stderr


def pocus_corpus(dest: Path, ids: dict[str, str]) -> Path:
    "A corpus folder of POCUS clips, each under its new id (and a file named after it: spaces and accents kept)."
    man = pd.read_csv(POCUS / "manifest.csv", dtype=str, keep_default_na=False).set_index("clip_id")
    (dest / "videos").mkdir(parents=True)
    rows = []
    for old, new in ids.items():
        src = POCUS / man.loc[old, "file"]
        file = f"videos/{new}{src.suffix}"
        shutil.copy(src, dest / file)
        rows.append(man.loc[old].to_dict() | {"video_id": new, "file": file})
    pd.DataFrame(rows).to_csv(dest / "manifest.csv", index=False)
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("own") / "medgen"
    (dest.parent / "shared").symlink_to(ROOT.parent / "shared")  # where data_reference.dvc's import says it came from
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in SKIP and not (Path(d) == ROOT / "nbs")])
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    pocus_corpus(dest / "data", LONG | SHORT)
    rt = ruamel.yaml.YAML()
    with open(dest / "params.yaml") as f: params = rt.load(f)
    params["defects"].update(calibration_sources=["us_normal_convex_182106", "neg_classroom", "neg_asl_help"],  # from the reference set
                             evaluation_sources=["us_covid_blines_volpicelli_v2", "neg_people_detection", "neg_asl_eat"], natural_faces=["neg_asl_help", "neg_asl_eat"],
                             face_donors={"calibration": [{"image": "skimage:astronaut", "face_box": [68, 178, 172, 278]}],
                                          "evaluation": [{"image": "skimage:lfw:0", "face_box": [0, 25, 0, 25]}]})
    for f in params["filters"].values(): f["eval_defects"] = ["blur", "darken"]  # a small defect-set evaluation
    with open(dest / "params.yaml", "w") as f: rt.dump(params, f)
    return dest


def test_no_environment_is_one_line(repo):
    "Without any environment to find (no .venv in the copy yet), the first stage says what to do in one line."
    out = dvc_without_environment(["repro", "ingest"], repo, ok=False)
    assert "medgen-stage: no project environment: run `make setup`" in out and "exited with 127" in out, out[-3000:]
    assert "Traceback" not in out


def test_medical_only_corpus_is_curated(repo):
    (repo / ".venv").symlink_to(ROOT / ".venv")  # the project's environment, not on PATH: bin/medgen-stage finds it
    dvc_without_environment(["repro", "dataset"], repo)
    art = repo / "artifacts"
    assert sorted(pd.read_parquet(art / "ingest" / "videos.parquet").video_id) == sorted([*LONG.values(), *SHORT.values()])
    corpus = json.loads((art / "ingest" / "corpus.json").read_text())
    assert corpus["imported_from"] == "data" and corpus["manifest_sha256"] == __import__("hashlib").sha256((repo / "data" / "manifest.csv").read_bytes()).hexdigest()
    classifier = json.loads((art / "segment" / "classifier.json").read_text())
    by_source = {t["source"].split(" ")[0]: t for t in classifier["training"]}
    assert by_source["this"]["non_medical_videos"] == 0 and by_source["reference"]["non_medical_videos"] == 11  # negatives: the reference's only
    assert by_source["reference"]["medical_videos"] == 19
    clips = pd.read_parquet(art / "segment" / "clips.parquet")
    seg = pd.read_parquet(art / "segment" / "rejections.parquet").query("stage == 'segment'")
    selected = set(pd.read_parquet(art / "select" / "videos.parquet").video_id)
    assert selected == set(clips.video_id) | set(seg.video_id)  # every selected video: clips or a reason, nothing silent
    assert set(SHORT.values()) & selected <= set(seg.video_id)  # ~4 s, below 224 px: rejection rows
    assert set(seg[seg.video_id.isin(SHORT.values())].reason) <= {"below_resolution_floor", "no_valid_segment"}
    assert len(clips) >= 1, seg
    for r in clips.itertuples():  # the id kept in the table, the file named safely
        assert r.clip_id.startswith(r.video_id + "__") and r.file.isascii() and " " not in r.file
        assert (art / "segment" / "clips" / r.file).stat().st_size > 1000
    unicode_clips = clips[clips.video_id == "pocus ünïcode pat3"]  # its 9.8 s passed every rule when this test was written
    assert len(unicode_clips) and unicode_clips.file.str.startswith("pocus_unicode_pat3-").all(), clips[["clip_id", "file"]]
    meta = pd.read_csv(art / "dataset" / "medvideocap" / "metadata.csv")
    assert "pocus ünïcode pat3__00" in set(meta.name) and meta.file_name.map(lambda f: f.isascii() and " " not in f).all()  # the id kept, the file safe
    card = (art / "dataset" / "medvideocap" / "README.md").read_text()
    assert f"curated from the corpus imported from `data` (manifest SHA-256 `{corpus['manifest_sha256']}`)" in card.replace("\n", " ")
    for stage in ["filter_border", "filter_ocr", "filter_aesthetic", "filter_technical", "filter_joint", "filter_dynamics", "filter_privacy", "dataset"]:
        assert (repo / "reports" / f"{stage}.ipynb").exists(), stage
    assert "up to date" in dvc_without_environment(["status", "dataset"], repo)


def test_a_corpus_curation_empties_stops_at_split_with_one_line(repo):
    "Only the short, small clips: curation keeps nothing, and split stops with one line saying how many and why."
    shutil.rmtree(repo / "data")
    pocus_corpus(repo / "data", SHORT)
    out = dvc_without_environment(["repro", "split"], repo, ok=False)
    line = [l for l in out.splitlines() if l.startswith("medgen-stage: stage split stopped:")]
    assert len(line) == 1, out[-4000:]
    assert "curation kept 0 clip(s) from 0 source video(s)" in line[0] and "segment below_resolution_floor (2)" in line[0], line
    assert "Traceback" not in out, out[-4000:]
