"""Training a denoiser (medgen.generate.train) where it can break: a run killed with SIGKILL and resumed from its last
checkpoint gives the same adapter bytes and losses as an uninterrupted run; a saved LoRA adapter loads the same way
through `load_variant` and through diffusers' `load_lora_weights`; and a LoRA trained on real ultrasound clips lowers the
denoising loss on held-out ultrasound videos (more than one trained on noise latents does). The small known answers
(configs, trainable shares, checkpoint pruning, variants) are in nbs/46_train."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medgen.generate.clips import clip_windows, read_clip, to_model
from medgen.generate.models import build_small, generate_video, load_pipeline
from medgen.generate.train import (TrainConfig, TrainData, heldout_loss, last_checkpoint, load_variant, train_denoiser,
                                   write_variant)
from medgen.generate.vae import encode_latents, latent_normalization, normalize_latents

ADAPTER = "adapter/pytorch_lora_weights.safetensors"
STEPS, KILL_AT = 60, 40  # resumed 20 steps before the end, so the EMA (decay <= 0.9) still carries its pre-kill history

RUN = """import json, sys, time
import torch
torch.set_num_threads(1)
from medgen.generate.models import build_small
from medgen.generate.train import TrainConfig, TrainData, train_denoiser
out, steps, seed, resume, slow_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
g = torch.Generator().manual_seed(0)
data = TrainData(torch.randn((8, 8, 3, 8, 8), generator=g), ["lung ultrasound"] * 4 + ["a street"] * 4)
cfg = TrainConfig(use_lora=True, lora_rank=4, lora_alpha=4, ema_decay=0.9, train_batch_size=2, gradient_accumulation_steps=2,
                  learning_rate=1e-3, checkpointing_steps=5, checkpoints_total_limit=2, validation_steps=0,
                  max_train_steps=steps, max_sequence_length=16, cfg=0.1, shift=3.0, seed=seed)
slow = lambda step, loss: time.sleep(0.5) if slow_after and step > slow_after else None  # a window for the kill; no arithmetic
summary = train_denoiser(build_small("wan", seed=0, heads=2, head_dim=16, layers=1), "wan", data, cfg, out, resume=resume, progress=slow)
print(json.dumps(summary, default=str))
"""


def _start(script: Path, out: Path, steps: int = STEPS, seed: int = 0, resume: bool = False, slow_after: int = 0) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(out), str(steps), str(seed), "1" if resume else "0", str(slow_after)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    script = tmp_path / "run.py"; script.write_text(RUN)
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    # (a) uninterrupted, alongside a run with another seed (one thread each: the arithmetic does not depend on the load)
    runs = [_start(script, a), _start(script, c, seed=1)]
    full, other = [_finish(p) for p in runs]
    assert full["resumed_from"] == 0 and other["resumed_from"] == 0
    # (b) the same run, slowed (sleeps, no arithmetic) after step KILL_AT and killed with SIGKILL once checkpoint-KILL_AT is on disk
    proc, t0 = _start(script, b, slow_after=KILL_AT), time.time()
    while last_checkpoint(b)[0] < KILL_AT:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < 120, f"no checkpoint-{KILL_AT} after 120 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL); proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = last_checkpoint(b)[0]
    assert not (b / "adapter").exists() and not (b / "train_log.csv").exists(), "the run had finished before the kill"
    assert KILL_AT <= killed_at < STEPS
    # (c) resumed to completion
    resumed = _finish(_start(script, b, resume=True))
    assert resumed["resumed_from"] == killed_at >= 10, (resumed, killed_at)
    assert (b / ADAPTER).read_bytes() == (a / ADAPTER).read_bytes()
    log_a, log_b = pd.read_csv(a / "train_log.csv"), pd.read_csv(b / "train_log.csv")
    assert len(log_a) == len(log_b) == STEPS
    assert log_b.step.tolist() == list(range(1, STEPS + 1))
    assert log_b.loss.tolist() == log_a.loss.tolist()
    # not vacuous: another seed gives other bytes and other losses
    assert (c / ADAPTER).read_bytes() != (a / ADAPTER).read_bytes()
    assert pd.read_csv(c / "train_log.csv").loss.tolist() != log_a.loss.tolist()
    print(f"killed after checkpoint-{killed_at}, resumed from {resumed['resumed_from']}")


def _video(pipe) -> np.ndarray:
    return generate_video(pipe, "wan", "lung ultrasound", seed=0, height=16, width=16, num_frames=5, steps=2, max_sequence_length=16)


def test_adapter_loads_with_load_lora_weights(tmp_path):
    base = build_small("wan", seed=0); base.save_pretrained(tmp_path / "base")  # saved before training adds the adapter
    g = torch.Generator().manual_seed(0)
    data = TrainData(torch.randn((6, 8, 3, 4, 4), generator=g), ["lung ultrasound"] * 3 + ["a street"] * 3)
    cfg = TrainConfig(use_lora=True, lora_rank=4, lora_alpha=4, train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-2,
                      max_train_steps=10, checkpointing_steps=0, validation_steps=0, ema_decay=0, max_sequence_length=16, shift=3.0, seed=0)
    train_denoiser(base, "wan", data, cfg, tmp_path / "lora")
    trained = _video(base)
    write_variant(tmp_path / "lora", "wan", "../base", adapter="adapter")
    variant, fam = load_variant(tmp_path / "lora")
    direct = load_pipeline("wan", tmp_path / "base"); direct.load_lora_weights(tmp_path / "lora" / "adapter")
    plain = _video(load_pipeline("wan", tmp_path / "base"))
    assert fam == "wan"
    via_variant, via_diffusers = _video(variant), _video(direct)
    assert (via_variant == via_diffusers).all()
    assert (via_variant == trained).all()  # what was saved is what was trained
    assert (via_variant != plain).any()  # the adapter acts


TRAIN_VIDEOS = ["us_covid_blines_volpicelli_v1", "us_covid_blines_volpicelli_v2", "us_normal_convex_pat1_132943",
                "us_normal_convex_181602", "us_viral_subpleural_h1n1", "us_bact_pneumonia_airbronchogram"]
HELD_OUT_VIDEOS = ["us_covid_blines_volpicelli_v5", "us_normal_convex_pat2_133824"]


def _windows(manifest: pd.DataFrame, corpus: Path, ids: list[str]) -> tuple[torch.Tensor, list[str]]:
    "5-frame windows (stride 2) of the first 4 s of each video at 8 fps, 32 px, with the video's title as caption."
    xs, caps = [], []
    for v in ids:
        x = to_model(clip_windows(read_clip(corpus / manifest.loc[v, "file"], fps=8, side=32, max_seconds=4), 5, 2))
        xs.append(x); caps += [manifest.loc[v, "title"]] * len(x)
    return torch.cat(xs), caps


def test_lora_learns_on_real_clips(tmp_path, corpus, manifest):
    man = manifest.set_index("clip_id")
    assert not set(TRAIN_VIDEOS) & set(HELD_OUT_VIDEOS)
    assert (man.loc[TRAIN_VIDEOS + HELD_OUT_VIDEOS, ["domain", "modality"]].values == ["medical", "ultrasound"]).all()
    train_x, train_caps = _windows(man, corpus, TRAIN_VIDEOS)
    held_x, held_caps = _windows(man, corpus, HELD_OUT_VIDEOS)
    pipe = build_small("wan", seed=0)
    raw_train, raw_held = encode_latents(pipe.vae, train_x), encode_latents(pipe.vae, held_x)
    latent_normalization(pipe.vae, "wan", raw_train)  # statistics of the training latents only
    train_z, held_z = normalize_latents(pipe.vae, "wan", raw_train), normalize_latents(pipe.vae, "wan", raw_held)
    assert train_z.shape == (84, 8, 3, 8, 8) and held_z.shape == (28, 8, 3, 8, 8)
    loss = lambda p: heldout_loss(p, "wan", held_z, held_caps, seed=0, levels=8, shift=3.0, max_sequence_length=16)
    cfg = TrainConfig(use_lora=True, lora_rank=8, lora_alpha=8, learning_rate=2e-3, max_train_steps=100, train_batch_size=4,
                      gradient_accumulation_steps=1, shift=3.0, validation_steps=0, checkpointing_steps=0, ema_decay=0,
                      max_sequence_length=16, seed=0)
    before = loss(pipe)
    train_denoiser(pipe, "wan", TrainData(train_z, train_caps), cfg, tmp_path / "clips")
    after = loss(pipe)
    # control: the same recipe on Gaussian latents of the same shape learns only the generic part of the objective
    control = build_small("wan", seed=0)
    noise = torch.randn(train_z.shape, generator=torch.Generator().manual_seed(1))
    train_denoiser(control, "wan", TrainData(noise, train_caps), cfg, tmp_path / "noise")
    after_noise = loss(control)
    print(f"held-out loss: {before:.4f} -> {after:.4f} (trained on clips), {after_noise:.4f} (trained on noise)")
    assert after < before
    assert after < after_noise
