"""Ingest on bad input: the failures a crawl produces, in a manifest of the real corpus's shape (its column is still
named `clip_id`), and files that are not videos. The known answers on good files are in nbs/01_video and nbs/10_ingest."""
import pytest

from conftest import EXPECTED_BAD, make_bad_corpus
from medgen.core import REJECTION_COLUMNS
from medgen.curate.ingest import ingest_corpus
from medgen.video import VideoError, probe_video


def test_bad_files_become_rejection_rows(tmp_path, corpus):
    bad = make_bad_corpus(tmp_path / "c", corpus)
    assert "clip_id" in (bad / "manifest.csv").read_text().splitlines()[0].split(",")  # the real manifest's column name
    videos, rejected = ingest_corpus(bad, progress=False)
    assert sorted(videos.video_id) == ["neg_classroom", "us_viral_whitelung_h1n1"] and "clip_id" not in videos.columns
    assert list(rejected.columns) == REJECTION_COLUMNS
    assert dict(zip(rejected.video_id, rejected.reason)) == EXPECTED_BAD
    assert (rejected.stage == "ingest").all() and rejected.clip_id.isna().all()  # a video's own rows carry no clip id
    assert rejected.detail.str.len().gt(5).all()
    assert "empty file" in rejected.set_index("video_id").loc["bad_zero_bytes", "detail"]


@pytest.mark.parametrize("content", [b"\x00" * 4096, b"RIFF1234AVI LIST" + bytes(range(256)) * 8])
def test_probe_rejects_garbage(tmp_path, content):
    p = tmp_path / "x.mp4"; p.write_bytes(content)
    with pytest.raises(VideoError):
        probe_video(p)


def test_bad_rows_change_nothing_for_the_good_ones(tmp_path, corpus):
    """The videos table of a corpus with every fault equals, byte for byte, that of the same good videos alone: what
    later stages read (select, domain CLIP, segment take only this table and these files) cannot depend on the bad ones."""
    import shutil
    import pandas as pd
    from medgen.core import sha256_file, write_table
    mixed = make_bad_corpus(tmp_path / "mixed", corpus)
    good = tmp_path / "good"; (good / "videos").mkdir(parents=True)
    man = pd.read_csv(mixed / "manifest.csv", dtype=str, keep_default_na=False, nrows=0).columns  # the same columns, in order
    rows = pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False)
    rows = rows[rows.clip_id.isin(["us_viral_whitelung_h1n1", "neg_classroom"])][list(man)]
    for f in rows.file: shutil.copy(corpus / f, good / f)
    rows.to_csv(good / "manifest.csv", index=False)
    tables = {}
    for name, folder in [("mixed", mixed), ("good", good)]:
        videos, _ = ingest_corpus(folder, progress=False)
        write_table(videos, tmp_path / f"{name}.parquet"); tables[name] = sha256_file(tmp_path / f"{name}.parquet")
    assert tables["mixed"] == tables["good"]
