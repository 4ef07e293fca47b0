"Border filter (MedGen 3.2) against the defect set and the clean corpus: bars found, ultrasound fans and dark backgrounds left alone."
import numpy as np
import pandas as pd
import pytest

from medgen.core import load_params
from medgen.curate.filters import evaluate_filter, score_clip, score_frames
from medgen.curate.border import frame_borders
from medgen.video import read_frames


@pytest.fixture(scope="module")
def cfg(root):
    return load_params(root / "params.yaml", "filters")["border"]


BORDERS = ["border_top", "border_letterbox", "border_pillarbox", "border_frame"]
NEGATIVES = ["blur", "noise", "jpeg", "darken", "subtitle", "watermark", "static", "face"]  # h264/jitter/jumpy left out for speed


@pytest.fixture(scope="module")
def evaluated(defect_set_of, cfg):
    return evaluate_filter("border", defect_set_of(defects=BORDERS + NEGATIVES), cfg["sample"], cfg["settings"], progress=False)


def test_precision_and_recall_on_the_defect_set(evaluated):
    # measured (13 sources, 365 clips): precision 0.989 (1 false alarm: the open-field arena darkened to 12 %), recall 1.0 on
    # the 78 bars that meet picture, 0.67 on all 132 (bars added to the black sides of fans and microscopy merge with it)
    res, m = evaluated
    assert m["precision"] >= 0.97 and m["false_alarm_rate"] <= 0.01
    bordered = res[res.expect_border == True]
    visible, hidden = bordered[bordered.border_visible == True], bordered[bordered.border_visible == False]
    assert len(visible) >= 70 and visible.flagged.mean() >= 0.95
    assert m["recall"] >= 0.6 and hidden.flagged.mean() <= 0.5  # the honest limit: hidden bars are mostly missed
    for d in BORDERS:
        assert visible[visible.defect == d].flagged.all(), d


def test_clean_corpus_false_alarms(corpus, manifest, cfg):
    # every real clip: only the linear-probe clip with its own black bars (29 px right, 3 px left) is removed
    removed = {cid for cid, f in zip(manifest.clip_id, manifest.file)
               if score_clip("border", corpus / f, cfg["sample"], cfg["settings"])["decision"] == "remove"}
    assert removed == {"us_normal_linear_181206"}


def test_sides_and_widths_on_a_known_bar(corpus):
    from medgen.curate.defects import add_border
    us, _ = read_frames(corpus / "videos" / "us_covid_lightbeam_dialysis_mov6.mov", n=8, max_side=256)
    r = score_frames("border", add_border(us, ("left",), 0.10, value=0))
    assert r["decision"] == "remove" and r["border_sides"] == "left" and "26 px" in r["reason"]
    fb = frame_borders(add_border(us[:1], ("bottom",), 0.10, value=16)[0])
    assert fb["bottom"]["border"] and abs(fb["bottom"]["width"] - 26) <= 1 and not fb["top"]["border"]


def test_persistence_a_bar_on_a_few_frames_is_not_a_border(corpus):
    from medgen.curate.defects import add_border
    us, _ = read_frames(corpus / "videos" / "us_covid_lightbeam_dialysis_mov6.mov", n=8, max_side=256)
    mixed = us.copy(); mixed[:3] = add_border(us[:3], ("top", "bottom"), 0.1)
    r = score_frames("border", mixed, {"persist_frac": 0.6})
    assert r["decision"] == "keep" and 0.3 < r["score"] < 0.6


def test_bad_input():
    with pytest.raises(ValueError, match="need RGB frames"): score_frames("border", np.zeros((8, 8, 3), np.uint8))
