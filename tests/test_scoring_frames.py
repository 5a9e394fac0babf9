import numpy as np
import pytest

from reelflow.curation.scoring.frames import decode_for_analysis


def test_one_decode_gives_frames_at_analysis_rate_and_size(media):
    c = decode_for_analysis(media["cuts"].path, 0.5, 2.5, short_side=90, fps=8)
    assert c.frames.shape == (16, 90, 160, 3) and c.frames.dtype == np.uint8
    assert c.sample_rate == 16000 and c.audio.shape == (32000,)
    # the first shot's tone is 220 Hz: the spectrum peaks there
    spec = np.abs(np.fft.rfft(c.audio))
    assert abs(np.argmax(spec) * 16000 / len(c.audio) - 220) < 5


def test_video_without_audio_and_upper_rate_cap(media):
    c = decode_for_analysis(media["bikes"], fps=50)  # bikes is 25 fps: never duplicate frames
    assert c.audio is None and c.frames.shape[0] == 250 and min(c.frames.shape[1:3]) == 256


def _numbered_video(path, fps: float, audio: bool) -> None:
    """Lossless frames whose luma encodes their index (3 levels a frame), so a frame names itself;
    with ``audio``, a tone track too (ffmpeg places a clip's frames differently then)."""
    import subprocess

    tone = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=4"] if audio else []
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi",
                    "-i", f"color=black:size=64x64:rate={fps}:duration=4", *tone,
                    "-vf", "geq=lum='mod(N*3,250)':cb=128:cr=128", "-c:v", "libx264", "-crf", "0",
                    "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p",
                    *(["-c:a", "aac"] if audio else []), str(path)], check=True)


def _frame_numbers(frames: np.ndarray) -> list[int]:
    return [int(round(f[..., 0].mean() / 3)) for f in frames]


@pytest.mark.parametrize("src_fps", [15, 25, 29.97, 60])
@pytest.mark.parametrize("start,dur", [(0.3, 2.5), (0.51, 2.0), (1.01, 2.0)])
@pytest.mark.parametrize("audio", [False, True])
def test_a_span_samples_the_frames_its_extracted_clip_would_hold(tmp_path, src_fps, start, dur, audio):
    """Judge before encode: sampling a span of the source picks, frame for frame, what sampling
    the clip ffmpeg cuts from it (-ss/-t, fps=24, as the extract stage does) picks, whatever the
    source's rate and whether it has sound."""
    import subprocess

    src, clip = tmp_path / "src.mp4", tmp_path / "clip.mp4"
    _numbered_video(src, src_fps, audio)
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-ss", f"{start:.6f}", "-t", f"{dur:.6f}",
                    "-i", str(src), "-map", "0:v:0", "-vf", "fps=24", "-c:v", "libx264", "-crf", "0",
                    "-preset", "ultrafast", "-an", str(clip)], check=True)
    from_source = decode_for_analysis(src, start, start + dur, short_side=64, fps=8, clip_fps=24.0).frames
    from_clip = decode_for_analysis(clip, 0.0, dur, short_side=64, fps=8).frames
    assert len(from_source) == int(dur * 8)
    assert _frame_numbers(from_source) == _frame_numbers(from_clip)
    # and the check can fail: sampled on the source's own frame grid, not the clip's, it differs
    if src_fps == 25:
        own_grid = decode_for_analysis(src, start, start + dur, short_side=64, fps=8).frames
        assert _frame_numbers(own_grid) != _frame_numbers(from_clip)
