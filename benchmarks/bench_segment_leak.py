"""How optimistic is the segment stage's cross-validation? (issue 9: leak-free segment evaluation)

The segment stage cross-validates its medical-frame head by video, but the domain CLIP that embeds the frames was
trained on every video, held-out ones included. This benchmark measures the leak once, on the same k folds
(StratifiedGroupKFold by video):

* leaky: the committed domain CLIP (`artifacts/domain_clip/model`) embeds every frame; a head per fold;
* leak-free: per fold, a domain CLIP is trained from scratch on the training videos only (the `domain_clip` stage's
  knobs), embeds every frame, and the fold's head is fitted on the training videos' frames only.

Both give out-of-fold P(medical) per 1-fps frame; the script writes their metrics to
`benchmarks/results/segment_leak.json`. Run after `dvc repro segment` (it reads the ingest table and the committed CLIP):

    .venv/bin/python benchmarks/bench_segment_leak.py [--folds 5]
"""
import argparse, json, time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main(folds: int) -> dict:
    from medgen.core import load_params
    from medgen.curate.domain_clip import (create_domain_clip, embed_videos, load_domain_clip, sample_frames, train_domain_clip,
                                           video_text)
    from medgen.curate.segment import classification_metrics, fit_head, grouped_folds
    p, seed = load_params(ROOT / "params.yaml"), load_params(ROOT / "params.yaml", "common")["seed"]
    dc, seg = p["domain_clip"], p["segment"]
    videos = pd.read_parquet(ROOT / "artifacts/ingest/videos.parquet")
    sampled, _ = sample_frames(videos, ROOT / "data", fps=seg["fps"], max_side=seg["frame_side"], stage="segment", progress=False)
    meta = videos.set_index("video_id")
    texts = {v: video_text(meta.loc[v]) for v in sorted(sampled)}

    def embed(model, preprocess):
        table, emb = embed_videos(model, preprocess, sampled)
        return table, emb

    model, preprocess, _ = load_domain_clip(ROOT / "artifacts/domain_clip/model")
    table, leaky_emb = embed(model, preprocess)
    y = (table.video_id.map(meta.domain) == "medical").to_numpy(int)
    groups = table.video_id.to_numpy()
    split = grouped_folds(groups, y, folds, seed)
    leaky, free = np.full(len(y), np.nan), np.full(len(y), np.nan)
    seconds = []
    for k, (tr, te) in enumerate(split):
        head = fit_head(leaky_emb[tr], y[tr], groups[tr], seg["C"], seed)
        leaky[te] = head.predict_proba(leaky_emb[te])[:, 1]
        train_videos = sorted(set(groups[tr]))
        t0 = time.perf_counter()
        model, preprocess, tokenizer, _ = create_domain_clip(ROOT / "resources/domain_clip_config.json", seed=seed)
        train_domain_clip(model, tokenizer, {v: sampled[v][0] for v in train_videos}, {v: texts[v] for v in train_videos},
                          epochs=dc["epochs"], lr=dc["lr"], weight_decay=dc["weight_decay"], warmup_steps=dc["warmup_steps"],
                          train_side=dc["train_side"], min_crop=dc["min_crop"], jitter=dc["jitter"], seed=seed,
                          threads=dc["threads"], progress=False)
        seconds.append(time.perf_counter() - t0)
        table_k, emb_k = embed(model, preprocess)
        assert (table_k.video_id.to_numpy() == groups).all()
        head = fit_head(emb_k[tr], y[tr], groups[tr], seg["C"], seed)
        free[te] = head.predict_proba(emb_k[te])[:, 1]
        print(f"fold {k + 1}/{len(split)}: {len(set(groups[te]))} held-out videos, CLIP trained on {len(train_videos)} in {seconds[-1]:.0f} s")
    th = seg["threshold"]
    per_video = lambda probs: pd.DataFrame(dict(v=groups, y=y, p=probs)).groupby("v").agg(y=("y", "first"), p=("p", "mean"))
    out = dict(folds=len(split), frames=int(len(y)), videos=int(len(set(groups))), threshold=th,
               leaky=dict(frame=classification_metrics(y, leaky, th), video=classification_metrics(*per_video(leaky).T.values, th)),
               leak_free=dict(frame=classification_metrics(y, free, th), video=classification_metrics(*per_video(free).T.values, th)),
               clip_train_seconds_per_fold=round(float(np.mean(seconds)), 1))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    res = main(ap.parse_args().folds)
    path = ROOT / "benchmarks/results/segment_leak.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(json.dumps(res, indent=2))
