"""The curation engine measured against the decode floor (issue 8): one run, written to benchmarks/RESULTS.md.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_curation.py`). It takes about 10 minutes on the 2-core machine:

1. a cold `dvc repro dataset` of the curation stages in a fresh copy of the repository (no outputs, empty DVC cache, the
   environment present), each stage's wall time read from its metrics.json, then a no-op `dvc repro`;
2. the decode floor: every frame of every clip the filter chain touches (the corpus clips that reach it and the
   defect set), decoded once, sequentially, nothing else;
3. each filter stage and the chain in clips per second and in seconds of video per wall-clock second, and the ratio
   chain / decode floor;
4. the Ray executor against the local one on this machine (a Ray of 2 workers) on one filter's defect-set
   evaluation, and Ray's per-task overhead on a trivial task;
5. a projection of the paper's 10,269 hours on 1, 8 and 64 workers from the measured per-clip rates.
"""
import json, os, platform, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "artifacts", "reports", "data", "data.dvc", "scratch", "dvc_plots", ".pytest_cache", "__pycache__", "cache", "tmp"}
FILTERS = ["border", "ocr", "aesthetic", "technical", "joint", "dynamics", "privacy"]
CURATION = ["ingest", "select", "domain_clip", "segment", "caption", "defects", *(f"filter_{f}" for f in FILTERS), "dataset"]
PAPER_HOURS = 10_269  # MedGen §3: hours of video curated for MedVideoCap-55K


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) / 2**20 for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), float("nan"))
    import av, cv2, ray, torch
    return dict(cpu=cpu, cores=os.cpu_count(), memory_gib=round(mem, 1), os=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, opencv=cv2.__version__, pyav=av.__version__, ray=ray.__version__)


def run(cmd, cwd) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def cold_repro(work: Path) -> tuple[Path, dict]:
    "A fresh copy (no outputs, no DVC cache, the committed params), `dvc repro dataset`, then a no-op repro."
    repo = work / "medgen"
    shutil.copytree(ROOT, repo, ignore=lambda d, names: [n for n in names if n in SKIP and not (Path(d) == ROOT / "nbs")])
    shutil.copytree(ROOT / "data", repo / "data")
    run(["git", "init", "-q"], repo)
    print("cold dvc repro dataset ...", flush=True)
    cold = run(["dvc", "repro", "dataset"], repo)
    noop = run(["dvc", "repro"], repo)
    stages = {}
    for s in CURATION:
        m = json.loads((repo / "artifacts" / s / "metrics.json").read_text())
        stages[s] = m
    return repo, dict(cold_s=round(cold, 1), noop_s=round(noop, 2), stage_s={s: m.get("stage_seconds") for s, m in stages.items()}, metrics=stages)


def decode_floor(repo: Path) -> dict:
    "Decode every frame of every clip the filter chain touches, once, sequentially (PyAV, RGB, full size)."
    from medgen.curate.filters import clip_info
    from medgen.video import read_frames
    clips = pd.read_parquet(repo / "artifacts/caption/captions.parquet")
    labels = pd.read_parquet(repo / "artifacts/defects/set/labels.parquet")
    todo = [(repo / "artifacts/segment/clips" / r["file"], clip_info(r)) for r in clips.to_dict("records")]
    todo += [(repo / "artifacts/defects/set/clips" / r["file"], clip_info(r)) for r in labels.to_dict("records")]
    paths = [p for p, _ in todo]
    t0, frames = time.perf_counter(), 0
    for p, info in todo: frames += len(read_frames(p, info=info)[0])  # info from the tables: one decode, no probe
    seconds = time.perf_counter() - t0
    video_s = float(clips.duration_s.sum() + (labels.n_frames / labels.fps).sum())
    return dict(clips=len(paths), corpus_clips=len(clips), defect_clips=len(labels), frames=frames, video_s=round(video_s, 1),
                seconds=round(seconds, 2), frames_per_s=round(frames / seconds, 1), video_s_per_s=round(video_s / seconds, 1))


def filter_rates(repo: Path, cold: dict) -> pd.DataFrame:
    "Per filter stage: clips scored (corpus clips in + defect clips judged), their seconds of video, wall time, rates."
    labels = pd.read_parquet(repo / "artifacts/defects/set/labels.parquet")
    clip_s = float((labels.n_frames / labels.fps).mean())
    rows, prev = [], repo / "artifacts/caption/captions.parquet"
    for f in FILTERS:
        m = cold["metrics"][f"filter_{f}"]
        corpus = pd.read_parquet(prev); prev = repo / f"artifacts/filter_{f}/clips.parquet"
        judged = len(pd.read_parquet(repo / f"artifacts/filter_{f}/defect_eval.parquet"))
        video_s = float(corpus.duration_s.sum()) + judged * clip_s
        wall = float(m["stage_seconds"])
        rows.append(dict(filter=f, corpus_clips=len(corpus), defect_clips=judged, video_s=round(video_s, 1), stage_s=round(wall, 1),
                         score_s=m["timing"]["score_s"], defect_set_s=m["timing"]["defect_set_s"],
                         clips_per_s=round((len(corpus) + judged) / wall, 2), video_s_per_s=round(video_s / wall, 2),
                         precision=m["defect_set"].get("precision"), recall=m["defect_set"].get("recall")))
    return pd.DataFrame(rows)


def ray_vs_local(repo: Path, filter_name: str = "technical") -> dict:
    "One filter's defect-set evaluation, local loop vs a Ray of 2 workers on this machine; Ray's per-task overhead."
    from medgen.core import load_params
    from medgen.curate.defects import load_defect_set
    from medgen.curate.filters import evaluate_filter
    from medgen.executor import Executor, ray_connect
    cfg = load_params(repo / "params.yaml", "filters")[filter_name]
    ds = load_defect_set(repo / "artifacts/defects/set")
    out = {}
    t0 = time.perf_counter(); local, _ = evaluate_filter(filter_name, ds, cfg["sample"], cfg["settings"], progress=False); out["local_s"] = time.perf_counter() - t0
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    t0 = time.perf_counter(); ray = ray_connect(num_cpus=2); out["ray_start_s"] = time.perf_counter() - t0
    ex = Executor("ray")
    t0 = time.perf_counter(); remote, _ = evaluate_filter(filter_name, ds, cfg["sample"], cfg["settings"], progress=False, executor=ex); out["ray_s"] = time.perf_counter() - t0
    out["identical"] = bool(local.equals(remote))
    out["workers"] = int(ex.tasks.pid.nunique())
    n = 2000
    t0 = time.perf_counter(); Executor().map(abs, range(n), progress=False); local_trivial = time.perf_counter() - t0
    t0 = time.perf_counter(); ex.map(abs, range(n), progress=False); ray_trivial = time.perf_counter() - t0
    ray.shutdown()
    out.update(filter=filter_name, clips=len(ds.labels), speedup=out["local_s"] / out["ray_s"],
               overhead_ms_per_task=1000 * (ray_trivial - local_trivial) / n, trivial_tasks=n)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def projection(repo: Path, cold: dict, rates: pd.DataFrame, ray: dict) -> dict:
    "Wall-clock for the paper's hours from the corpus-side per-video-second cost (the defect set is a fixed cost)."
    clips = pd.read_parquet(repo / "artifacts/segment/clips.parquet")
    videos = pd.read_parquet(repo / "artifacts/ingest/videos.parquet")
    per_source_s = (cold["stage_s"]["segment"] / float(videos.duration_s.sum()))  # segment reads every selected video at 1 fps
    caption_s = cold["metrics"]["caption"]["stage_seconds"]
    per_clip_s = (caption_s + float(rates.score_s.sum())) / float(clips.duration_s.sum())
    per_video_s = per_source_s + per_clip_s  # upper bound: every second of source video is assumed to become clip
    efficiency = min(1.0, ray["speedup"] / 2)
    hours = {w: PAPER_HOURS * per_video_s / (w * (efficiency if w > 1 else 1.0)) for w in (1, 8, 64)}
    return dict(seconds_per_video_second=round(per_video_s, 4), segment_part=round(per_source_s, 4), clip_part=round(per_clip_s, 4),
                parallel_efficiency=round(efficiency, 3), hours={w: round(h, 1) for w, h in hours.items()},
                days={w: round(h / 24, 2) for w, h in hours.items()})


def write_results(res: dict) -> str:
    m, cold, floor, rates, ray, proj = res["machine"], res["cold"], res["decode_floor"], pd.DataFrame(res["filters"]), res["ray"], res["projection"]
    chain_s = float(rates.stage_s.sum())
    ratio = chain_s / floor["seconds"]
    curation_s = sum(v for v in cold["stage_s"].values() if v)
    stage_rows = "\n".join(f"| {s} | {v:.1f} |" for s, v in cold["stage_s"].items())
    return f"""# Curation engine: measured

Written by `benchmarks/bench_curation.py` (`make bench`) on {res['date']}, in one run. Rerun it to replace this file.

**Machine.** {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}; Python {m['python']}, torch {m['torch']},
OpenCV {m['opencv']}, PyAV {m['pyav']}, Ray {m['ray']}. Wall-clock times on a shared virtual machine vary by 10-30 % between runs.

## Targets

| measure | target | measured | met |
|---|---|---|---|
| cold `dvc repro` of the curation stages (fresh copy, environment present) | <= 240 s | {cold['cold_s']:.0f} s | {'yes' if cold['cold_s'] <= 240 else 'no'} |
| no-op `dvc repro` | <= 10 s | {cold['noop_s']:.1f} s | {'yes' if cold['noop_s'] <= 10 else 'no'} |
| filter chain / decode floor | <= 3 | {ratio:.1f} | {'yes' if ratio <= 3 else 'no'} |

## Cold run, stage by stage (s, from each stage's metrics.json)

| stage | seconds |
|---|---|
{stage_rows}
| **sum of stages** | **{curation_s:.0f}** |

## The decode floor

Every frame of every clip the filter chain touches, decoded once, sequentially, full size, and nothing else:
{floor['clips']} clips ({floor['corpus_clips']} corpus clips that reach the chain, {floor['defect_clips']} defect-set clips),
{floor['frames']:,} frames, {floor['video_s']:.0f} s of video in **{floor['seconds']:.1f} s**
({floor['frames_per_s']:.0f} frames/s, {floor['video_s_per_s']:.0f} s of video per second).

## Each filter stage and the chain

A filter stage scores the corpus clips that reach it and the defect-set clips it is judged on (`eval_defects`);
its wall time includes papermill, the report and the figures.

{rates[['filter', 'corpus_clips', 'defect_clips', 'video_s', 'stage_s', 'score_s', 'defect_set_s', 'clips_per_s', 'video_s_per_s', 'precision', 'recall']].to_markdown(index=False)}

Chain (the seven filter stages): **{chain_s:.0f} s**, {rates.corpus_clips.iloc[0]} corpus clips and
{int(rates.defect_clips.sum())} defect-clip scorings; chain / decode floor = **{ratio:.1f}**.

## Ray against the local executor (this machine)

The `{ray['filter']}` filter's evaluation on the {ray['clips']} defect-set clips: local loop {ray['local_s']:.1f} s, a Ray of
{ray['workers']} workers {ray['ray_s']:.1f} s (speed-up {ray['speedup']:.2f} on 2 cores; Ray itself started in {ray['ray_start_s']:.1f} s);
the tables are identical: {ray['identical']}. Per-task overhead on {ray['trivial_tasks']} trivial tasks:
{ray['overhead_ms_per_task']:.2f} ms per task.

## Projection: the paper's {PAPER_HOURS:,} hours

From this run: segmentation costs {proj['segment_part']:.4f} s per second of source video and captioning plus the seven
filters {proj['clip_part']:.4f} s per second of clip, so {proj['seconds_per_video_second']:.4f} s per second of video (an upper
bound: every source second is counted as if it became a clip). Assumptions: the embedded-default scorers (paper-scale
models on GPUs cost differently), workers like this machine's cores, the parallel efficiency measured above
({proj['parallel_efficiency']:.2f}) holding at every size, storage and network not limiting, the defect-set evaluation a
fixed cost left out.

| workers | hours | days |
|---|---|---|
""" + "\n".join(f"| {w} | {h:,.0f} | {proj['days'][w]:,.1f} |" for w, h in proj["hours"].items()) + "\n"


BEFORE_AFTER = """
## Before and after (issue 8)

Measured by hand on this machine before the change (2026-12-02, `make repro` with the environment present) and by this
run after it:

| | before | after | what changed |
|---|---|---|---|
| curation, cold | 1,217 s | {cold:.0f} s | the defect set built once (`defects` stage, lossless clips) instead of in every filter |
| the seven filter stages | 1,033 s | {chain:.0f} s | |
| subtitle OCR stage | 407 s (369 s defect set) | {ocr:.0f} s ({ocr_d:.0f} s defect set) | CRAFT word boxes on frames shrunk to 192 px, no recogniser (`count: boxes`); torch's default threads |
| privacy stage | 399 s (338 s defect set) | {priv:.0f} s ({priv_d:.0f} s defect set) | the same text detector; faces unchanged |
| OCR precision / recall (211 defect clips) | 1.00 / 0.67 | 1.00 / 0.82 | boxes count the words the recogniser under-reads |

**Profile** (py-spy, the technical filter on its defect-set clips): 48 % reading the clip (40 % decoding the lossless
RGB H.264 defect clips: the decode floor itself), 23 % the per-frame measures, 14 % jitter's phase correlation. In the
OCR and privacy stages the CRAFT detector is about 90 % of the time (about 0.1 s a 192-px frame with two threads;
recognition added 0 ms on text-free frames and about 120 ms on subtitle frames, batching five frames was no faster).
Threaded decoding (`thread_type=AUTO`) gained 13 % on the defect clips, within run-to-run noise: left out.

**Why the targets are missed.** The chain's cost is the honest evaluation, not the corpus: of the filter stages' time,
the 18 corpus clips take under a minute, the defect set (2,907 clip scorings, about 1,900 of them text detections
on 4-5 frames each) the rest. Text detection with CRAFT on a CPU costs about 40 decodes of the same frame, so no
chain that runs it on every evaluated frame comes near 3x the decode floor; the cold-repro target of 240 s is missed
by the same cost plus the fixed stages (domain CLIP training 54 s, the defect set 45 s, papermill about 5 s a stage).
What would meet them: a GPU for the detector (the paper profile), or evaluating OCR and privacy on fewer defect clips
(which would weaken the numbers the filters are judged by: not done).
"""


def render(res: dict) -> str:
    f = {r["filter"]: r for r in res["filters"]}
    return write_results(res) + BEFORE_AFTER.format(
        cold=res["cold"]["cold_s"], chain=sum(r["stage_s"] for r in res["filters"]), ocr=f["ocr"]["stage_s"],
        ocr_d=f["ocr"]["defect_set_s"], priv=f["privacy"]["stage_s"], priv_d=f["privacy"]["defect_set_s"])


def main():
    if "--render" in sys.argv:  # rewrite RESULTS.md from the last run's results/curation.json
        res = json.loads((ROOT / "benchmarks/results/curation.json").read_text())
        res["projection"]["hours"] = {int(k): v for k, v in res["projection"]["hours"].items()}
        res["projection"]["days"] = {int(k): v for k, v in res["projection"]["days"].items()}
        (ROOT / "benchmarks/RESULTS.md").write_text(render(res)); return
    res = dict(date=time.strftime("%Y-%m-%d"), machine=machine())
    with tempfile.TemporaryDirectory() as d:
        repo, res["cold"] = cold_repro(Path(d))
        print("decode floor ...", flush=True); res["decode_floor"] = decode_floor(repo)
        rates = filter_rates(repo, res["cold"]); res["filters"] = rates.to_dict("records")
        print("ray vs local ...", flush=True); res["ray"] = ray_vs_local(repo)
        res["projection"] = projection(repo, res["cold"], rates, res["ray"])
    res["cold"].pop("metrics")
    out = ROOT / "benchmarks"
    (out / "results").mkdir(exist_ok=True)
    (out / "results" / "curation.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "RESULTS.md").write_text(render(res))
    print((out / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
