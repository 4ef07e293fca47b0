"""The dataset stage (MedGen 3.3): funnel counts on a synthetic chain with known answers, the packaged dataset loaded with
Hugging Face `datasets`, the nothing-lost check, bad input (a survivor whose clip file is missing), same inputs -> same
bytes, the stage notebook end to end on the synthetic chain, and (when `dvc repro dataset` has run) the real outputs."""
import json, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medgen.core import append_rejections, rejection, sha256_file, write_table
from medgen.curate.dataset import (METADATA_FIELDS, account_for_clips, account_for_videos, check_nothing_lost, collect_backends,
                            compare_funnel, count_funnel, dataset_card, final_clips, package_clips, paper_funnel_table,
                            write_metadata)
from medgen.video import read_frames, write_video

VIDEOS = ["neg_classroom", "us_covid_blines_volpicelli_v1", "us_normal_convex_181602", "us_normal_linear_181206",
          "us_viral_whitelung_h1n1", "micro_zebrafish_ysl_nuclei_cil11813"]
# clips cut per video (seconds); whitelung and neg_classroom give none (rejected at segment / select)
CUTS = {"us_covid_blines_volpicelli_v1": [(0, 1.5), (1.5, 3)], "us_normal_convex_181602": [(0, 1.5), (1.5, 3)],
        "us_normal_linear_181206": [(0, 1.5)], "micro_zebrafish_ysl_nuclei_cil11813": [(0, 1.5)]}


def load(ds_dir, cfg=None, cache=None):
    from datasets import Video, load_dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cfg is None: return load_dataset("videofolder", data_dir=str(ds_dir), cache_dir=str(cache))["train"]
        return load_dataset(str(ds_dir), cfg, cache_dir=str(cache))["train"].cast_column("video", Video(decode=False))


@pytest.fixture(scope="module")
def chain(tmp_path_factory, corpus, manifest):
    """A synthetic chain on real corpus clips, written as the stages write it (parquet tables + clip mp4s).
    Known answers: ingest 6 videos (+1 rejected at ingest); select drops neg_classroom; segment drops whitelung and cuts
    6 clips from 4 videos; caption keeps all; filter_border removes linear__00; filter_ocr removes nothing; the flag-only
    filter_privacy flags convex__01 and could not score volpicelli_v1__01 (kept in its table, with a rejection row)."""
    d = tmp_path_factory.mktemp("chain")
    man = manifest.set_index("clip_id")
    ingested = man.loc[VIDEOS].reset_index()
    selected = ingested[ingested.clip_id != "neg_classroom"]
    rows = []
    (d / "clips").mkdir()
    for vid, spans in CUTS.items():
        for k, (a, b) in enumerate(spans):
            frames, _ = read_frames(corpus / man.loc[vid, "file"], fps=8, start_s=a, end_s=b, max_side=96)
            cid = f"{vid}__{k:02d}"
            write_video(frames, d / "clips" / f"{cid}.mp4", fps=8)
            rows.append(dict(clip_id=cid, video_id=vid, start_s=float(a), end_s=float(b), file=f"{cid}.mp4",
                             **man.loc[vid, ["title", "domain", "modality", "label", "license", "source", "doi"]].to_dict()))
    seg = pd.DataFrame(rows)
    cap = seg.drop(columns=["file"]).assign(brief_caption=lambda x: "A " + x.modality + " clip.",
                                            detailed_caption=lambda x: "This clip shows " + x.modality + ": " + x.title,
                                            camera_motion="static", caption_backend="grounded")
    rej = append_rejections(None, [rejection("bad_truncated", "ingest", "unreadable", "decoding failed"),
                                   rejection("neg_classroom", "select", "no_medical_keyword", "0 hits"),
                                   rejection("us_viral_whitelung_h1n1", "segment", "no_valid_segment", "only 5 frames")])
    border = cap[cap.clip_id != "us_normal_linear_181206__00"].assign(border_score=0.0, border_decision="keep", border_backend="canny")
    rej = append_rejections(rej, [rejection("us_normal_linear_181206__00", "filter_border", "black_border", "left bar")])
    rng = np.random.default_rng(0)
    ocr = border.assign(ocr_score=0.0, ocr_decision="keep", ocr_backend="easyocr",
                        aesthetic_score=rng.uniform(2, 6, len(border)).round(3), aesthetic_backend="proxy-a",
                        technical_score=rng.uniform(0.3, 0.7, len(border)).round(3), technical_backend="proxy-t")
    priv = ocr.assign(privacy_score=0.0, privacy_decision="keep", privacy_backend="haar")
    priv.loc[priv.clip_id == "us_normal_convex_181602__01", "privacy_decision"] = "flag"
    priv.loc[priv.clip_id == "us_covid_blines_volpicelli_v1__01", "privacy_decision"] = "error"
    priv["privacy_flag"] = priv.privacy_decision == "flag"
    rej = append_rejections(rej, [rejection("us_covid_blines_volpicelli_v1__01", "filter_privacy", "unreadable", "decode error")])
    tables = {"ingest": ingested, "select": selected, "segment": seg, "caption": cap, "filter_border": border,
              "filter_ocr": ocr, "filter_privacy": priv}
    for k, t in tables.items(): write_table(t, d / f"{k}.parquet")
    write_table(rej, d / "rejections.parquet")
    scores = ocr[["clip_id", "aesthetic_score"]].rename(columns={"aesthetic_score": "score"}).assign(decision="keep")
    write_table(scores, d / "aesthetic_scores.parquet")
    write_table(ocr[["clip_id", "technical_score"]].rename(columns={"technical_score": "score"}).assign(decision="keep"), d / "technical_scores.parquet")
    return dict(dir=d, tables=tables, rej=rej, seg=seg)


def steps_of(chain):
    t = chain["tables"]
    return [dict(stage="ingest", survivors=t["ingest"], unit="videos"), dict(stage="select", survivors=t["select"], unit="videos"),
            dict(stage="segment", survivors=t["segment"], unit="clips", parent="video_id"),
            dict(stage="caption", survivors=t["caption"], unit="clips"),
            dict(stage="filter_border", survivors=t["filter_border"], unit="clips"),
            dict(stage="filter_ocr", survivors=t["filter_ocr"], unit="clips"),
            dict(stage="filter_privacy", survivors=t["filter_privacy"], unit="clips", flag="privacy_flag")]


def test_funnel_known_answers(chain):
    f = count_funnel(steps_of(chain), chain["rej"]).set_index("stage")
    assert f.n_in.tolist() == [7, 6, 5, 6, 6, 5, 5]
    assert f.n_removed.tolist() == [1, 1, 1, 0, 1, 0, 1]          # ocr removes nothing; privacy only its unscorable clip
    assert f.n_kept.tolist() == [6, 5, 4, 6, 5, 5, 4]             # segment: 4 of 5 videos gave clips ...
    assert f.n_out.tolist() == [6, 5, 6, 6, 5, 5, 4]              # ... 6 clips
    assert f.n_flagged.tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert (f.unaccounted == 0).all()
    assert (f.loc["segment", "unit_in"], f.loc["segment", "unit_out"]) == ("videos", "clips")
    assert f.loc["filter_border", "reasons"] == "black_border 1" and f.loc["filter_ocr", "reasons"] == ""
    assert f.loc["filter_ocr", "fraction_kept"] == 1.0


def test_funnel_catches_a_silent_loss(chain):
    steps = steps_of(chain)
    steps[5] = dict(stage="filter_ocr", survivors=chain["tables"]["filter_ocr"].iloc[1:], unit="clips")  # a clip vanishes, no row
    f = count_funnel(steps, chain["rej"]).set_index("stage")
    assert f.loc["filter_ocr", "unaccounted"] == 1


@pytest.fixture(scope="module")
def packaged(chain, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "medvideocap"
    surv, dropped = final_clips(chain["tables"]["filter_privacy"], chain["rej"])
    meta, bad = package_clips(surv, chain["seg"], chain["dir"] / "clips", out, progress=False)
    write_metadata(meta, out)
    steps = steps_of(chain) + [dict(stage="dataset", survivors=meta.rename(columns={"name": "clip_id"}), unit="clips")]
    rej = append_rejections(chain["rej"], bad.to_dict("records"))
    (out / "README.md").write_text(dataset_card(meta, count_funnel(steps, rej), collect_backends(chain["tables"]["filter_privacy"])))
    return dict(out=out, meta=meta, bad=bad, dropped=dropped, rej=rej)


def test_package_fields_and_files(chain, packaged, manifest):
    meta, out = packaged["meta"], packaged["out"]
    assert packaged["dropped"] == ["us_covid_blines_volpicelli_v1__01"] and len(packaged["bad"]) == 0
    assert meta.name.tolist() == ["micro_zebrafish_ysl_nuclei_cil11813__00", "us_covid_blines_volpicelli_v1__00",
                                  "us_normal_convex_181602__00", "us_normal_convex_181602__01"]
    assert list(meta.columns) == list(METADATA_FIELDS)
    assert all((out / f).is_file() and (out / f).stat().st_size > 1000 for f in meta.file_name)
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(Path(f).name for f in meta.file_name)
    assert (meta.bitrate > 0).all() and (meta.fps == 8.0).all() and (meta.resolution == meta.width.astype(str) + "x" + meta.height.astype(str)).all()
    assert np.allclose(meta.duration_s, meta.n_frames / meta.fps, atol=1e-3)   # measured on the copied file
    assert np.allclose(meta.duration_s[1:], 1.5, atol=0.13)   # the ultrasound clips; the 5-fps microscopy video gives fewer frames
    lic = manifest.set_index("clip_id").license
    assert meta.license.tolist() == [lic[v] for v in meta.video_id]          # licences carried unchanged
    assert meta.privacy_clean.tolist() == [True, True, True, False]
    assert meta.category.tolist() == ["microscopy", "ultrasound", "ultrasound", "ultrasound"]


def test_datasets_loads_both_configs(packaged, tmp_path):
    meta, out = packaged["meta"], packaged["out"]
    full, clean, plain = load(out, "all", tmp_path), load(out, "privacy_clean", tmp_path), load(out, None, tmp_path)
    assert (full.num_rows, clean.num_rows, plain.num_rows) == (4, 3, 4)
    assert {"video", *[c for c in METADATA_FIELDS if c != "file_name"]} <= set(full.column_names)
    assert all(Path(v["path"]).is_file() for v in full["video"])
    assert sorted(Path(v["path"]).name for v in clean["video"]) == sorted(Path(f).name for f in meta.file_name[meta.privacy_clean])
    assert full["license"] == meta.license.tolist() and all(clean["privacy_clean"])
    assert full["bitrate"] == meta.bitrate.tolist()


def test_card_names_noncommercial_clip_and_backends(chain, packaged, manifest):
    card = (packaged["out"] / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: privacy_clean" in card and "metadata_privacy_clean.csv" in card
    assert "Non-commercial licence" in card and "micro_zebrafish_ysl_nuclei_cil11813__00" in card
    assert "not for clinical use" in card.lower() and "`proxy-a`" in card and "`haar`" in card
    # the same dataset without the microscopy clip (rejected by a filter): the card says where its NC video left
    meta = packaged["meta"][packaged["meta"].category != "microscopy"]
    rej = append_rejections(packaged["rej"], [rejection("micro_zebrafish_ysl_nuclei_cil11813__00", "filter_ocr", "subtitles", "31 words")])
    va = account_for_videos(chain["tables"]["ingest"].clip_id, chain["seg"], meta.name, rej)
    f = count_funnel(steps_of(chain), rej)
    card = dataset_card(meta, f, {}, videos_acc=va, video_licences=dict(zip(manifest.clip_id, manifest.license)))
    assert "No clip in this dataset carries a non-commercial licence" in card
    assert "`micro_zebrafish_ysl_nuclei_cil11813` (*CC BY-NC-SA 3.0" in card and "did not reach the dataset: clips_rejected" in card


def test_nothing_lost(chain, packaged):
    ids = set(chain["tables"]["ingest"].clip_id) | {"bad_truncated"}
    va = account_for_videos(ids, chain["seg"], packaged["meta"].name, packaged["rej"])
    ca = account_for_clips(chain["seg"], packaged["meta"].name, packaged["rej"])
    check_nothing_lost(va, ca)
    assert dict(zip(va.video_id, va.status)) == {
        "bad_truncated": "video_rejected", "micro_zebrafish_ysl_nuclei_cil11813": "in_dataset", "neg_classroom": "video_rejected",
        "us_covid_blines_volpicelli_v1": "in_dataset", "us_normal_convex_181602": "in_dataset",
        "us_normal_linear_181206": "clips_rejected", "us_viral_whitelung_h1n1": "video_rejected"}
    # a clip with neither a place in the dataset nor a row is caught, and so is a video that left no trace
    with pytest.raises(ValueError, match="1 clips"):
        check_nothing_lost(va, account_for_clips(chain["seg"], packaged["meta"].name[1:], packaged["rej"]))
    with pytest.raises(ValueError, match="ghost"):
        check_nothing_lost(account_for_videos(ids | {"ghost"}, chain["seg"], packaged["meta"].name, packaged["rej"]), ca)


def test_missing_clip_file_gets_a_row_and_the_run_goes_on(chain, tmp_path):
    clips = tmp_path / "clips"; shutil.copytree(chain["dir"] / "clips", clips)
    (clips / "us_normal_convex_181602__00.mp4").unlink()
    (clips / "micro_zebrafish_ysl_nuclei_cil11813__00.mp4").write_bytes(b"\x00" * 100)
    surv, _ = final_clips(chain["tables"]["filter_privacy"], chain["rej"])
    meta, bad = package_clips(surv, chain["seg"], clips, tmp_path / "out", progress=False)
    assert dict(zip(bad.clip_id, bad.reason)) == {"us_normal_convex_181602__00": "missing_file",
                                                 "micro_zebrafish_ysl_nuclei_cil11813__00": "unreadable"}
    assert set(bad.stage) == {"dataset"} and bad.detail.str.len().min() > 5
    assert meta.name.tolist() == ["us_covid_blines_volpicelli_v1__00", "us_normal_convex_181602__01"]
    rej = append_rejections(chain["rej"], bad.to_dict("records"))
    steps = steps_of(chain) + [dict(stage="dataset", survivors=meta.rename(columns={"name": "clip_id"}), unit="clips")]
    f = count_funnel(steps, rej).set_index("stage")
    assert (f.loc["dataset", "n_in"], f.loc["dataset", "n_removed"], f.loc["dataset", "n_kept"]) == (4, 2, 2)
    check_nothing_lost(account_for_videos(chain["tables"]["ingest"].clip_id, chain["seg"], meta.name, rej),
                       account_for_clips(chain["seg"], meta.name, rej))


def test_same_inputs_same_bytes(chain, packaged, tmp_path):
    surv, _ = final_clips(chain["tables"]["filter_privacy"], chain["rej"])
    meta, _ = package_clips(surv, chain["seg"], chain["dir"] / "clips", tmp_path / "again", progress=False)
    write_metadata(meta, tmp_path / "again")
    for n in ["metadata.csv", "metadata_privacy_clean.csv", *packaged["meta"].file_name]:
        assert sha256_file(tmp_path / "again" / n) == sha256_file(packaged["out"] / n), n


def test_paper_funnel_copy_and_comparison(root):
    ours = root / "resources" / "paper_tables" / "medgen_fig4_filter_funnel.csv"
    shared = root.parent / "shared" / "paper_tables" / "medgen_fig4_filter_funnel.csv"
    if shared.exists(): assert ours.read_bytes() == shared.read_bytes()
    p = paper_funnel_table(pd.read_csv(ours))
    assert p.remaining.iloc[-1] == 55803 and np.isclose(p.fraction_kept.iloc[1], 97766 / 110969)
    fun = pd.DataFrame(dict(step=[1, 2, 3], stage=["segment", "filter_border", "filter_dynamics"], unit_in=["videos", "clips", "clips"],
                            n_in=[4, 10, 8], n_removed=[1, 2, 0], n_kept=[3, 8, 8], unit_out="clips", n_out=[10, 8, 8], n_flagged=0,
                            fraction_kept=[0.75, 0.8, 1.0]))
    cmp = compare_funnel(fun, pd.read_csv(ours), {"segment": "segmented clips (>480p)", "filter_border": "black border"})
    assert cmp.of_segmented.tolist() == [1.0, 0.8, 0.8]
    assert np.isclose(cmp.paper_of_segmented[1], 97766 / 110969) and np.isnan(cmp.paper_fraction_kept[2])
    with pytest.raises(KeyError, match="lacks"):
        compare_funnel(fun, pd.read_csv(ours), {"segment": "segmented clips (>480p)", "filter_border": "no such stage"})


def test_stage_notebook_on_the_synthetic_chain(chain, root, tmp_path):
    "nbs/pipeline/dataset.ipynb end to end (papermill) on the synthetic chain: dataset, figures, card, metrics."
    import papermill as pm
    d = chain["dir"]
    funnel = [dict(stage="ingest", table=str(d / "ingest.parquet"), unit="videos"), dict(stage="select", table=str(d / "select.parquet"), unit="videos"),
              dict(stage="segment", table=str(d / "segment.parquet"), unit="clips", parent="video_id"),
              dict(stage="caption", table=str(d / "caption.parquet"), unit="clips"),
              dict(stage="filter_border", table=str(d / "filter_border.parquet"), unit="clips"),
              dict(stage="filter_ocr", table=str(d / "filter_ocr.parquet"), unit="clips"),
              dict(stage="filter_privacy", table=str(d / "filter_privacy.parquet"), unit="clips", flag="privacy_flag")]
    out, figs = tmp_path / "out", tmp_path / "figs"
    pm.execute_notebook(str(root / "nbs/pipeline/dataset.ipynb"), str(tmp_path / "run.ipynb"), kernel_name="python3", cwd=str(root),
                        progress_bar=False, parameters=dict(out_dir=str(out), figures_dir=str(figs), clips=str(d / "filter_privacy.parquet"),
                        rejections=str(d / "rejections.parquet"), segment_clips=str(d / "segment.parquet"), clips_dir=str(d / "clips"),
                        funnel=funnel, scores={"aesthetic": str(d / "aesthetic_scores.parquet"), "technical": str(d / "technical_scores.parquet")}))
    m = json.loads((out / "metrics.json").read_text())
    assert (m["clips"], m["privacy_clean"], m["by_category"]) == (4, 3, {"microscopy": 1, "ultrasound": 3})
    assert m["sha256"]["metadata.csv"] == sha256_file(out / "medvideocap" / "metadata.csv")
    assert m["funnel"]["segment"] == dict(unit_in="videos", n_in=5, removed=1, kept=4, unit_out="clips", n_out=6, flagged=0)
    assert m["videos_by_status"] == {"clips_rejected": 1, "in_dataset": 3, "video_rejected": 3}
    for n in ["medgen_fig4_funnel.png", "medgen_fig4_funnel.csv", "medgen_fig4_funnel.md", "medgen_fig5_statistics.png"]:
        assert (figs / n).stat().st_size > 500, n
    cmp = pd.read_csv(figs / "medgen_fig4_funnel.csv")
    assert cmp.stage.tolist()[-1] == "dataset" and cmp.paper_remaining.dropna().astype(int).tolist() == [110969, 97766, 87344]
    assert "| filter_border" in (figs / "medgen_fig4_funnel.md").read_text()
    rej = pd.read_parquet(out / "rejections.parquet")
    assert len(rej) == len(chain["rej"]) and (out / "medvideocap" / "README.md").exists()


ART = Path(__file__).resolve().parents[1] / "artifacts" / "dataset"


@pytest.mark.skipif(not (ART / "medvideocap" / "metadata.csv").exists(), reason="artifacts/dataset not built yet: run `dvc repro dataset`")
def test_real_dataset_nothing_lost_and_loads(root, tmp_path):
    "The stage's real outputs: every ingested video accounted for, every file there, the card's configs load, metrics agree."
    ds = ART / "medvideocap"
    meta = pd.read_csv(ds / "metadata.csv", keep_default_na=False)
    rej = pd.read_parquet(ART / "rejections.parquet")
    videos = pd.read_parquet(root / "artifacts/ingest/videos.parquet")
    seg = pd.read_parquet(root / "artifacts/segment/clips.parquet")
    ids = set(videos.clip_id) | set(rej.clip_id[rej.stage == "ingest"])
    check_nothing_lost(account_for_videos(ids, seg, meta.name, rej), account_for_clips(seg, meta.name, rej))
    assert all((ds / f).is_file() for f in meta.file_name)
    assert sorted(p.name for p in (ds / "videos").iterdir()) == sorted(Path(f).name for f in meta.file_name)
    lic = videos.set_index("clip_id").license
    assert meta.license.tolist() == [lic[v] for v in meta.video_id]
    m = json.loads((ART / "metrics.json").read_text())
    assert m["clips"] == len(meta) and m["sha256"]["metadata.csv"] == sha256_file(ds / "metadata.csv")
    assert load(ds, "all", tmp_path).num_rows == len(meta)
    assert load(ds, "privacy_clean", tmp_path).num_rows == int(meta.privacy_clean.astype(str).eq("True").sum()) == m["privacy_clean"]
    f = pd.read_parquet(ART / "funnel.parquet")
    assert (f.unaccounted == 0).all() and f.n_out.iloc[-1] == len(meta) and f.n_in.iloc[0] == len(ids)
