"""The defect set on bad input: unknown defects and levels, a face defect without a donor, a donor without a face,
an unknown source video. The known answers (each defect does what its label says, the labels, determinism) are in
nbs/20_defects."""
import numpy as np
import pytest

from medgen.curate.defects import face_crop_box, inject, load_sources


def test_bad_inputs(corpus):
    clip = np.full((4, 32, 32, 3), 128, np.uint8)
    with pytest.raises(KeyError, match="unknown defect"): inject(clip, "smudge", 1, 8.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="levels 1..3"): inject(clip, "noise", 0, 8.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs a donor"): inject(clip, "face", 1, 8.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no face found"): face_crop_box(clip)
    with pytest.raises(KeyError, match="not in"): load_sources(corpus, ["no_such_video"])
