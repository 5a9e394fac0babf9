"""Caption text in Movie Gen's shape: ``FPS-<n>`` token, camera-motion prefix, description.

Movie Gen prepends an FPS token (e.g. ``FPS-16``) to every caption and, when its camera-motion
classifier is confident, a camera-motion prefix; the rest is a ~100-word description written by
LLaMa3-Video. Here the description comes from a captioner (``captioner.py``): either a template
over what is known about the clip (source title and description, CLIP zero-shot tags, the speech
transcript), built by ``template_description``, or a vision-language model's output.

Example::

    FPS-24 Camera pans left. Big Buck Bunny (Blender Foundation), opening. It shows a forest and
    a cartoon animation. Speech: "Hello there..."

Units: ``fps`` in frames per second (rounded to an integer for the token); lengths in
whitespace-separated words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Movie Gen's prefix phrases are not published; these are short, literal and consistent, so a
# model learns "camera pans left" as a control phrase.
CAMERA_PHRASES: dict[str, str] = {
    "static": "Static shot.",
    "pan_left": "Camera pans left.",
    "pan_right": "Camera pans right.",
    "tilt_up": "Camera tilts up.",
    "tilt_down": "Camera tilts down.",
    "zoom_in": "Camera zooms in.",
    "zoom_out": "Camera zooms out.",
    "shaky": "Shaky handheld camera.",
}

_URL = re.compile(r"https?://\S+|www\.\S+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class CaptionConfig:
    min_camera_confidence: float = 0.5  # camera prefix only at or above this confidence (Movie Gen: confident labels)
    max_words: int = 120  # description cap, words (Movie Gen's captions are ~100 words)
    max_source_words: int = 60  # cap for the source title + description part
    max_transcript_words: int = 40  # cap for the quoted speech
    max_tags: int = 5  # zero-shot tags named at most
    min_tag_prob: float = 0.0  # tags below this probability are not named (the tagger has its own cut)
    empty_description: str = "A video clip."  # when nothing at all is known about the clip


def fps_token(fps: float) -> str:
    """Movie Gen's frame-rate token, ``FPS-<n>`` with ``n`` the rounded frame rate (at least 1)."""
    return f"FPS-{max(1, int(round(float(fps))))}"


def camera_prefix(label: str | None, confidence: float = 1.0, min_confidence: float = 0.5) -> str:
    """The camera-motion sentence for a confident label, else "" (``none``/unknown labels too)."""
    if not label or label not in CAMERA_PHRASES or confidence < min_confidence:
        return ""
    return CAMERA_PHRASES[label]


def clean_text(text: str | None) -> str:
    """One line of plain text: URLs dropped, whitespace collapsed."""
    if not text:
        return ""
    return _SPACE.sub(" ", _URL.sub(" ", str(text))).strip()


def truncate_words(text: str, max_words: int) -> str:
    """``text`` cut to ``max_words`` words, with "..." marking the cut."""
    words = text.split()
    if len(words) <= max_words:
        return text.strip()
    return " ".join(words[:max(0, max_words)]).rstrip(",;:") + "..."


def sentence(text: str) -> str:
    """``text`` as a sentence: capitalised first letter, closing punctuation."""
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?…\"'" else text + "."


def join_phrases(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def speech_sentence(transcript: str | None, max_words: int = 40) -> str:
    """``Speech: "<transcript>"`` (cut to ``max_words``), or "" without speech."""
    t = clean_text(transcript).replace('"', "'")
    return f'Speech: "{truncate_words(t, max_words)}"' if t else ""


def template_description(
    title: str | None = None,
    description: str | None = None,
    tags: list[tuple[str, float]] | list[str] | None = None,
    transcript: str | None = None,
    cfg: CaptionConfig = CaptionConfig(),
) -> str:
    """A readable paragraph from what is known about a clip: the source's title and description,
    the named tags (zero-shot, best first) and the speech. Never invents content; with nothing
    known it is ``cfg.empty_description``."""
    parts: list[str] = []
    t, d = clean_text(title), clean_text(description)
    if d and t and (d.lower().startswith(t.lower()) or t.lower() in d.lower()):
        t = ""  # the description already says it
    source = " ".join(sentence(x) for x in (t, d) if x)
    if source:
        parts.append(truncate_words(source, cfg.max_source_words))
    names = []
    for tag in tags or []:
        name, prob = (tag, 1.0) if isinstance(tag, str) else (tag[0], float(tag[1]))
        if prob >= cfg.min_tag_prob and name not in names:
            names.append(name)
    if names:
        parts.append(sentence("It shows " + join_phrases(names[:cfg.max_tags])))
    speech = speech_sentence(transcript, cfg.max_transcript_words)
    if speech:
        parts.append(speech)
    text = " ".join(parts) if parts else cfg.empty_description
    return truncate_words(text, cfg.max_words)


def assemble_caption(
    fps: float,
    description: str,
    camera_label: str | None = None,
    camera_confidence: float = 0.0,
    cfg: CaptionConfig = CaptionConfig(),
) -> str:
    """``FPS-<n>`` + camera prefix (confident labels only) + description (cut to ``cfg.max_words``)."""
    parts = [
        fps_token(fps),
        camera_prefix(camera_label, camera_confidence, cfg.min_camera_confidence),
        truncate_words(clean_text(description), cfg.max_words),
    ]
    return " ".join(p for p in parts if p)
