"""The training data path at scale (issue 22; nbs/48_stores, nbs/46_train): the latents stage's streaming holds one batch
of windows, not the corpus (peak memory flat when the corpus is repeated four times), and training from shards and a
text store through the DataLoader gives the bytes of training from the same latents in memory, resumed or not."""
from pathlib import Path

import pandas as pd
import torch

from conftest import ROOT
from medgen.generate.models import build_small
from medgen.generate.stores import ShardWindows, ShardWriter, TextConditions, write_latent_shards, write_text_conditions
from medgen.generate.train import TrainConfig, TrainData, train_denoiser

CLIPS = ["us_viral_whitelung_h1n1.mp4", "us_normal_convex_182106.mp4", "us_viral_subpleural_h1n1.mp4", "us_bact_pneumonia_airbronchogram.mp4"]


RSS = """import json, sys
import psutil, torch
torch.set_num_threads(1)
from pathlib import Path
from medgen.generate.models import build_small
from medgen.generate.stores import write_latent_shards
out, repeats, batch, files = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
pipe, proc, rss = build_small("wan", seed=0), psutil.Process(), []
clips = {f"{Path(f).name}#{k}": (Path(f), dict(split="train", repeat=k)) for k in range(repeats) for f in files}
index, errors = write_latent_shards(pipe.vae, "wan", clips, out / "shards", fps=8, side=96, num_frames=17, stride=4, max_seconds=5,
                                    batch_size=batch, shard_size=16, progress=lambda done: rss.append((done, proc.memory_info().rss / 2 ** 20)))
print(json.dumps(dict(rss=rss, windows=len(index), errors=len(errors))))
"""


def test_latents_memory_is_flat_when_the_corpus_grows(tmp_path):
    """The same four clips streamed four times over in one fresh single-threaded process: the resident memory after each
    batch. Streaming reaches a steady state (the last pass peaks where the first did); holding the windows would grow by
    one pass's windows each pass."""
    import json, os, subprocess, sys
    batch, repeats = 8, 4
    (tmp_path / "rss.py").write_text(RSS)
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(tmp_path / "rss.py"), str(tmp_path), str(repeats), str(batch),
                        *[str(ROOT / "data" / "videos" / f) for f in CLIPS]], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    per_pass = out["windows"] // repeats
    assert out["errors"] == 0 and per_pass >= 2 * batch  # several batches a pass
    rss = [(done, mb) for done, mb in out["rss"]]
    first = max(mb for done, mb in rss if done <= per_pass)
    last = max(mb for done, mb in rss if done > (repeats - 1) * per_pass)
    batch_mb = batch * 17 * 96 * 96 * 3 * 4 / 2 ** 20  # one batch of float32 windows (what one VAE call holds)
    pass_mb = per_pass * 17 * 96 * 96 * 3 * 4 / 2 ** 20  # one pass's windows, what holding them would add each pass
    print(f"RSS peak: first pass {first:.1f} MB, last pass {last:.1f} MB; one batch {batch_mb:.1f} MB, one pass of windows {pass_mb:.0f} MB")
    assert last - first < batch_mb < pass_mb


def _data(tmp: Path, in_memory: bool) -> TrainData:
    g = torch.Generator().manual_seed(0)
    z = torch.randn((10, 8, 3, 4, 4), generator=g)
    captions = ["lung ultrasound"] * 5 + ["a street"] * 5
    if in_memory: return TrainData(z, captions)
    writer = ShardWriter(tmp / "shards", shard_size=3)
    writer.add(z, [dict(k=k) for k in range(10)])
    index = writer.close()
    write_text_conditions(build_small("wan", seed=0), "wan", captions, tmp / "text" / "c.safetensors", max_sequence_length=16, batch_size=64)
    return TrainData(ShardWindows(tmp / "shards", index), captions, text=TextConditions(tmp / "text" / "c.safetensors"))


CONFIG = dict(train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3, checkpointing_steps=3, checkpoints_total_limit=3,
              validation_steps=0, lora_rank=4, lora_alpha=4, ema_decay=0.9, shift=3.0, max_sequence_length=16, cfg=0.2, seed=0,
              lr_warmup_steps=2, max_train_steps=8)


def test_shards_and_text_store_train_the_same_bytes_as_memory(tmp_path):
    adapter = lambda d: (d / "adapter" / "pytorch_lora_weights.safetensors").read_bytes()
    train_denoiser(build_small("wan", seed=0), "wan", _data(tmp_path, True), TrainConfig(**CONFIG), tmp_path / "memory")
    store = _data(tmp_path, False)
    train_denoiser(build_small("wan", seed=0), "wan", store, TrainConfig(**CONFIG, dataloader_num_workers=2), tmp_path / "shards")
    assert adapter(tmp_path / "memory") == adapter(tmp_path / "shards")
    # resumed from checkpoint-6 of a run stopped there: the rest of the run reads the same windows, gives the same bytes
    short = TrainConfig(**(CONFIG | dict(max_train_steps=7, dataloader_num_workers=2)))  # checkpoints at 3 and 6
    train_denoiser(build_small("wan", seed=0), "wan", store, short, tmp_path / "resumed")
    cfg = (tmp_path / "resumed" / "checkpoints" / "config.json")
    cfg.write_text(cfg.read_text().replace('"max_train_steps": 7', '"max_train_steps": 8'))  # the same run, to be continued
    done = train_denoiser(build_small("wan", seed=0), "wan", store, TrainConfig(**CONFIG, dataloader_num_workers=2), tmp_path / "resumed")
    assert done["resumed_from"] == 6 and adapter(tmp_path / "resumed") == adapter(tmp_path / "shards")
    log = pd.read_csv(tmp_path / "shards" / "train_log.csv")
    assert log.lr.iloc[0] < log.lr.iloc[-1] == CONFIG["learning_rate"]  # the warm-up is honoured
