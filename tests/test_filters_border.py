"""Border filter (MedGen 3.2) against the whole defect set, both parts (slow: 14 sources): bars found, ultrasound fans and dark backgrounds
left alone. The known answers on single clips and the clean corpus are in nbs/21_border."""
import pytest

from medgen.core import load_params
from medgen.curate.filters import evaluate_filter


@pytest.fixture(scope="module")
def cfg(root):
    return load_params(root / "params.yaml", "filters")["border"]


BORDERS = ["border_top", "border_letterbox", "border_pillarbox", "border_frame"]
NEGATIVES = ["blur", "noise", "jpeg", "darken", "subtitle", "watermark", "static", "face"]  # h264/jitter/jumpy left out for speed


@pytest.fixture(scope="module")
def evaluated(defect_set_of, cfg):
    return evaluate_filter("border", defect_set_of(defects=BORDERS + NEGATIVES), cfg["sample"], cfg["settings"], progress=False)


def test_precision_and_recall_on_the_defect_set(evaluated):
    # measured (14 sources, both parts, 434 clips): precision 0.986 (2 false alarms), recall 1.0 on the 108 bars that meet
    # picture, 0.83 on all 168 with the linear-probe export's own bars (added bars on the black sides of fans and microscopy
    # merge with them: 36 % of those found). The stage reports the evaluation part alone (reports/filter_border.ipynb).
    res, m = evaluated
    assert m["precision"] >= 0.97 and m["false_alarm_rate"] <= 0.01
    bordered = res[res.expect_border == True]
    visible, hidden = bordered[bordered.border_visible == True], bordered[bordered.border_visible == False]
    assert len(visible) >= 70 and visible.flagged.mean() >= 0.95
    assert m["recall"] >= 0.6 and hidden.flagged.mean() <= 0.5  # the honest limit: hidden bars are mostly missed
    for d in BORDERS:
        assert visible[visible.defect == d].flagged.all(), d
