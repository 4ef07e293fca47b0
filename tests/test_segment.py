"""MedGen's clip rule (stage `segment`): known answers on synthetic score sequences, run splitting, grouped
cross-validation that never puts a video on both sides, the classifier head, cutting real clips, bad input, and
(when the stage has run) the rule checked on the stage's own outputs."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from medgen.core import REJECTION_COLUMNS, rejections_frame
from medgen.curate.segment import (CLIP_COLUMNS, adjacent_similarity, balanced_weights, classification_metrics, clip_spans,
                            cross_validate_head, find_segments, fit_head, grouped_folds, load_head, maximal_runs,
                            plan_video, save_head, segment_videos, splice_similarity, split_run)
from medgen.video import probe_video, read_frames

TAU = 0.9
good = lambda n: np.full(max(n - 1, 0), 0.95)


def with_dip(n, k, value=0.5):
    "similarities of n frames where the pair (k, k+1) has `value`"
    s = good(n); s[k] = value
    return s


# (is_medical, similarity, min_len, expected segments)
CASES = {
    "exactly 6 s is kept": ([1] * 7, good(7), 6, [(0, 6)]),
    "5 s is rejected": ([1] * 6, good(6), 6, []),
    "all medical, 20 s": ([1] * 21, good(21), 6, [(0, 20)]),
    "no medical frame": ([0] * 21, good(21), 6, []),
    "empty input": ([], [], 6, []),
    "one frame": ([1], [], 6, []),
    "one frame, min_len 0": ([1], [], 0, [(0, 0)]),
    "a dip below tau splits": ([1] * 16, with_dip(16, 7), 6, [(0, 7), (8, 15)]),
    "a dip leaves one side too short": ([1] * 12, with_dip(12, 3), 6, [(4, 11)]),
    "one non-medical frame splits": ([1] * 7 + [0] + [1] * 7, good(15), 6, [(0, 6), (8, 14)]),
    "similarity equal to tau is not above it": ([1] * 16, with_dip(16, 7, TAU), 6, [(0, 7), (8, 15)]),
    "similarity just above tau keeps the run": ([1] * 16, with_dip(16, 7, np.nextafter(TAU, 1)), 6, [(0, 15)]),
    "NaN similarity breaks the run": ([1] * 16, with_dip(16, 7, np.nan), 6, [(0, 7), (8, 15)]),
    "medical run at the very end": ([0] * 5 + [1] * 7, good(12), 6, [(5, 11)]),
    "two short runs do not join": ([1] * 5 + [0] + [1] * 5, good(11), 6, []),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rule_known_answers(name):
    med, sim, min_len, expected = CASES[name]
    assert find_segments(med, sim, min_len, TAU) == expected


def test_maximal_runs_and_bad_lengths():
    assert maximal_runs([1, 1, 0, 1], [0.95, 0.95, 0.95], TAU) == [(0, 1), (3, 3)]
    assert maximal_runs([1, 1, 1], [0.95, 0.1], TAU) == [(0, 1), (2, 2)]
    with pytest.raises(ValueError, match="one value per adjacent pair"):
        find_segments([1, 1, 1], [0.95, 0.95, 0.95], 6, TAU)
    with pytest.raises(ValueError, match="min_len"):
        find_segments([1], [], -1, TAU)


@pytest.mark.parametrize("length,expected", [
    (5, []), (6, [(0, 6)]), (10, [(0, 10)]), (11, [(0, 11)]), (12, [(0, 6), (6, 12)]),
    (20, [(0, 10), (10, 20)]), (21, [(0, 7), (7, 14), (14, 21)]), (77, None)])
def test_split_run(length, expected):
    pieces = split_run(0, length, 6, 10)
    if expected is not None: assert pieces == expected
    if length >= 6:
        assert pieces[0][0] == 0 and pieces[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))  # touching, not overlapping
        assert all(b - a >= 6 for a, b in pieces)                      # every piece satisfies the rule
        if length != 11: assert all(b - a <= 10 for a, b in pieces)


def test_clip_spans_combines_rule_and_split():
    med = [1] * 30 + [0] + [1] * 8
    assert clip_spans(med, good(39), 6, 10, TAU) == [(0, 10), (10, 20), (20, 29), (31, 38)]
    with pytest.raises(ValueError, match="max_len"):
        split_run(0, 20, 6, 4)


@pytest.fixture(scope="module")
def real_groups(manifest):
    "Frame-level video ids and labels shaped like the corpus at 1 fps (one row per second of each video)."
    n = (manifest.seconds.astype(float).astype(int) + 1).to_numpy()
    groups = np.repeat(manifest.clip_id.to_numpy(), n)
    labels = np.repeat((manifest.domain == "medical").to_numpy(int), n)
    return groups, labels


@pytest.mark.parametrize("n_folds", [None, 3, 5])
def test_grouped_folds_never_split_a_video(real_groups, n_folds):
    groups, labels = real_groups
    folds = grouped_folds(groups, labels, n_folds, seed=0)
    assert len(folds) == (len(set(groups)) if n_folds is None else n_folds)
    seen = np.zeros(len(groups), int)
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(set(train.tolist()) | set(test.tolist())) == len(groups)
        seen[test] += 1
    assert (seen == 1).all()  # every frame is scored exactly once


def test_cross_validation_is_out_of_fold(real_groups):
    """Known answer: each video's frames share one random 'identity' direction, and the label is carried by another.
    A head that saw the video would score it perfectly through the identity; out of fold it must use the label direction."""
    groups, labels = real_groups
    rng = np.random.default_rng(0)
    ids = {g: rng.normal(size=16) for g in sorted(set(groups))}
    X = np.stack([ids[g] for g in groups]) + rng.normal(scale=0.1, size=(len(groups), 16))
    _, fold = cross_validate_head(X, labels, groups)
    assert all(len(set(fold[groups == g])) == 1 for g in set(groups))  # each video scored by one head
    oof, _ = cross_validate_head(X, labels, groups)
    # no label information: out of fold the head is near chance even though in-sample it fits
    assert classification_metrics(labels, oof)["auc"] < 0.8
    assert classification_metrics(labels, fit_head(X, labels, groups).predict_proba(X)[:, 1])["auc"] > 0.95
    X[:, 0] += 5 * labels  # now add a label direction: out of fold it is found
    oof, _ = cross_validate_head(X, labels, groups)
    m = classification_metrics(labels, oof)
    assert m["auc"] > 0.95 and m["accuracy"] > 0.9 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1


def test_balanced_weights_and_head_roundtrip(tmp_path):
    w = balanced_weights([1, 1, 1, 0], ["a", "a", "b", "c"])
    # a: 2 frames, b: 1 frame (class 1: 2 videos), c: 1 frame (class 0: 1 video)
    np.testing.assert_allclose(w, np.array([0.25, 0.25, 0.5, 1.0]) / 0.5)
    rng = np.random.default_rng(1)
    X, y, g = rng.normal(size=(40, 5)), np.r_[[0] * 20, [1] * 20], np.repeat(list("abcdefgh"), 5)
    head = fit_head(X, y, g)
    save_head(head, tmp_path / "h.json", backend="domain-clip-linear")
    back, meta = load_head(tmp_path / "h.json")
    np.testing.assert_array_equal(back.predict_proba(X), head.predict_proba(X))
    assert meta == {"backend": "domain-clip-linear"}
    with pytest.raises(ValueError, match="medical and non-medical"):
        fit_head(X, np.ones(40, int), g)


def test_similarities():
    np.testing.assert_allclose(adjacent_similarity(np.array([[3, 0], [1, 0], [0, 2]])), [1, 0])
    e = np.eye(3)[[0, 0, 1, 2]]  # video a = frames 0, 1 (x, x); b = 2 (y); c = 3 (z)
    np.testing.assert_allclose(splice_similarity(e, ["a", "a", "b", "c"]), np.zeros(6))


def test_plan_video_rejections():
    spans, r = plan_video("short", [0.9] * 5, good(5), 400, 400)
    assert spans == [] and r["reason"] == "no_valid_segment" and "4 s < 6 s" in r["detail"]
    spans, r = plan_video("low", [0.9] * 20, good(20), 320, 200, min_short_side=224)
    assert spans == [] and r["reason"] == "below_resolution_floor" and "200 px < 224 px" in r["detail"]
    spans, r = plan_video("gap", [0.9] * 4 + [0.1] + [0.9] * 5, good(10), 400, 400)
    assert r["detail"].startswith("longest medical run 4 s < 6 s") and "1/10 frames" in r["detail"]
    spans, r = plan_video("cut", [0.9] * 10, with_dip(10, 4), 400, 400, tau=TAU)
    assert "1 adjacent medical pairs with similarity <= tau" in r["detail"]
    assert plan_video("ok", [0.9] * 13, good(13), 400, 400, max_seconds=10) == ([(0, 6), (6, 12)], None)
    # at 2 fps, 6 s is 12 frame steps
    assert plan_video("2fps", [0.9] * 13, good(13), 400, 400, fps=2)[0] == [(0, 12)]
    assert plan_video("2fps", [0.9] * 12, good(12), 400, 400, fps=2)[0] == []


def _scores(video_id, n, prob=0.9, sim=0.97):
    return pd.DataFrame(dict(video_id=video_id, t_s=np.arange(n, dtype=float), medical_prob=prob,
                             similarity_to_prev=np.r_[np.nan, np.full(n - 1, sim)]))


def test_segment_real_videos_and_bad_input(tmp_path, corpus, root):
    from medgen.curate.ingest import ingest_corpus
    videos = ingest_corpus(root / "data", progress=False)[0].set_index("clip_id", drop=False)  # built from the corpus: CI has no artifacts
    sel = videos.loc[["us_viral_subpleural_h1n1", "us_viral_whitelung_h1n1", "us_normal_convex_pat1_132943"]].copy()
    bad = videos.loc[["us_bact_pneumonia_airbronchogram"]].copy()
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all\n" * 50)
    bad["file"] = str(tmp_path / "broken.mp4")  # an absolute path wins over corpus_dir in Path join
    sel = pd.concat([sel, bad])
    n1 = {r.clip_id: int((r.frames - 1) // r.fps) + 1 for r in sel.itertuples()}
    scores = pd.concat([_scores(v, n1[v]) for v in sel.clip_id])
    clips, rejected = segment_videos(sel, scores, corpus, tmp_path / "out", min_short_side=224, out_fps=8, max_side=128,
                                     progress=False, sampling_errors={})
    assert list(clips.columns) == CLIP_COLUMNS
    # 6.04 s at 25 fps: frames at 0..6 s -> one 6 s clip; 11.2 s mpeg: frames 0..11 -> one 11 s clip (two would be 5.5 s)
    assert list(clips.clip_id) == ["us_normal_convex_pat1_132943__00", "us_viral_subpleural_h1n1__00"]
    assert list(clips.duration_s) == [11.0, 6.0] and list(clips.n_frames) == [88, 48]
    for r in clips.itertuples():
        info = probe_video(tmp_path / "out" / "clips" / r.file)
        assert (info.frames, info.fps, max(info.width, info.height)) == (r.n_frames, 8, 128)
        assert len(r.medical_probs) == r.end_s - r.start_s + 1 and r.classifier_backend == "domain-clip-linear"
        assert r.modality == "ultrasound" and r.license and r.doi is not None
    reasons = {r["clip_id"]: (r["reason"], r["detail"]) for r in rejected}
    assert reasons["us_viral_whitelung_h1n1"][0] == "no_valid_segment"          # 4.9 s: shorter than 6 s
    assert "4 s < 6 s" in reasons["us_viral_whitelung_h1n1"][1]
    assert reasons["us_bact_pneumonia_airbronchogram"][0] == "unreadable"      # clear error row, the run went on
    assert "cannot open" in reasons["us_bact_pneumonia_airbronchogram"][1]
    assert list(rejections_frame(rejected).columns) == REJECTION_COLUMNS
    # a video with no frame scores (its sampling failed) gets the sampler's message
    _, rej = segment_videos(sel.iloc[:1], scores.iloc[:0], corpus, tmp_path / "o2", sampling_errors={sel.clip_id.iloc[0]: "decoding failed at frame 7"},
                            progress=False)
    assert (rej[0]["reason"], rej[0]["detail"]) == ("unreadable", "decoding failed at frame 7")
    # the cut clip shows the source: its first frame matches the source's first frame
    src = read_frames(corpus / sel.loc["us_viral_subpleural_h1n1", "file"], n=1, max_side=128)[0][0].astype(int)
    out = read_frames(tmp_path / "out" / "clips" / "us_viral_subpleural_h1n1__00.mp4", n=1)[0][0].astype(int)
    assert np.abs(src[: out.shape[0], : out.shape[1]] - out).mean() < 6


def test_stage_outputs_obey_the_rule(root):
    "When `dvc repro segment` has run: every clip in clips.parquet satisfies MedGen's rule on frames.parquet's scores."
    out = root / "artifacts" / "segment"
    if not (out / "clips.parquet").exists(): pytest.skip("stage segment has not run")
    p = yaml.safe_load((root / "params.yaml").read_text())["segment"]
    clips, frames = pd.read_parquet(out / "clips.parquet"), pd.read_parquet(out / "frames.parquet")
    assert list(clips.columns) == CLIP_COLUMNS and len(clips) > 0
    assert clips.clip_id.is_unique and (clips.duration_s >= p["min_seconds"]).all()
    for r in clips.itertuples():
        f = frames[(frames.video_id == r.video_id) & (frames.t_s >= r.start_s - 1e-6) & (frames.t_s <= r.end_s + 1e-6)]
        assert len(f) == round((r.end_s - r.start_s) * p["fps"]) + 1 >= p["min_seconds"] * p["fps"] + 1
        assert (f.medical_prob >= p["threshold"]).all()
        assert (f.similarity_to_prev.iloc[1:] > p["tau"]).all()
        np.testing.assert_allclose(r.medical_probs, f.medical_prob, atol=1e-6)
        assert (out / "clips" / r.file).exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clips"] == len(clips) and metrics["tau"] == p["tau"]
    rej = pd.read_parquet(out / "rejections.parquet")
    selected = pd.read_parquet(root / p["selected"])
    # every selected video either has clips or a segment rejection row: nothing disappears
    assert set(selected.clip_id) == set(clips.video_id) | set(rej[rej.stage == "segment"].clip_id)
