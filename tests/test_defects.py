"The defect set (medgen.curate.defects): every injected defect on real corpus clips does what its label says, deterministically."
import numpy as np
import pytest

from medgen.curate.defects import (DEFECTS, FILTERS, add_border, add_face, add_noise, blur, border_visible, build_defect_set,
                            darken, expected_decisions, face_crop_box, h264, inject, jitter, jpeg, load_sources,
                            make_jumpy, make_static, source_is_static)
from medgen.curate.privacy import detect_faces
from medgen.curate.quality import blockiness, noise_sigma

US, CAR, ASL = "us_covid_blines_volpicelli_v1", "neg_car_detection", "neg_asl_book"


@pytest.fixture(scope="module")
def src(corpus):
    return load_sources(corpus, [US, CAR, ASL, "bio_mouse_openfield_dlc"])


def test_sources_are_real_clips_at_the_stated_sampling(src):
    us = src[US]
    assert us.shape == (32, 256, 256, 3) and us.dtype == np.uint8  # 4 s at 8 fps, 256 px
    assert src[ASL].shape[0] == 29  # the ASL clip lasts 3.6 s
    assert us.std() > 20


def test_border_bars_are_black_and_exactly_as_wide_as_stated(src):
    us = src[US]; H, W = us.shape[1:3]
    out = add_border(us, ("top", "left"), 0.09, value=12)
    t, l = round(H * 0.09), round(W * 0.09)
    assert (out[:, :t] == 12).all() and (out[:, :, :l] == 12).all()
    assert out[:, t + 2:, l + 2:].std() > 15 and (out[:, -1, -1] != 12).any()  # the picture fills the rest


def test_noise_has_the_stated_sigma_and_blur_removes_it(src):
    car = src[CAR]  # a flat grey road: residual noise is easy to see
    noisy = add_noise(car, 10, np.random.default_rng(0))
    diff = noisy.astype(float) - car
    assert abs(diff[(car > 30) & (car < 225)].std() - 10) < 0.5
    assert noise_sigma(noisy[0, ..., 0]) > 8 > 2 > noise_sigma(blur(noisy, 3)[0, ..., 0])


def test_compression_blocks_and_h264_round_trip(src):
    us = src[US]
    assert blockiness(jpeg(us[:2], 5)[0, ..., 0]) > 2 > 1.1 > blockiness(us[0, ..., 0])
    coded = h264(us, 51, 8.0)
    assert coded.shape == us.shape and np.abs(coded.astype(int) - us).mean() > 3


def test_darken_jitter_static_jumpy(src):
    us, car = src[US], src[CAR]
    assert abs(darken(us, 0.25).mean() / us.mean() - 0.25) < 0.01
    import cv2
    shaken = jitter(us, 6, np.random.default_rng(3))
    shifts = [cv2.phaseCorrelate(us[0, ..., 0].astype(np.float32), f[..., 0].astype(np.float32))[0] for f in shaken[:6]]
    assert any(max(abs(dx), abs(dy)) >= 2 for dx, dy in shifts) and all(max(abs(dx), abs(dy)) <= 7 for dx, dy in shifts)
    still = make_static(us, 0.0, np.random.default_rng(0))
    assert (still == still[0]).all()
    cut = make_jumpy(us, [car], 3, np.random.default_rng(0))
    assert np.array_equal(cut[0], us[0]) and not np.array_equal(cut[1], us[1])
    shuffled = make_jumpy(us, [], 1, np.random.default_rng(0))
    assert sorted(map(bytes, shuffled.reshape(len(us), -1))) == sorted(map(bytes, us.reshape(len(us), -1)))


def test_face_inset_is_a_real_detectable_face(src):
    box = face_crop_box(src[ASL])
    out = add_face(src[US], src[ASL], 0.22, box=box)
    faces = detect_faces(out[0])
    assert faces and faces[0]["c"] > out.shape[2] / 2 and faces[0]["r"] > out.shape[1] / 2  # bottom-right inset
    assert not detect_faces(src[US][0])


def test_visibility_and_static_labels_come_from_the_clean_clip(src):
    assert border_visible(src[US], ("bottom",)) and not border_visible(src[US], ("top",))
    assert source_is_static(src[CAR]) and not source_is_static(src[US]) and not source_is_static(src["bio_mouse_openfield_dlc"])


def test_defect_set_labels_and_determinism(src):
    a = build_defect_set(src, seed=0, face_donor=ASL, natural_faces=(ASL,), progress=False)
    b = build_defect_set(src, seed=0, face_donor=ASL, natural_faces=(ASL,), progress=False)
    n_levels = sum(len(v) for v in DEFECTS.values())
    assert len(a) == 4 + 3 * n_levels  # 4 clean + every level of every defect on the 3 sources without a face
    assert list(a.labels["clip"]) == list(b.labels["clip"]) and all(np.array_equal(a[c], b[c]) for c in a.labels["clip"])
    L = a.labels.set_index("clip")
    assert L.loc[f"{ASL}__clean", "expect_privacy"] and not L.loc[f"{US}__clean", "expect_privacy"]
    assert L.loc[f"{CAR}__clean", "expect_dynamics"] and pd_isna(L.loc[f"{CAR}__noise_1", "expect_dynamics"])
    plain = L.loc[[f"{US}__clean", "bio_mouse_openfield_dlc__clean"]]  # no face, not static: every filter must keep them
    assert not plain[[f"expect_{f}" for f in FILTERS]].any().any() and plain[[f"expect_{f}" for f in FILTERS]].notna().all().all()
    assert L.loc[f"{US}__blur_2", "expect_joint"] and pd_isna(L.loc[f"{US}__noise_2", "expect_joint"])


def pd_isna(x):
    import pandas as pd
    return pd.isna(x)


def test_bad_inputs(src, corpus):
    us = src[US]
    with pytest.raises(KeyError, match="unknown defect"): inject(us, "smudge", 1, 8.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="levels 1..3"): inject(us, "noise", 4, 8.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs a donor"): inject(us, "face", 1, 8.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no face found"): face_crop_box(us)
    with pytest.raises(KeyError, match="unknown defect"): expected_decisions("smudge")
    with pytest.raises(KeyError, match="not in"): load_sources(corpus, ["no_such_clip"])
