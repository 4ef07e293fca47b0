"""The segment stage on bad input: impossible rule lengths, and an unreadable video among good ones (a clear rejection
row, and the run goes on). The known answers (the rule, splitting, grouped cross-validation, the head, similarity,
planning, cutting real clips) are in nbs/13_segment."""
import numpy as np
import pandas as pd
import pytest

from medgen.core import REJECTION_COLUMNS, rejections_frame
from medgen.curate.ingest import read_manifest
from medgen.curate.segment import find_segments, segment_videos, split_run


def test_impossible_lengths():
    with pytest.raises(ValueError, match="min_len"):
        find_segments([1], [], -1, 0.9)
    with pytest.raises(ValueError, match="max_len"):
        split_run(0, 20, 6, 4)


def _scores(video_id, n, prob=0.9, sim=0.97):
    return pd.DataFrame(dict(video_id=video_id, t_s=np.arange(n, dtype=float), medical_prob=prob,
                             similarity_to_prev=np.r_[np.nan, np.full(n - 1, sim)]))


def test_unreadable_video_is_a_row_and_the_run_goes_on(tmp_path, corpus):
    man = read_manifest(corpus / "manifest.csv").set_index("video_id", drop=False)  # the manifest's rows: no stored probe
    sel = man.loc[["us_bact_pneumonia_airbronchogram", "us_viral_subpleural_h1n1"]].copy()
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all\n" * 50)
    sel.loc["us_bact_pneumonia_airbronchogram", "file"] = str(tmp_path / "broken.mp4")  # an absolute path wins over corpus_dir
    scores = pd.concat([_scores(v, 7) for v in sel.video_id])
    clips, rejected = segment_videos(sel, scores, corpus, tmp_path / "out", out_fps=8, max_side=64, progress=False)
    assert list(clips.clip_id) == ["us_viral_subpleural_h1n1__00"]  # the good video is cut all the same
    assert len(rejected) == 1
    r = rejected[0]
    assert (r["video_id"], r["clip_id"], r["stage"], r["reason"]) == ("us_bact_pneumonia_airbronchogram", None, "segment", "unreadable")
    assert "cannot open" in r["detail"]
    assert list(rejections_frame(rejected).columns) == REJECTION_COLUMNS
