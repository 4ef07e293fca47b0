"""The dataset stage (MedGen 3.3) on a synthetic chain of real corpus clips: funnel counts with a video rejected at
ingest and a clip the flag-only privacy stage could not score, the packaged dataset loaded with Hugging Face
`datasets`, the card's licence notes, bad input (a survivor whose clip file is missing or broken), same inputs -> same
bytes, the paper's table, and the stage notebook end to end. The funnel, packaging, nothing-lost and comparison known
answers of nbs/30_dataset's own miniature chain are not repeated here."""
import json, shutil, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medgen.core import append_rejections, rejection, sha256_file, write_table
from medgen.curate.dataset import (METADATA_FIELDS, account_for_clips, account_for_videos, check_nothing_lost, collect_backends,
                                   compare_funnel, count_funnel, dataset_card, final_clips, package_clips, paper_funnel_table,
                                   write_metadata)
from medgen.curate.ingest import read_manifest
from medgen.video import read_frames, write_video

VIDEOS = ["neg_classroom", "us_covid_blines_volpicelli_v1", "us_normal_convex_181602", "us_normal_linear_181206",
          "us_viral_whitelung_h1n1", "micro_zebrafish_ysl_nuclei_cil11813"]
# clips cut per video (seconds); whitelung and neg_classroom give none (rejected at segment / select)
CUTS = {"us_covid_blines_volpicelli_v1": [(0, 1.5), (1.5, 3)], "us_normal_convex_181602": [(0, 1.5), (1.5, 3)],
        "us_normal_linear_181206": [(0, 1.5)], "micro_zebrafish_ysl_nuclei_cil11813": [(0, 1.5)]}
STAGES = ["ingest", "select", "segment", "caption", "filter_border", "filter_ocr", "filter_privacy"]


def load(ds_dir, cfg, cache):
    from datasets import Video, load_dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(str(ds_dir), cfg, cache_dir=str(cache))["train"].cast_column("video", Video(decode=False))


@pytest.fixture(scope="module")
def man(corpus):
    return read_manifest(corpus / "manifest.csv").set_index("video_id")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, corpus, man):
    """A synthetic chain on real corpus clips, written as the stages write it (parquet tables + clip mp4s).
    Known answers: ingest 6 videos (+1 rejected at ingest); select drops neg_classroom; segment drops whitelung and cuts
    6 clips from 4 videos; caption keeps all; filter_border removes linear__00; filter_ocr removes nothing; the flag-only
    filter_privacy flags convex__01 and could not score volpicelli_v1__01 (kept in its table, with a rejection row)."""
    d = tmp_path_factory.mktemp("chain")
    ingested = man.loc[VIDEOS].reset_index()
    selected = ingested[ingested.video_id != "neg_classroom"]
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
    cap = seg.assign(caption_medgen_brief=lambda x: "A " + x.modality + " clip.", caption_medgen_detailed=lambda x: "This clip shows " + x.modality + ".",
                     caption_ophora_refined=lambda x: "This clip shows " + x.modality + ".",
                     caption_bora_background=lambda x: "This clip shows " + x.modality + ". Its dataset: " + x.title,
                     camera_motion="static", caption_backend="grounded")
    rej = append_rejections(None, [rejection("bad_truncated", "ingest", "unreadable", "decoding failed"),
                                   rejection("neg_classroom", "select", "no_medical_keyword", "0 hits"),
                                   rejection("us_viral_whitelung_h1n1", "segment", "no_valid_segment", "only 5 frames")])
    border = cap[cap.clip_id != "us_normal_linear_181206__00"].assign(border_score=0.0, border_decision="keep", border_backend="canny")
    rej = append_rejections(rej, [rejection("us_normal_linear_181206", "filter_border", "black_border", "left bar", clip_id="us_normal_linear_181206__00")])
    rng = np.random.default_rng(0)
    ocr = border.assign(ocr_score=0.0, ocr_decision="keep", ocr_backend="easyocr",
                        aesthetic_score=rng.uniform(2, 6, len(border)).round(3), aesthetic_backend="proxy-a",
                        technical_score=rng.uniform(0.3, 0.7, len(border)).round(3), technical_backend="proxy-t")
    priv = ocr.assign(privacy_score=0.0, privacy_decision="keep", privacy_backend="haar")
    priv.loc[priv.clip_id == "us_normal_convex_181602__01", "privacy_decision"] = "flag"
    priv.loc[priv.clip_id == "us_covid_blines_volpicelli_v1__01", "privacy_decision"] = "error"
    priv["privacy_flag"] = priv.privacy_decision == "flag"
    rej = append_rejections(rej, [rejection("us_covid_blines_volpicelli_v1", "filter_privacy", "unreadable", "decode error",
                                            clip_id="us_covid_blines_volpicelli_v1__01")])
    tables = {"ingest": ingested, "select": selected, "segment": seg, "caption": cap, "filter_border": border,
              "filter_ocr": ocr, "filter_privacy": priv}
    for k, t in tables.items(): write_table(t, d / f"{k}.parquet")
    write_table(rej, d / "rejections.parquet")
    write_table(ocr[["clip_id", "aesthetic_score"]].rename(columns={"aesthetic_score": "score"}).assign(decision="keep"), d / "aesthetic_scores.parquet")
    write_table(ocr[["clip_id", "technical_score"]].rename(columns={"technical_score": "score"}).assign(decision="keep"), d / "technical_scores.parquet")
    return dict(dir=d, tables=tables, rej=rej, seg=seg)


def test_funnel_known_answers(chain):
    "A video rejected at the first stage is counted in; the flag-only stage's unscorable clip is its one removal."
    surv, _ = final_clips(chain["tables"]["filter_privacy"], chain["rej"])
    f = count_funnel(STAGES, surv, chain["rej"], flagged={"filter_privacy": 1},
                     actual={"ingest": len(chain["tables"]["ingest"]), "segment": len(chain["seg"])}).set_index("stage")
    assert f.n_in.tolist() == [7, 6, 5, 6, 6, 5, 5]
    assert f.n_removed.tolist() == [1, 1, 1, 0, 1, 0, 1]          # ocr removes nothing; privacy only its unscorable clip
    assert f.n_kept.tolist() == [6, 5, 4, 6, 5, 5, 4]             # segment: 4 of 5 videos gave clips ...
    assert f.n_out.tolist() == [6, 5, 6, 6, 5, 5, 4]              # ... 6 clips
    assert f.n_flagged.tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert (f.unaccounted == 0).all()
    assert f.loc["filter_border", "reasons"] == "black_border 1" and f.loc["filter_ocr", "reasons"] == ""
    assert f.loc["filter_ocr", "fraction_kept"] == 1.0


@pytest.fixture(scope="module")
def packaged(chain, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "medvideocap"
    surv, dropped = final_clips(chain["tables"]["filter_privacy"], chain["rej"])
    meta, bad = package_clips(surv, chain["dir"] / "clips", out, progress=False)
    write_metadata(meta, out)
    rej = append_rejections(chain["rej"], bad.to_dict("records"))
    fun = count_funnel(STAGES + ["dataset"], meta.rename(columns={"name": "clip_id"}), rej)
    (out / "README.md").write_text(dataset_card(meta, fun, collect_backends(chain["tables"]["filter_privacy"])))
    return dict(out=out, meta=meta, bad=bad, dropped=dropped, rej=rej)


def test_package_fields_and_files(packaged, man):
    meta, out = packaged["meta"], packaged["out"]
    assert packaged["dropped"] == ["us_covid_blines_volpicelli_v1__01"] and len(packaged["bad"]) == 0
    assert meta.name.tolist() == ["micro_zebrafish_ysl_nuclei_cil11813__00", "us_covid_blines_volpicelli_v1__00",
                                  "us_normal_convex_181602__00", "us_normal_convex_181602__01"]
    assert list(meta.columns) == list(METADATA_FIELDS)
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(Path(f).name for f in meta.file_name)  # nothing else
    assert (meta.resolution == meta.width.astype(str) + "x" + meta.height.astype(str)).all()
    assert np.allclose(meta.duration_s, meta.n_frames / meta.fps, atol=1e-3)   # measured on the copied file
    assert np.allclose(meta.duration_s[1:], 1.5, atol=0.13)   # the ultrasound clips; the 5-fps microscopy video gives fewer frames
    assert meta.license.tolist() == [man.license[v] for v in meta.video_id]          # licences carried unchanged
    assert meta.privacy_clean.tolist() == [True, True, True, False]
    assert meta.category.tolist() == ["microscopy", "ultrasound", "ultrasound", "ultrasound"]


def test_datasets_loads_both_configs(packaged, tmp_path):
    meta, out = packaged["meta"], packaged["out"]
    full, clean = load(out, "all", tmp_path), load(out, "privacy_clean", tmp_path)
    assert {"video", *[c for c in METADATA_FIELDS if c != "file_name"]} <= set(full.column_names)
    assert sorted(Path(v["path"]).name for v in clean["video"]) == sorted(Path(f).name for f in meta.file_name[meta.privacy_clean])
    assert all(clean["privacy_clean"]) and full["bitrate"] == meta.bitrate.tolist()


def test_card_names_noncommercial_clip_and_backends(chain, packaged, man):
    card = (packaged["out"] / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: privacy_clean" in card and "metadata_privacy_clean.csv" in card
    assert "Non-commercial licence" in card and "micro_zebrafish_ysl_nuclei_cil11813__00" in card
    assert "not for clinical use" in card.lower() and "`proxy-a`" in card and "`haar`" in card
    # the same dataset without the microscopy clip (rejected by a filter): the card says where its NC video left
    meta = packaged["meta"][packaged["meta"].category != "microscopy"]
    rej = append_rejections(packaged["rej"], [rejection("micro_zebrafish_ysl_nuclei_cil11813", "filter_ocr", "subtitles", "31 words",
                                                        clip_id="micro_zebrafish_ysl_nuclei_cil11813__00")])
    va = account_for_videos(chain["tables"]["ingest"].video_id, chain["seg"], meta.name, rej)
    f = count_funnel(STAGES + ["dataset"], meta.rename(columns={"name": "clip_id"}), rej)
    card = dataset_card(meta, f, {}, videos_acc=va, video_licences=man.license.to_dict())
    assert "No clip in this dataset carries a non-commercial licence" in card
    assert "`micro_zebrafish_ysl_nuclei_cil11813` (*CC BY-NC-SA 3.0" in card and "did not reach the dataset: clips_rejected" in card


def test_missing_clip_file_gets_a_row_and_the_run_goes_on(chain, tmp_path):
    clips = tmp_path / "clips"; shutil.copytree(chain["dir"] / "clips", clips)
    (clips / "us_normal_convex_181602__00.mp4").unlink()
    (clips / "micro_zebrafish_ysl_nuclei_cil11813__00.mp4").write_bytes(b"\x00" * 100)
    surv, _ = final_clips(chain["tables"]["filter_privacy"], chain["rej"])
    meta, bad = package_clips(surv, clips, tmp_path / "out", progress=False)
    # clip-level rows: both ids, the stage, a reason code and words a person can act on
    assert sorted(zip(bad.video_id, bad.clip_id)) == [("micro_zebrafish_ysl_nuclei_cil11813", "micro_zebrafish_ysl_nuclei_cil11813__00"),
                                                      ("us_normal_convex_181602", "us_normal_convex_181602__00")]
    assert set(bad.stage) == {"dataset"} and set(bad.reason) <= {"missing_file", "unreadable"} and bad.detail.str.len().min() > 5
    assert meta.name.tolist() == ["us_covid_blines_volpicelli_v1__00", "us_normal_convex_181602__01"]
    rej = append_rejections(chain["rej"], bad.to_dict("records"))
    f = count_funnel(STAGES + ["dataset"], meta.rename(columns={"name": "clip_id"}), rej, actual={"segment": len(chain["seg"])}).set_index("stage")
    assert (f.loc["dataset", "n_in"], f.loc["dataset", "n_removed"], f.loc["dataset", "n_kept"]) == (4, 2, 2)
    assert (f.unaccounted == 0).all()
    check_nothing_lost(account_for_videos(chain["tables"]["ingest"].video_id, chain["seg"], meta.name, rej),
                       account_for_clips(chain["seg"], meta.name, rej))


def test_same_inputs_same_bytes(chain, packaged, tmp_path):
    surv, _ = final_clips(chain["tables"]["filter_privacy"], chain["rej"])
    meta, _ = package_clips(surv, chain["dir"] / "clips", tmp_path / "again", progress=False)
    write_metadata(meta, tmp_path / "again")
    for n in ["metadata.csv", "metadata_privacy_clean.csv", *packaged["meta"].file_name]:
        assert sha256_file(tmp_path / "again" / n) == sha256_file(packaged["out"] / n), n


def test_paper_funnel_copy_and_comparison(root):
    ours = root / "resources" / "paper_tables" / "medgen_fig4_filter_funnel.csv"
    shared = root.parent / "shared" / "paper_tables" / "medgen_fig4_filter_funnel.csv"
    if shared.exists(): assert ours.read_bytes() == shared.read_bytes()
    assert paper_funnel_table(pd.read_csv(ours)).remaining.iloc[-1] == 55803
    fun = pd.DataFrame(dict(step=[1, 2, 3], stage=["segment", "filter_border", "filter_dynamics"], unit_in=["videos", "clips", "clips"],
                            n_in=[4, 10, 8], n_removed=[1, 2, 0], n_kept=[3, 8, 8], unit_out="clips", n_out=[10, 8, 8], n_flagged=0,
                            fraction_kept=[0.75, 0.8, 1.0]))
    cmp = compare_funnel(fun, pd.read_csv(ours), {"segment": "segmented clips (>480p)", "filter_border": "black border"})
    assert np.isnan(cmp.paper_fraction_kept[2])  # a stage the paper does not have
    with pytest.raises(KeyError, match="lacks"):
        compare_funnel(fun, pd.read_csv(ours), {"segment": "segmented clips (>480p)", "filter_border": "no such stage"})


def test_stage_notebook_on_the_synthetic_chain(chain, root, tmp_path):
    "nbs/pipeline/dataset.ipynb end to end (papermill) on the synthetic chain: dataset, figures, card, metrics."
    import papermill as pm
    d = chain["dir"]
    out, figs = tmp_path / "out", tmp_path / "figs"
    pm.execute_notebook(str(root / "nbs/pipeline/dataset.ipynb"), str(tmp_path / "run.ipynb"), kernel_name="python3", cwd=str(root),
                        progress_bar=False, parameters=dict(out_dir=str(out), figures_dir=str(figs), clips=str(d / "filter_privacy.parquet"),
                        rejections=str(d / "rejections.parquet"), clips_dir=str(d / "clips"), ingested=str(d / "ingest.parquet"),
                        segmented=str(d / "segment.parquet"), aesthetic_scores=str(d / "aesthetic_scores.parquet"),
                        technical_scores=str(d / "technical_scores.parquet")))
    m = json.loads((out / "metrics.json").read_text())
    assert (m["clips"], m["privacy_clean"], m["by_category"]) == (4, 3, {"microscopy": 1, "ultrasound": 3})
    assert m["sha256"]["metadata.csv"] == sha256_file(out / "medvideocap" / "metadata.csv")
    assert m["funnel"]["segment"] == dict(unit_in="videos", n_in=5, removed=1, kept=4, unit_out="clips", n_out=6, flagged=0)
    assert m["funnel"]["filter_privacy"]["flagged"] == 1 and m["funnel"]["dataset"]["n_out"] == 4
    assert m["videos_by_status"] == {"clips_rejected": 1, "in_dataset": 3, "video_rejected": 3}
    for n in ["medgen_fig4_funnel.png", "medgen_fig4_funnel.csv", "medgen_fig4_funnel.md", "medgen_fig5_statistics.png"]:
        assert (figs / n).stat().st_size > 500, n
    cmp = pd.read_csv(figs / "medgen_fig4_funnel.csv")
    assert cmp.stage.tolist()[-1] == "dataset"
    assert cmp.paper_remaining.dropna().astype(int).tolist() == [110969, 97766, 87344, 71042, 69044, 55803]
    assert "| filter_border" in (figs / "medgen_fig4_funnel.md").read_text()
    rej = pd.read_parquet(out / "rejections.parquet")
    assert len(rej) == len(chain["rej"]) and (out / "medvideocap" / "README.md").exists()
