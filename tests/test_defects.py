"""The defect set on bad input: unknown defects and levels, a face defect without a donor, a donor image that does not
exist or whose face box lies outside it, a face too large for the frame, an unknown source video. The known answers (each defect does what its label says, the labels, determinism) are in
nbs/20_defects."""
import numpy as np
import pytest

from medgen.curate.defects import add_face, inject, load_face_donors, load_sources


def test_bad_inputs(corpus):
    clip = np.full((4, 32, 32, 3), 128, np.uint8)
    with pytest.raises(KeyError, match="unknown defect"): inject(clip, "smudge", 1, 8.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="levels 1..3"): inject(clip, "noise", 0, 8.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs a donor"): inject(clip, "face", 1, 8.0, np.random.default_rng(0))
    with pytest.raises(KeyError, match="video id not in"): load_face_donors([dict(image="corpus:no_such_video", face_box=[0, 1, 0, 1])], corpus)
    with pytest.raises(ValueError, match="not inside"): load_face_donors([dict(image="skimage:lfw:0", face_box=[0, 26, 0, 25])])
    donor = load_face_donors([dict(image="skimage:astronaut", face_box=[68, 178, 172, 278])])[0]
    with pytest.raises(ValueError, match="larger than"): add_face(clip, donor, 0.9, np.random.default_rng(0))
    with pytest.raises(KeyError, match="not in"): load_sources(corpus, ["no_such_video"])
