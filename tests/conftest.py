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
    """A corpus folder with real clips and every fault a crawl or a hand-written manifest produces, in a manifest of the
    real shape (bad rows first, so their line numbers do not depend on the good ones): a zero-byte file, a truncated mp4,
    a text file named .mp4, a checksum mismatch, a missing file; paths out of the corpus (`..`, absolute, /etc/passwd,
    a symbolic link) to a real video with its right checksum; videos with no usable picture (black, one frame, tiny,
    a strip); an empty id, an id that is a path, `seconds=nan`, a record garbled by a quote closed one row later; and
    the first good video's bytes again under another id. The outside video sits in `dest.parent / "outside"`."""
    import numpy as np
    from medgen.core import sha256_file
    from medgen.video import write_video
    man = pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False).set_index("clip_id")
    (dest / "videos").mkdir(parents=True, exist_ok=True)
    outside = dest.parent / "outside"; outside.mkdir(exist_ok=True)
    template = man.loc[good_ids[0]].to_dict()
    good_file = corpus / template["file"]
    good_bytes = good_file.read_bytes()
    shutil.copy(good_file, outside / "outside.mp4")
    rows = []
    def add(cid, file, sha=None, **extra): rows.append(template | {"clip_id": cid, "file": file, "sha256": sha or sha256_file(dest / file)} | extra)
    for cid, data in {"bad_zero_bytes": b"", "bad_truncated": good_bytes[: len(good_bytes) // 4],
                      "bad_text_named_mp4": b"this is a text file, not a video\n" * 20}.items():
        (dest / "videos" / f"{cid}.mp4").write_bytes(data); add(cid, f"videos/{cid}.mp4")
    shutil.copy(good_file, dest / "videos" / "bad_checksum.mp4"); add("bad_checksum", "videos/bad_checksum.mp4", "0" * 64)
    add("bad_missing", "videos/bad_missing.mp4", "0" * 64)
    right = sha256_file(outside / "outside.mp4")
    add("bad_escape", "../outside/outside.mp4", right)
    add("bad_absolute", str(outside / "outside.mp4"), right)
    add("bad_passwd", "/etc/passwd", "0" * 64)
    (dest / "videos" / "bad_symlink.mp4").symlink_to(outside / "outside.mp4"); add("bad_symlink", "videos/bad_symlink.mp4", right)
    rng = np.random.default_rng(0)
    for cid, frames in {"bad_black": np.zeros((16, 96, 96, 3), np.uint8), "bad_still": rng.integers(0, 255, (1, 96, 96, 3), dtype=np.uint8),
                        "bad_tiny": rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8),
                        "bad_strip": rng.integers(0, 255, (16, 64, 400, 3), dtype=np.uint8)}.items():
        write_video(frames, dest / "videos" / f"{cid}.mp4", fps=8); add(cid, f"videos/{cid}.mp4")
    add("", f"videos/bad_black.mp4")                    # line 15: an empty id
    add("../../evil", f"videos/bad_black.mp4")          # line 16: an id that is a path
    add("bad_nan_seconds", f"videos/bad_black.mp4", seconds="nan")
    for cid in good_ids:
        shutil.copy(corpus / man.loc[cid, "file"], dest / man.loc[cid, "file"])
        rows.append(man.loc[cid].to_dict() | {"clip_id": cid})
    shutil.copy(good_file, dest / "videos" / "zz duplicate é.mp4"); add("zz_duplicate_content", "videos/zz duplicate é.mp4")
    table = pd.DataFrame(rows)
    table = table[["clip_id"] + [c for c in table.columns if c != "clip_id"]]  # the real manifest's order: the id first
    table.to_csv(dest / "manifest.csv", index=False)
    # a quote opened in one record and closed in the next: one garbled record spanning two lines
    cols = list(table.columns)
    rec = {c: "x" for c in cols} | {"clip_id": "bad_garbled", "file": '"videos/a.mp4', "sha256": "0" * 64}
    with open(dest / "manifest.csv", "a") as f:
        f.write(",".join(rec[c] for c in cols[:-1]) + "\n" + "y" + '",' + rec[cols[-1]] + "\n")
    return dest


EXPECTED_BAD = {"bad_zero_bytes": "unreadable", "bad_truncated": "unreadable", "bad_text_named_mp4": "unreadable",
                "bad_checksum": "checksum", "bad_missing": "missing", "bad_escape": "outside_corpus", "bad_absolute": "outside_corpus",
                "bad_passwd": "outside_corpus", "bad_symlink": "outside_corpus", "bad_black": "no_picture", "bad_still": "single_frame",
                "bad_tiny": "too_small", "bad_strip": "extreme_aspect", "manifest_row_15": "bad_manifest_row",
                "manifest_row_16": "bad_manifest_row", "bad_nan_seconds": "bad_manifest_row", "bad_garbled": "bad_manifest_row",
                "zz_duplicate_content": "duplicate_content"}


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
