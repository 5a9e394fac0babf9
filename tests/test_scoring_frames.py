import numpy as np

from curation.scoring.frames import decode_for_analysis


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
