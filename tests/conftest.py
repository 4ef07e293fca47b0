"Shared fixtures: the project root, the real corpus (brought in by `make setup` through data.dvc), a bad-file factory."
import os, shutil
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def corpus() -> Path:
    "The real sample corpus; `make setup` imports it into data/ with DVC."
    d = ROOT / "data"
    if not (d / "manifest.csv").exists():
        pytest.fail("data/manifest.csv is missing: run `make setup` (it runs `dvc update data.dvc`) first")
    return d


@pytest.fixture(scope="session")
def manifest(corpus) -> pd.DataFrame:
    return pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False)


def make_bad_corpus(dest: Path, corpus: Path, good_ids=("us_viral_whitelung_h1n1", "neg_classroom")) -> Path:
    """A corpus folder with real clips and the failures a crawl produces, listed in a manifest of the real shape:
    a zero-byte file, a truncated mp4, a text file named .mp4, a checksum mismatch and a missing file."""
    from medgen.core import sha256_file
    man = pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False).set_index("clip_id")
    (dest / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for cid in good_ids:
        shutil.copy(corpus / man.loc[cid, "file"], dest / man.loc[cid, "file"])
        rows.append(man.loc[cid].to_dict() | {"clip_id": cid})
    template = man.loc[good_ids[0]].to_dict()
    good_bytes = (corpus / template["file"]).read_bytes()
    bad = {"bad_zero_bytes": b"", "bad_truncated": good_bytes[: len(good_bytes) // 4],
           "bad_text_named_mp4": b"this is a text file, not a video\n" * 20}
    for cid, data in bad.items():
        (dest / "videos" / f"{cid}.mp4").write_bytes(data)
        rows.append(template | {"clip_id": cid, "file": f"videos/{cid}.mp4", "sha256": sha256_file(dest / "videos" / f"{cid}.mp4")})
    shutil.copy(corpus / template["file"], dest / "videos" / "bad_checksum.mp4")
    rows.append(template | {"clip_id": "bad_checksum", "file": "videos/bad_checksum.mp4", "sha256": "0" * 64})
    rows.append(template | {"clip_id": "bad_missing", "file": "videos/bad_missing.mp4"})
    pd.DataFrame(rows).to_csv(dest / "manifest.csv", index=False)
    return dest


EXPECTED_BAD = {"bad_zero_bytes": "unreadable", "bad_truncated": "unreadable", "bad_text_named_mp4": "unreadable",
                "bad_checksum": "checksum", "bad_missing": "missing"}


@pytest.fixture(scope="session")
def defect_set_of(corpus):
    """Build the filters' ground truth (medgen.curate.defects) once per session per (sources, defects): real clips decoded with
    params.yaml's `defects` settings (its parts: a source in neither list counts as calibration), defects injected with `common.seed`."""
    from medgen.core import load_params
    from medgen.curate.defects import build_defect_set, load_face_donors, load_sources
    p, seed = load_params(ROOT / "params.yaml", "defects"), load_params(ROOT / "params.yaml", "common")["seed"]
    cache = {}

    def make(sources=None, defects=None):
        parts = {**{s: "calibration" for s in p["calibration_sources"]}, **{s: "evaluation" for s in p["evaluation_sources"]}}
        sources = tuple(sorted(sources or parts))
        key = (sources, tuple(defects) if defects else None)
        if key not in cache:
            faces = tuple(s for s in p["natural_faces"] if s in sources)
            clips = load_sources(corpus, sources, fps=p["clip_fps"], duration_s=p["clip_seconds"], max_side=p["clip_max_side"])
            donors = {part: load_face_donors(specs, corpus) for part, specs in p["face_donors"].items()}
            cache[key] = build_defect_set(clips, seed=seed, fps=p["clip_fps"], defects=defects, progress=False, donors=donors,
                                          parts={s: parts.get(s, "calibration") for s in sources}, natural_faces=faces,
                                          natural_borders=[s for s in p["natural_borders"] if s in sources])
        return cache[key]
    return make
