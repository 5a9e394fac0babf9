import random

from reelflow.curation.clip_plan import plan_clips
from reelflow.curation.policy import ClipPolicy


def test_short_shots_are_rejected_with_reason():
    cfg = ClipPolicy(min_seconds=4, max_seconds=16, trim_shot_edges_s=0)
    out = plan_clips([(0, 3.0), (3.0, 10.0)], cfg)
    assert out[0].reason == "shot_too_short: 3.00s<4.0s"
    assert out[1].reason is None and (out[1].start_s, out[1].end_s) == (3.0, 10.0)


def test_long_shot_gives_one_centred_clip_by_default():
    cfg = ClipPolicy(min_seconds=4, max_seconds=16, trim_shot_edges_s=0)
    (c,) = plan_clips([(0.0, 40.0)], cfg)
    assert (c.start_s, c.end_s) == (12.0, 28.0)


def test_tiling_when_several_clips_per_shot_allowed():
    cfg = ClipPolicy(min_seconds=4, max_seconds=10, max_per_shot=5, trim_shot_edges_s=0)
    clips = plan_clips([(0.0, 25.0)], cfg)
    assert [(c.start_s, c.end_s) for c in clips] == [(0, 10), (10, 20), (20, 25)]
    cfg = ClipPolicy(min_seconds=6, max_seconds=10, max_per_shot=5, trim_shot_edges_s=0)
    assert [(c.start_s, c.end_s) for c in plan_clips([(0.0, 25.0)], cfg)] == [(0, 10), (10, 20)]


def test_trim_only_at_cuts_and_skip_video_start():
    cfg = ClipPolicy(min_seconds=1, max_seconds=16, trim_shot_edges_s=0.5, skip_video_start_s=2)
    a, b = plan_clips([(0.0, 6.0), (6.0, 12.0)], cfg)
    assert (a.start_s, a.end_s) == (2.0, 5.5)
    assert (b.start_s, b.end_s) == (6.5, 12.0)


def test_clips_never_cross_a_cut_and_respect_limits():
    rng = random.Random(0)
    for _ in range(300):
        cuts = sorted(rng.uniform(0, 120) for _ in range(rng.randint(0, 12)))
        bounds = [0.0, *cuts, 120.0]
        shots = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        cfg = ClipPolicy(min_seconds=rng.choice([2, 4]), max_seconds=rng.choice([8, 16]),
                         max_per_shot=rng.randint(1, 4), trim_shot_edges_s=rng.choice([0, 0.1]))
        plan = plan_clips(shots, cfg)
        assert {c.shot_index for c in plan} == set(range(len(shots)))  # every shot accounted for
        for c in plan:
            a, b = shots[c.shot_index]
            if c.reason is None:
                assert a - 1e-3 <= c.start_s < c.end_s <= b + 1e-3
                assert cfg.min_seconds - 1e-3 <= c.duration_s <= cfg.max_seconds + 1e-3
            else:
                assert c.reason.startswith("shot_too_short")
