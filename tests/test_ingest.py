"Unit tests of the ingest functions on real corpus clips and on bad files made here."
import numpy as np
import pandas as pd
import pytest

from conftest import EXPECTED_BAD, make_bad_corpus
from medgen.core import REJECTION_COLUMNS, append_rejections, rejection
from medgen.curate.ingest import ingest_corpus, ingest_metrics, read_manifest
from medgen.video import VideoError, probe_video, read_frames, write_video

# one clip per container the corpus holds
CONTAINERS = {"us_covid_blines_volpicelli_v1": "mov", "us_normal_linear_181206": "mov", "neg_asl_help": "matroska",
              "us_normal_convex_pat1_132943": "mpeg", "neg_classroom": "gif", "micro_zebrafish_ysl_nuclei_cil11813": "mov"}


@pytest.mark.parametrize("clip_id", sorted(CONTAINERS))
def test_probe_matches_manifest(corpus, manifest, clip_id):
    row = manifest.set_index("clip_id").loc[clip_id]
    info = probe_video(corpus / row.file)
    assert info.container.split(",")[0] == CONTAINERS[clip_id]
    assert (info.width, info.height) == (int(row.width), int(row.height))
    assert info.fps == pytest.approx(float(row.fps), rel=0.02)
    assert info.duration_s == pytest.approx(float(row.seconds), abs=0.6)  # the manifest rounds; mpeg starts at 0.54 s
    assert info.frames == round(info.duration_s * info.fps)


def test_read_frames_rates(corpus):
    path = corpus / "videos" / "us_covid_blines_volpicelli_v2.mov"  # 402 frames at 39 fps
    frames, times = read_frames(path, fps=1.0, max_side=96)
    assert frames.dtype == np.uint8 and frames.shape[1:] == (96, 96, 3) and len(frames) == 11
    np.testing.assert_allclose(times, np.arange(11), atol=1 / 39)
    eight, t8 = read_frames(path, n=8)
    assert eight.shape == (8, 432, 432, 3) and t8[0] == 0 and t8[-1] == pytest.approx(401 / 39)
    # frames differ (it is a real moving clip, not one frame repeated)
    assert np.abs(eight[0].astype(int) - eight[-1].astype(int)).mean() > 1


def test_write_video_roundtrip_is_deterministic(tmp_path, corpus):
    frames, _ = read_frames(corpus / "videos" / "neg_people_detection.gif", n=6, max_side=64)
    a = write_video(frames, tmp_path / "a.mp4", fps=2)
    b = write_video(frames, tmp_path / "b.mp4", fps=2)
    assert a.read_bytes() == b.read_bytes()
    back, _ = read_frames(a)
    assert back.shape[0] == 6
    assert np.abs(back.astype(int) - frames[:, : back.shape[1], : back.shape[2]].astype(int)).mean() < 8


def test_real_corpus_ingests_whole(corpus):
    videos, rejected = ingest_corpus(corpus, progress=False)
    assert len(videos) == 30 and len(rejected) == 0
    assert videos.license.str.len().gt(0).all() and videos.source.str.len().gt(0).all()
    m = ingest_metrics(videos, rejected)
    assert m["by_domain"] == {"medical": 19, "non_medical": 11}
    assert m["total_hours"] == pytest.approx(videos.duration_s.sum() / 3600, rel=1e-4)


def test_bad_files_become_rejection_rows(tmp_path, corpus):
    bad = make_bad_corpus(tmp_path / "c", corpus)
    videos, rejected = ingest_corpus(bad, progress=False)
    assert sorted(videos.clip_id) == ["neg_classroom", "us_viral_whitelung_h1n1"]
    assert list(rejected.columns) == REJECTION_COLUMNS
    assert dict(zip(rejected.clip_id, rejected.reason)) == EXPECTED_BAD
    assert (rejected.stage == "ingest").all() and rejected.detail.str.len().gt(5).all()
    assert "empty file" in rejected.set_index("clip_id").loc["bad_zero_bytes", "detail"]


@pytest.mark.parametrize("content", [b"", b"\x00" * 4096, b"RIFF1234AVI LIST" + bytes(range(256)) * 8])
def test_probe_rejects_garbage(tmp_path, content):
    p = tmp_path / "x.mp4"; p.write_bytes(content)
    with pytest.raises(VideoError):
        probe_video(p)


def test_unlisted_and_duplicate(tmp_path, corpus):
    bad = make_bad_corpus(tmp_path / "c", corpus)
    (bad / "videos" / "stray.mkv").write_bytes((corpus / "videos" / "neg_asl_eat.mkv").read_bytes())
    man = pd.read_csv(bad / "manifest.csv", dtype=str, keep_default_na=False)
    pd.concat([man, man.iloc[[0]]]).to_csv(bad / "manifest.csv", index=False)
    videos, rejected = ingest_corpus(bad, progress=False)
    reasons = set(zip(rejected.clip_id, rejected.reason))
    assert ("stray", "unlisted") in reasons and (man.clip_id[0], "duplicate_id") in reasons
    assert len(videos) == 2  # the first listing of the duplicated id still counts


def test_bad_manifest_errors(tmp_path):
    (tmp_path / "manifest.csv").write_text("clip_id,file\na,b.mp4\n")
    with pytest.raises(ValueError, match="lacks required columns"):
        read_manifest(tmp_path / "manifest.csv")
    with pytest.raises(FileNotFoundError):
        ingest_corpus(tmp_path / "absent")


def test_rejections_accumulate():
    r1 = append_rejections(None, [rejection("b", "ingest", "missing"), rejection("a", "ingest", "checksum")])
    r2 = append_rejections(r1, [rejection("z", "select", "non_medical", "score 0.1")])
    assert list(zip(r2.clip_id, r2.stage)) == [("a", "ingest"), ("b", "ingest"), ("z", "select")]
