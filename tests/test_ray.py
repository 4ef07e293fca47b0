"""The curation engine on a real two-node Ray cluster, on this machine and on loopback only (nbs/04_executor).

A head and a second node are started as their own processes (../shared/NOTES.md has the recipe that keeps Ray on
127.0.0.1); the segment step and a filter stage's two maps (the corpus clips and the defect set) run through it, and
every table and clip file must be byte-identical to the local run. The cluster is stopped whatever happens."""
import ipaddress, os, socket, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from medgen.core import sha256_file, write_table

pytestmark = pytest.mark.integration
LOOPBACK = "127.0.0.1"
VIDEOS = ["us_normal_linear_181206", "us_covid_blines_volpicelli_v1", "us_viral_whitelung_h1n1", "neg_classroom"]
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# the second node: Ray would replace 127.0.0.1 by the host's address; resolve it to itself
SECOND_NODE = ("import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda a: a; "
               "from ray.scripts.scripts import main; sys.argv = ['ray'] + sys.argv[1:]; main()")


def _is_loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return (a.ipv4_mapped or a).is_loopback if a.version == 6 else a.is_loopback  # ::ffff:127.0.0.1 is loopback too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0)); return s.getsockname()[1]


def _ray(args, env, timeout=120):
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    "A head and a second node (1 CPU each), both on 127.0.0.1; yields the address, stops everything afterwards."
    bindir, port = Path(sys.executable).parent, _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}  # one token shared by both nodes and the driver
    env = {**os.environ, **RAY_ENV, **auth, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    temp = tmp_path_factory.mktemp("ray")
    address = f"{LOOPBACK}:{port}"
    old = {k: os.environ.get(k) for k in {**RAY_ENV, **auth}}
    os.environ.update({**RAY_ENV, **auth})  # the driver (this process) too
    try:
        _ray([str(bindir / "ray"), "start", "--head", f"--node-ip-address={LOOPBACK}", f"--port={port}", "--num-cpus=1",
              "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"], env)
        second = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}  # with it, a second node refuses to start
        _ray([sys.executable, "-c", SECOND_NODE, "start", f"--address={address}", f"--node-ip-address={LOOPBACK}", "--num-cpus=1"], second)
        import ray
        ray.init(address=address, log_to_driver=False)
        deadline = time.time() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline: time.sleep(0.5)
        yield address
    finally:
        import ray
        ray.shutdown()
        subprocess.run([str(bindir / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def test_cluster_stays_on_loopback(cluster):
    import psutil, ray
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2, nodes
    addresses = {n["NodeManagerAddress"] for n in nodes}
    assert addresses == {LOOPBACK}, f"the node table names other addresses: {addresses}"
    listening = set()
    for p in psutil.process_iter(["cmdline"]):
        if "ray" not in " ".join(p.info["cmdline"] or []): continue
        try: listening |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.AccessDenied, psutil.NoSuchProcess): pass
    assert listening and all(_is_loopback(ip) for ip in listening), f"Ray listens beyond loopback: {listening}"


def _both_nodes(executor):
    counts = executor.tasks.node.value_counts()
    assert len(counts) == 2, f"one node did all the work: {counts.to_dict()}"
    return counts


@pytest.fixture(scope="module")
def selected(corpus, manifest):
    from medgen.curate.ingest import read_manifest
    from medgen.video import probe_video
    man = read_manifest(corpus / "manifest.csv").set_index("video_id")
    rows = []
    for vid in VIDEOS:
        info = probe_video(corpus / man.loc[vid, "file"])
        rows.append(dict(video_id=vid, file=man.loc[vid, "file"], title=man.loc[vid, "title"], **info.as_dict()))
    return pd.DataFrame(rows)


def _segment(selected, corpus, out, executor):
    "The segment step on real videos; the frame scores say 'medical and similar' for the first 7-13 s (a known plan)."
    from medgen.curate.segment import segment_videos
    frames = pd.DataFrame([dict(video_id=v, t_s=float(t), medical_prob=0.9 if t < 7 + 2 * k else 0.1, similarity_to_prev=0.95)
                           for k, v in enumerate(VIDEOS) for t in range(int(selected.set_index("video_id").loc[v, "duration_s"]))])
    clips, bad = segment_videos(selected, frames, corpus, out, max_seconds=10, progress=False, executor=executor)
    write_table(clips, out / "clips.parquet"); write_table(pd.DataFrame(bad), out / "rejections.parquet")
    return clips


def test_segment_step_on_two_nodes(cluster, selected, corpus, tmp_path):
    from medgen.executor import Executor
    local = _segment(selected, corpus, tmp_path / "local", Executor())
    ray_ex = Executor("ray", cluster)
    remote = _segment(selected, corpus, tmp_path / "ray", ray_ex)
    _both_nodes(ray_ex)
    assert sorted(local.video_id) == ["us_covid_blines_volpicelli_v1", "us_normal_linear_181206"]  # the two long videos give clips,
    assert len(pd.read_parquet(tmp_path / "ray" / "rejections.parquet")) == 2  # the two short ones rejection rows
    for name in ["clips.parquet", "rejections.parquet", *(f"clips/{f}" for f in local.file)]:
        assert sha256_file(tmp_path / "local" / name) == sha256_file(tmp_path / "ray" / name), name


def test_filter_stage_on_two_nodes(cluster, defect_set_of, tmp_path):
    "A filter's two maps (corpus clips, defect set), as the filter stage runs them: same tables from both executors."
    from medgen.curate.defects import write_defect_set
    from medgen.curate.filters import evaluate_filter, score_clips
    from medgen.executor import Executor
    from medgen.core import load_params
    cfg = load_params(ROOT / "params.yaml", "filters")["dynamics"]
    ds = write_defect_set(defect_set_of(sources=["us_covid_blines_volpicelli_v1", "neg_car_detection"], defects=["static", "jumpy", "noise"]),
                          tmp_path / "set", progress=False)
    clips = ds.labels.rename(columns={"clip": "clip_id", "source": "video_id"})  # the defect clips as a clips table
    for kind, ex in [("local", Executor()), ("ray", Executor("ray", cluster))]:
        scores, bad = score_clips("dynamics", clips, ds.clips_dir, cfg["sample"], cfg["settings"], progress=False, executor=ex)
        write_table(scores, tmp_path / f"{kind}_scores.parquet"); write_table(pd.DataFrame(bad), tmp_path / f"{kind}_rejections.parquet")
        res, metrics = evaluate_filter("dynamics", ds, cfg["sample"], cfg["settings"], progress=False, executor=ex)
        write_table(res, tmp_path / f"{kind}_eval.parquet")
        if kind == "ray": _both_nodes(ex)
    assert len(bad) > 0 and metrics["recall"] > 0.5  # static and jumpy copies are removed: the filter did its work
    for name in ["scores", "rejections", "eval"]:
        assert sha256_file(tmp_path / f"local_{name}.parquet") == sha256_file(tmp_path / f"ray_{name}.parquet"), name


def test_task_error_reaches_the_driver(cluster):
    from medgen.executor import Executor
    with pytest.raises(ValueError, match="invalid literal"):
        Executor("ray", cluster).map(int, ["1", "x"], progress=False)


def test_caption_step_on_two_nodes(cluster, selected, corpus, tmp_path):
    "The caption stage's per-clip step (measures, grounded caption, the MiniLM refiner shipped to the workers): same table."
    from medgen.core import load_params
    from medgen.curate.caption import caption_clips
    from medgen.curate.refine import VisibilityClassifier, load_refine_examples, load_sentence_encoder, refine_caption
    from medgen.executor import Executor
    cut = _segment(selected, corpus, tmp_path / "cut", Executor())
    clips = pd.concat([cut.assign(clip_id=cut.clip_id + f"_copy{k}") for k in range(3)])  # six tasks: work for both nodes
    p = load_params(ROOT / "params.yaml", "caption")
    examples = load_refine_examples()
    visibility = VisibilityClassifier(load_sentence_encoder("cpu"), C=p["refine"]["C"], seed=0).fit(examples.sentence, examples.visible)
    refine = lambda cap: refine_caption(cap["detailed"], cap["provenance"], "classifier", visibility, p["refine"]["threshold"],
                                        p["refine"]["scope"], None, examples, None)
    kw = dict(n_frames=p["n_frames"], frame_side=p["frame_side"], motion_fps=p["motion_fps"], motion_side=p["motion_side"],
              appearance=p["appearance"], brightness=p["brightness"], motion=p["motion"], refine_fn=refine, progress=False)
    ray_ex = Executor("ray", cluster)
    for kind, ex in [("local", Executor()), ("ray", ray_ex)]:
        table, bad = caption_clips(clips, tmp_path / "cut" / "clips", executor=ex, **kw)
        write_table(table, tmp_path / f"{kind}.parquet")
    _both_nodes(ray_ex)
    assert len(table) == len(clips) and not bad
    assert sha256_file(tmp_path / "local.parquet") == sha256_file(tmp_path / "ray.parquet")


LOCAL = """import ipaddress, psutil
from medgen.executor import Executor, ray_connect
ray = ray_connect(num_cpus=1)
print(Executor("ray").map(abs, [-1, -2], progress=False))
print(sorted({n["NodeManagerAddress"] for n in ray.nodes()}))
me = {p.pid for p in psutil.Process().children(recursive=True)}
ips = set()
for p in psutil.process_iter(["pid"]):
    if p.pid not in me: continue
    try: ips |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    except (psutil.AccessDenied, psutil.NoSuchProcess): pass
print(sorted(ips))
ray.shutdown()
"""


def test_a_ray_started_here_stays_on_loopback():
    "`engine.executor: ray` with no address starts a Ray of this machine: it must not listen beyond 127.0.0.1 (left alone, it does)."
    import ast
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *RAY_ENV)}
    r = subprocess.run([sys.executable, "-c", LOCAL], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result, nodes, ips = [ast.literal_eval(l) for l in r.stdout.strip().splitlines()[-3:]]
    assert result == [1, 2] and nodes == [LOOPBACK]
    assert ips and all(_is_loopback(ip) for ip in ips), f"a Ray started here listens beyond loopback: {ips}"
