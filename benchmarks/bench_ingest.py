"""Throughput of the ingest stage's per-file work on this machine: SHA-256, full decode (probe), 1-fps frame sampling.

Run: .venv/bin/python benchmarks/bench_ingest.py [corpus_dir]  -> benchmarks/results/ingest.json
"""
import json, platform, sys, time
from pathlib import Path

import pandas as pd

from medgen.core import sha256_file
from medgen.video import probe_video, read_frames

corpus = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
man = pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False)
rows = []
for f in man.file:
    p = corpus / f
    t0 = time.perf_counter(); sha256_file(p)
    t1 = time.perf_counter(); info = probe_video(p)
    t2 = time.perf_counter(); read_frames(p, fps=1.0, max_side=224, info=info)
    t3 = time.perf_counter()
    rows.append(dict(file=f, mb=info.size_bytes / 1e6, frames=info.frames, sha_s=t1 - t0, probe_s=t2 - t1, sample_1fps_s=t3 - t2))
df = pd.DataFrame(rows)
out = dict(machine=f"{platform.machine()} {platform.processor() or ''}".strip(), files=len(df), megabytes=round(df.mb.sum(), 2),
           frames=int(df.frames.sum()),
           sha256_mb_per_s=round(df.mb.sum() / df.sha_s.sum(), 1),
           probe_frames_per_s=round(df.frames.sum() / df.probe_s.sum(), 1),
           probe_total_s=round(df.probe_s.sum(), 2), sample_1fps_total_s=round(df.sample_1fps_s.sum(), 2),
           slowest_probe=df.sort_values("probe_s").iloc[-1][["file", "probe_s"]].to_dict())
Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
Path("benchmarks/results/ingest.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
print(json.dumps(out, indent=2, default=str))
