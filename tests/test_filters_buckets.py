from reelflow.curation.buckets import aspect_bucket, bucket_name, duration_bucket
from reelflow.curation.filters import check_clip_duration, check_license, check_video
from reelflow.curation.policy import Policy, demo_policy


def row(w, h, d):
    return {"src_width": w, "src_height": h, "src_duration_s": d}


def test_license_reasons():
    p = Policy()
    assert check_license("CC0-1.0", p) is None
    assert check_license(" cc-by-4.0 ", p) is None
    assert check_license(None, p).startswith("license: none declared")
    assert check_license("CC-BY-NC-4.0", p) == "license: 'CC-BY-NC-4.0' not in allowlist"


def test_video_rules_name_rule_and_value():
    p = Policy()
    assert check_video(row(1920, 1080, 30), p) is None
    assert check_video(row(640, 360, 30), p) == "resolution: short_side=360<720"
    assert check_video(row(3000, 720, 30), p) == "aspect: 4.167>2.400"
    assert check_video(row(1280, 720, 2), p) == "duration: 2.00s<4.0s"
    assert check_video(row(176, 144, 4), demo_policy()) is None


def test_clip_duration_tolerates_frame_rounding():
    p = Policy()
    assert check_clip_duration(3.9995, p) is None
    assert check_clip_duration(3.5, p) == "clip_duration: 3.50s<4.0s"


def test_buckets():
    b = Policy().buckets
    assert aspect_bucket(1920, 1080, b) == "16x9"
    assert aspect_bucket(1080, 1920, b) == "9x16"
    assert aspect_bucket(640, 480, b) == "4x3"
    assert aspect_bucket(2400, 1000, b) == "16x9"
    assert duration_bucket(4.0, b) == "4-6s"
    assert duration_bucket(11.99, b) == "10-12s"
    assert duration_bucket(16.0, b) == "12-16s"
    a, d, name = bucket_name(256, 456, 1.9, demo_policy().buckets)
    assert name == "9x16_1p5-2p5s" and "." not in name and "/" not in name
