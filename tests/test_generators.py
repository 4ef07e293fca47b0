"""Integration: the generator stages through a real `dvc repro` in a copy of the project, on a small slice of the real
corpus with the knobs turned down (a few training steps each): base_main (VAE + denoiser on non-medical videos),
latents_main, and two recipes (MedGen's LoRA; Bora's two steps); then the rest of the chain to generate and evaluate.
Ingest and select run for real on the slice; the split and the dataset are built here from the real manifest and real
clips, so the long curation chain does not have to run. Checked: the outputs exist, DVC
versions the adapter (a second repro does nothing), the adapter loads with `load_lora_weights` and with
`medgen generate --model VARIANT` from a fresh process, and a forced rerun gives the same adapter bytes."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import ruamel.yaml

from conftest import ROOT
from medgen.core import sha256_file

pytestmark = pytest.mark.integration
GENERAL = ["neg_asl_eat", "neg_asl_help", "neg_classroom", "neg_people_detection"]
MEDICAL = {"us_covid_blines_volpicelli_v2": "train", "us_normal_convex_182106": "train", "us_viral_whitelung_h1n1": "held_out",
           "us_viral_subpleural_h1n1": "held_out"}
SKIP = {".git", ".venv", "artifacts", "reports", "data", "data.dvc", "data_pocus", "data_pocus.dvc", "ratings", "scratch", "dvc_plots", ".pytest_cache", "__pycache__", "cache", ".cache", "tmp"}


def _run(cmd, cwd, timeout=1200):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MPLBACKEND", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"
    return r.stdout + r.stderr


def _upstream(dest: Path, corpus: Path):
    "The split and a small dataset built from the real manifest and real clips (ingest and select run for real in the fixture)."
    man = pd.read_csv(corpus / "manifest.csv").set_index("clip_id")
    (dest / "data" / "videos").mkdir(parents=True)
    for vid in GENERAL + list(MEDICAL):
        shutil.copy(corpus / man.loc[vid, "file"], dest / "data" / man.loc[vid, "file"])
    man.loc[GENERAL + list(MEDICAL)].reset_index().to_csv(dest / "data" / "manifest.csv", index=False)
    ds = dest / "artifacts" / "dataset" / "medvideocap"; (ds / "videos").mkdir(parents=True)
    meta, split = [], []
    for vid, side in MEDICAL.items():
        name = f"{vid}__00"; shutil.copy(corpus / man.loc[vid, "file"], ds / "videos" / f"{name}.mp4")
        caption = f"{man.loc[vid, 'title']}. {man.loc[vid, 'description']}"
        meta.append(dict(file_name=f"videos/{name}.mp4", name=name, video_id=vid, category=man.loc[vid, "modality"], label=man.loc[vid, "label"],
                         caption_medgen_detailed=caption, caption_medgen_brief=man.loc[vid, "title"], caption_ophora_refined=caption,
                         caption_bora_background=caption))
        split.append(dict(clip=name, group=vid, stratum=man.loc[vid, "label"], split=side, file_name=f"videos/{name}.mp4",
                          category=man.loc[vid, "modality"], doi=None, privacy_clean=True))
    pd.DataFrame(meta).to_csv(ds / "metadata.csv", index=False)
    (dest / "artifacts" / "split").mkdir(parents=True); pd.DataFrame(split).to_parquet(dest / "artifacts" / "split" / "split.parquet")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, corpus):
    dest = tmp_path_factory.mktemp("gen") / "medgen"
    (dest.parent / "shared").symlink_to(ROOT.parent / "shared")  # where data_reference.dvc's import says it came from
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in SKIP and not (Path(d) == ROOT / "nbs")])
    _run(["git", "init", "-q"], dest)
    _upstream(dest, corpus)
    for stage in ["ingest", "select"]: _run(["dvc", "repro", "--single-item", stage], dest)
    rt = ruamel.yaml.YAML()
    with open(dest / "params.yaml") as f: p = rt.load(f)
    p["video"].update(side=32, num_frames=9)  # the shortest length every family makes (CogVideoX: 8k + 1)
    p["windows"].update(max_seconds=3)
    p["base"]["model"].update(heads=2, head_dim=16, layers=1)
    p["base"]["vae"].update(steps=4)
    p["base"]["denoiser"].update(max_train_steps=4)
    p["base"].update(sample_steps=2)
    p["train"]["common"]["defaults"].update(max_train_steps=6, checkpointing_steps=3, validation_steps=6, validation_sampling_steps=2)
    for v in p["train"]["variants"].values():
        for step in v["recipe"]:
            if "config" in step and "max_train_steps" in step["config"]: step["config"]["max_train_steps"] = 4
    p["generate"].update(medgen_prompts=2, bora_prompts_per_modality=1, bora_modalities=["cell", "uls"])
    p["sampling"].update(steps=2)
    p["evaluate"].update(bootstrap=10)
    p["domain_clip"].update(epochs=1)
    with open(dest / "params.yaml", "w") as f: rt.dump(p, f)
    return dest


def test_generator_stages_through_dvc(repo):
    for stage in ["base@main", "latents@main", "train@medgen_lora", "train@bora"]:
        _run(["dvc", "repro", "--single-item", stage], repo)
    base = json.loads((repo / "artifacts" / "base_main" / "metrics.json").read_text())
    assert {r["set"] for r in base["vae"]["reconstruction"]} == {"general (held out)", "medical (held out)"}
    assert all(r["psnr_db"] > 5 for r in base["vae"]["reconstruction"]) and base["denoiser"]["steps"] == 4
    lora = repo / "artifacts" / "train_medgen_lora"
    assert (lora / "variant" / "adapter" / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((lora / "variant" / "variant.json").read_text())["base"] == "../../base_main/model"
    m = json.loads((lora / "metrics.json").read_text())
    assert m["runs"][0]["steps"] == 6 and set(m["heldout_loss"]) == {"held_out", "train"}
    assert list((lora / "validation" / "lora" / "step-000006").glob("*.mp4")) and len(pd.read_csv(lora / "logs" / "lora.csv")) == 6
    # the second training seed (train.common.seeds = 2): its own weights in the same layout, and its held-out loss in the metrics
    seed1 = lora / "replicates" / "seed_1" / "variant"
    adapter = lambda v: sha256_file(v / "adapter" / "pytorch_lora_weights.safetensors")
    assert json.loads((seed1 / "variant.json").read_text())["training_seed"] == 1 and m["seeds"] == 2
    assert json.loads((seed1 / "variant.json").read_text())["base"] == "../../../../base_main/model"
    assert adapter(seed1) != adapter(lora / "variant")  # another seed, another model
    assert len(pd.read_csv(lora / "replicates" / "seed_1" / "logs" / "lora.csv")) == 6 and len(m["heldout_loss_change_by_seed"]["held_out"]) == 2
    bora = json.loads((repo / "artifacts" / "train_bora" / "metrics.json").read_text())
    assert [r["step"] for r in bora["runs"]] == ["alignment", "instruction"]
    assert bora["runs"][0]["trainable_share"] < 1 and bora["runs"][1]["trainable_share"] == 1  # self-attention frozen, then nothing

    # DVC versions the adapter: recorded in dvc.lock, and a second repro does nothing
    lock = (repo / "dvc.lock").read_text()
    assert "artifacts/train_medgen_lora/variant" in lock
    assert "didn't change, skipping" in _run(["dvc", "repro", "--single-item", "train@medgen_lora"], repo)

    # it loads: load_lora_weights on the base, and the console script from a fresh process
    from medgen.generate.models import generate_video, load_pipeline
    from medgen.generate.train import load_variant
    from medgen.video import read_frames
    pipe = load_pipeline("wan", repo / "artifacts" / "base_main" / "model")
    plain = generate_video(pipe, "wan", "lung ultrasound", seed=0, height=32, width=32, num_frames=5, steps=2)
    pipe.load_lora_weights(lora / "variant" / "adapter")
    adapted = generate_video(pipe, "wan", "lung ultrasound", seed=0, height=32, width=32, num_frames=5, steps=2)
    assert (plain != adapted).any()
    variant, family = load_variant(lora / "variant")
    assert family == "wan" and (generate_video(variant, "wan", "lung ultrasound", seed=0, height=32, width=32, num_frames=5, steps=2) == adapted).all()
    out = repo / "scratch" / "cli.mp4"
    _run([str(Path(sys.executable).with_name("medgen")), "generate", "lung ultrasound", "--model", str(lora / "variant"), "--out", str(out),
          "--steps", "2", "--height", "32", "--width", "32", "--frames", "5", "--guidance", "1.0"], repo)
    assert read_frames(out)[0].shape == (5, 32, 32, 3)

    # a forced rerun (checkpoints removed, so it trains from step 0) gives the same adapter bytes
    before = [adapter(lora / "variant"), adapter(seed1)]
    shutil.rmtree(lora / "runs")
    _run(["dvc", "repro", "--single-item", "--force", "train@medgen_lora"], repo)
    assert [adapter(lora / "variant"), adapter(seed1)] == before


def test_every_variant_generated_and_evaluated(repo):
    "The rest of the chain: the second backbone and every recipe, generate (every variant, fixed seeds) and evaluate."
    stages = ["base@second", "latents@second", "train@full", "train@ophora", "train@second_lora", "domain_clip", "domain_clip_eval", "generate", "evaluate"]
    for stage in ["base@main", "latents@main", "train@medgen_lora", "train@bora"] + stages:  # the first four are done when the test above ran
        _run(["dvc", "repro", "--single-item", stage], repo)
    index = pd.read_parquet(repo / "artifacts" / "generate" / "index.parquet")
    assert sorted(index.variant.unique()) == sorted(["base_main", "medgen_lora", "full", "ophora", "bora", "base_second", "second_lora"])
    assert index.groupby("variant").size().eq(4).all()  # 2 MedGen prompts + 1 per Bora modality (2)
    assert index.groupby("prompt_id").seed.nunique().eq(1).all()  # the same seed for every variant on a prompt
    assert (repo / "paper_figures" / "medgen_fig7_generation_grid.png").exists()
    replicas = pd.read_parquet(repo / "artifacts" / "generate" / "replicate_index.parquet")  # every trained variant's second training seed
    assert sorted(replicas.variant.unique()) == sorted(["medgen_lora", "full", "ophora", "bora", "second_lora"]) and (replicas.training_seed == 1).all()
    assert replicas.groupby("variant").size().eq(4).all() and set(replicas.seed) == set(index.seed)  # the same prompts and sampling seeds
    scores = pd.read_parquet(repo / "artifacts" / "evaluate" / "scores.parquet")
    assert scores.backend.notna().all() and "real (held out)" in set(scores.variant)
    assert {"subject_consistency", "warping_error", "bmu_v", "realism", "clip_score"} <= set(scores.dimension)
    assert set(scores[scores.variant == "ophora"].training_seed) == {0, 1} and set(scores[scores.variant == "base_main"].training_seed) == {0}
    fid_rows = set(pd.read_csv(repo / "paper_figures" / "ophora_table1_quality.csv").variant)
    assert {"ophora (training seed 0)", "ophora (training seed 1)", "base_main"} <= fid_rows  # distances per seed, never pooled
    for name in ["medgen_table2_medvbench", "ophora_table1_quality", "bora_table2_instruction", "bora_table3_quality"]:
        table = pd.read_csv(repo / "paper_figures" / f"{name}.csv")
        assert table.source.str.contains("published").any() and table.source.str.startswith("this compendium").any(), name
    claims = (repo / "paper_figures" / "evaluate_claims.md").read_text()
    assert claims.count("**") == 12 and "MedGen Table 2" in claims and "Bora Table 2" in claims  # six claims, each with its status
    assert "BmU needs a captioner that names anatomy" in claims and "Holm" in claims
    metrics = json.loads((repo / "artifacts" / "evaluate" / "metrics.json").read_text())
    gates = pd.read_parquet(repo / "artifacts" / "evaluate" / "gates.parquet")
    assert sorted(gates.variant) == sorted(index.variant.unique()) and (gates.gate_videos == 2 * 3).all()  # 2 prompts x 3 seeds
    assert (gates.passes == (gates.reason == "")).all()
    measured = [c for c in metrics["claims"] if c["estimate"] == c["estimate"]]  # not NaN: a test ran, judged or not
    assert measured and all("2 training seeds" in c["unit"] and c["seeds"] == 2 and len(c["seed_estimates"]) == 2 for c in measured), measured
    g = gates.set_index("variant")
    arms = {"MedGen Table 2": ("medgen_lora", "base_main"), "Ophora Table 1": ("ophora", "base_main"), "Bora Table 2": ("bora", "base_main")}
    for c in metrics["claims"]:  # both arms gated: a failed gate is the claim's reason, and a claim with a reason is never judged
        pair = arms[c["table"]]
        if not all(g.follows_prompts[v] for v in pair): assert c["untestable"], c
        if c["table"] == "MedGen Table 2":  # both gates apply: the reason is exactly the failing arms' gate reasons
            assert c["untestable"] == "; ".join(f"{v}: {g.reason[v]}" for v in pair if g.reason[v]), c
    # the evaluation's feature model never saw a held-out source; curation's did (so the check can fail)
    held = set(pd.read_parquet(repo / "artifacts" / "split" / "split.parquet").query("split == 'held_out'").group)
    evaluation = set(pd.read_parquet(repo / "artifacts" / "domain_clip_eval" / "training_videos.parquet").video_id)
    curation = set(pd.read_parquet(repo / "artifacts" / "domain_clip" / "training_videos.parquet").video_id)
    assert held and not held & evaluation and held <= curation and evaluation == curation - held
    assert metrics["feature_model"]["path"] == "artifacts/domain_clip_eval/model"

    # background consistency with the pipeline's domain CLIP: a real clip beats its frame-shuffled copy
    import numpy as np
    from medgen.curate.domain_clip import embed_images, load_domain_clip
    from medgen.evaluate.vbench import consistency
    from medgen.generate.clips import read_clip
    model, preprocess, _ = load_domain_clip(repo / "artifacts" / "domain_clip" / "model")
    clip = read_clip(repo / "data" / "videos" / "us_viral_whitelung_h1n1.mp4", fps=8, side=64, max_seconds=2)
    shuffled = clip[np.random.default_rng(0).permutation(len(clip))]
    assert consistency(embed_images(model, preprocess, clip)) > consistency(embed_images(model, preprocess, shuffled))


def _pocus_subset(repo: Path):
    "A slice of the real lung POCUS benchmark: 3 patients per class, one clip each, a patient the generators saw, the one-patient class."
    src = ROOT / "data_pocus"
    man = pd.read_csv(src / "manifest.csv")
    unseen = man[man.in_main_corpus_patient.astype(str).str.lower() == "false"]
    pick = pd.concat([unseen[unseen.label == c].drop_duplicates("patient_group").head(3) for c in ["bacterial_pneumonia", "covid19", "healthy"]]
                     + [man[man.in_main_corpus_patient.astype(str).str.lower() == "true"].head(1), man[man.label == "viral_pneumonia"]])
    (repo / "data_pocus" / "videos").mkdir(parents=True, exist_ok=True)
    for f in pick.file: shutil.copy(src / f, repo / "data_pocus" / f)
    pick.to_csv(repo / "data_pocus" / "manifest.csv", index=False)
    return pick


def _filter_tables(repo: Path):
    "Each filter stage's kept clips (what the rating kit's audit samples): the slice's dataset clips, as segment would have cut them."
    clips = repo / "artifacts" / "segment" / "clips"; clips.mkdir(parents=True, exist_ok=True)
    meta = pd.read_csv(repo / "artifacts" / "dataset" / "medvideocap" / "metadata.csv")
    for r in meta.itertuples(): shutil.copy(repo / "artifacts" / "dataset" / "medvideocap" / r.file_name, clips / f"{r.name}.mp4")
    kept = pd.DataFrame(dict(clip_id=meta.name, file=[f"{n}.mp4" for n in meta.name]))
    for f in ["border", "ocr", "aesthetic", "technical", "joint", "dynamics", "privacy"]:
        (repo / "artifacts" / f"filter_{f}").mkdir(parents=True, exist_ok=True); kept.to_parquet(repo / "artifacts" / f"filter_{f}" / "clips.parquet")


@pytest.mark.browser
def test_applications_and_the_rating_kit(repo):
    """Downstream augmentation and the transfer table through DVC; the rating page built by its stage, rated in headless
    Chromium (keyboard and mouse, a reload, Export CSV); the `human` stage reads the export beside a second rater's
    file and a bad file: Fig. 6, the warping error, kappa and the audit, and an error row for the bad file."""
    from rating_browser import rate_page
    pick = _pocus_subset(repo); _filter_tables(repo)
    (repo / "ratings").mkdir(exist_ok=True); shutil.copy(ROOT / "ratings" / "README.md", repo / "ratings" / "README.md")  # no ratings yet
    rt = ruamel.yaml.YAML()
    with open(repo / "params.yaml") as f: p = rt.load(f)
    p["downstream"].update(per_class=1, n_splits=2, repeats=1)
    p["rating_kit"].update(audit_per_stage=1)
    with open(repo / "params.yaml", "w") as f: rt.dump(p, f)
    for stage in ["generate", "evaluate", "downstream", "transfer", "rating_kit", "human"]:
        _run(["dvc", "repro", "--single-item", stage], repo)

    # downstream: viral pneumonia (one patient) dropped and said; the seen patient never tested; every condition scored
    folds = pd.read_parquet(repo / "artifacts" / "downstream" / "folds.parquet")
    assert sorted(folds.condition.unique()) == ["D_ori", "D_ori+D_base", "D_ori+D_medgen", "D_ori+D_ophora"] and len(folds) == 2 * (2 + 2 * 2)
    assert folds.groupby("condition").training_seed.nunique().to_dict() == {"D_ori": 1, "D_ori+D_base": 1, "D_ori+D_medgen": 2, "D_ori+D_ophora": 2}
    down = json.loads((repo / "artifacts" / "downstream" / "metrics.json").read_text())
    assert all(c["seeds"] == 2 and "folds (patient-grouped, corrected) x 2 training seeds" in c["unit"] for c in down["claims"]), down["claims"]
    assert set(pd.read_parquet(repo / "artifacts" / "downstream" / "dropped.parquet").label) == {"viral_pneumonia"}
    table3 = (repo / "paper_figures" / "medgen_table3_augmentation.md").read_text()
    assert "viral_pneumonia" in table3 and "MedVidCL (MedGen, published)" in table3 and "p = " in table3
    assert "Mochi-1-preview original" in (repo / "paper_figures" / "medgen_table4_transfer.md").read_text()

    # no ratings yet: the human tables say so
    assert "No ratings yet" in (repo / "paper_figures" / "medgen_fig6_human.md").read_text()

    # the page: no variant name in it, the key apart
    page = repo / "artifacts" / "rating_kit" / "page" / "index.html"
    key = pd.read_csv(repo / "artifacts" / "rating_kit" / "key" / "key.csv", dtype=str, keep_default_na=False)
    text = page.read_text()
    assert not any(f'"{v}"' in text for v in key[key.kind == "generation"].variant.unique())
    seen = rate_page(page, repo / "ratings" / "dr_a.csv")
    assert not seen["errors"], seen["errors"]
    assert seen["images_loaded"] and seen["after_reload_rater"] == "dr_a"
    assert seen["after_reload_item2_A_moderate"] and seen["after_reload_item1_B_severe"] and seen["item1_status_after_reload"] == "this item is complete"
    a = pd.read_csv(repo / "ratings" / "dr_a.csv", dtype=str, keep_default_na=False)
    (item1, letters1), (item2, letters2) = zip(seen["items"][:2], seen["letters"])
    vid = {(item1, l): v for l, v in letters1} | {(item2, l): v for l, v in letters2}
    got = {(r.item, r.video, r.question): r.answer for r in a.itertuples()}
    assert got[(item1, "", "text_alignment")] == vid[(item1, "B")] and got[(item1, "", "medical_accuracy")] == "none"
    assert got[(item1, "", "visual_quality")] == vid[(item1, "A")]  # the mouse
    assert got[(item1, vid[(item1, "A")], "distortion")] == "0" and got[(item1, vid[(item1, "B")], "distortion")] == "3"
    assert got[(item2, vid[(item2, "A")], "distortion")] == "2" and got[(item2, "", "visual_quality")] == vid[(item2, "A")]
    assert got[(seen["audit_item"], key.set_index("item").loc[seen["audit_item"], "video"], "audit")] == "noisy"

    # a second rater (agrees except on one distortion level) and a bad file; the human stage reads them all
    b = a.assign(rater="dr_b"); b.loc[b.question == "distortion", "answer"] = b.loc[b.question == "distortion", "answer"].replace({"1": "0"})
    b.to_csv(repo / "ratings" / "dr_b.csv", index=False)
    (repo / "ratings" / "broken.csv").write_text("rater,item\nx,y\n")
    _run(["dvc", "repro", "--single-item", "human"], repo)
    errors = pd.read_csv(repo / "artifacts" / "human" / "errors.csv")
    assert errors.file.tolist() == ["broken.csv"] and "missing columns" in errors.reason[0]
    kappa = pd.read_csv(repo / "paper_figures" / "medgen_table9_kappa.csv")
    assert kappa[["rater_a", "rater_b"]].values.tolist() == [["dr_a", "dr_b"]] and 0 < kappa.kappa[0] < 1
    fig6 = pd.read_csv(repo / "paper_figures" / "medgen_fig6_human.csv")
    chosen = key.set_index("video").variant[vid[(item1, "B")]]
    assert fig6.set_index("variant").loc[chosen, "text_alignment"] > 0 and "warping_error" in fig6
    audit = pd.read_csv(repo / "paper_figures" / "medgen_curation_audit.csv")
    assert audit.set_index("stage").loc["filter_border", "usable"] == 0  # both raters: noisy


def test_verdicts_are_stable_under_a_float_level_perturbation(repo):
    """The recipes retrained, their videos regenerated and re-evaluated as on an older CPU (MKL and oneDNN capped at SSE4:
    other kernels, other float rounding; torch's thread count alone changes nothing at this size, measured): the scores
    move, and no claim moves between a decided status (reproduced, contradicted) and another; a claim may only move
    between inconclusive and not testable here."""
    from medgen.evaluate.verdicts import judge_claims
    def statuses():
        m = json.loads((repo / "artifacts" / "evaluate" / "metrics.json").read_text())
        judged = judge_claims(pd.DataFrame(m["claims"]))
        return dict(zip(judged.table + ": " + judged.claim, judged.status))
    stages = ["train@medgen_lora", "train@ophora", "train@bora", "train@second_lora", "generate", "evaluate"]
    for stage in stages: _run(["dvc", "repro", "--single-item", stage], repo)  # (done by the tests above when run in order)
    before, scores_before = statuses(), sha256_file(repo / "artifacts" / "evaluate" / "scores.parquet")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    env.pop("MPLBACKEND", None)
    for stage in stages:
        r = subprocess.run(["dvc", "repro", "--force", "--single-item", stage], cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = statuses()
    assert sha256_file(repo / "artifacts" / "evaluate" / "scores.parquet") != scores_before  # the perturbation reached the scores
    assert before.keys() == after.keys()
    undecided = {"inconclusive", "not testable here"}
    moved = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert all(set(pair) <= undecided for pair in moved.values()), moved
