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


CUT = """import sys, hashlib
from pathlib import Path
from medgen.curate.ingest import read_manifest
from medgen.curate.segment import cut_clip
from medgen.video import probe_video
corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
row = read_manifest(corpus / "manifest.csv").set_index("video_id").loc["us_normal_linear_181206"]
info = probe_video(corpus / row["file"])
for k, (a, b) in enumerate([(0.0, 8.0), (8.0, 16.0), (16.0, 24.0)]):
    cut_clip(corpus / row["file"], a, b, out / f"{k}.mp4", 8, 256, info)
    print(k, hashlib.sha256((out / f"{k}.mp4").read_bytes()).hexdigest())
"""


@pytest.mark.parametrize("perturb", ["1", "200"])
def test_clip_bytes_do_not_depend_on_the_heap(tmp_path, corpus, perturb):
    """us_normal_linear_181206 (234 px, 19.04 fps) gave different clip bytes between runs: x264's AVX-512 mbtree read
    uninitialised memory. Two processes whose heaps are filled differently (MALLOC_PERTURB_) must write the same bytes."""
    import os, subprocess, sys
    runs = []
    for env_value in [None, perturb]:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_PERTURB_"} | ({"MALLOC_PERTURB_": env_value} if env_value else {})
        out = tmp_path / f"run_{env_value}"; out.mkdir()
        r = subprocess.run([sys.executable, "-c", CUT, str(corpus), str(out)], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(r.stdout.split())
    assert len(runs[0]) == 6 and runs[0] == runs[1], runs
