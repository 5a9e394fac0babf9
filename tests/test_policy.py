import pytest
import yaml

from reelflow.curation.policy import (
    DEFAULT_POLICY_FILE,
    Policy,
    PolicyError,
    demo_policy,
    load_policy,
    policy_from_dict,
)


def test_defaults_follow_movie_gen():
    p = Policy()
    assert (p.clips.min_seconds, p.clips.max_seconds) == (4.0, 16.0)
    assert p.video.min_short_side == 720
    assert len(p.buckets.aspect_ratios) == 5 and len(p.buckets.duration_edges_s) == 6
    assert p.allows_license("cc-by-4.0") and not p.allows_license("CC-BY-NC-4.0") and not p.allows_license(None)


def test_default_yaml_documents_exactly_the_defaults():
    assert load_policy(DEFAULT_POLICY_FILE) == Policy()


def test_demo_policy_loads():
    p = demo_policy()
    assert p.video.min_short_side == 0 and p.allows_license("BSD-3-Clause")


def test_unknown_key_is_an_error(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"clips": {"min_secs": 3}}))
    with pytest.raises(PolicyError, match=r"clips.min_secs: unknown key"):
        load_policy(f)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"clips": {"min_seconds": 10, "max_seconds": 5}}, "max_seconds"),
        ({"clips": {"min_seconds": -1}}, "clips.min_seconds"),
        ({"buckets": {"duration_edges_s": [4, 3]}}, "strictly increasing"),
        ({"clips": {"min_seconds": 1}, "buckets": {"duration_edges_s": [4, 8, 16]}}, "inside the duration buckets"),
        ({"limits": {"min_fps": 30, "max_fps": 24}}, "limits.max_fps"),
        ({"shots": {"detector": "magic"}}, "shots.detector"),
    ],
)
def test_invalid_values_name_the_field(raw, match):
    with pytest.raises(PolicyError, match=match):
        policy_from_dict(raw)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clips: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(PolicyError, match="mapping"):
        load_policy(lst)


def test_partial_blocks_keep_the_defaults_they_do_not_name():
    p = policy_from_dict({"scoring": {"text": {"score_only": True}}, "clips": {"max_seconds": 12}})
    assert p.scoring.text.max == 0.6 and p.scoring.text.score_only
    assert p.clips.min_seconds == 4.0 and p.clips.max_seconds == 12
    with pytest.raises(PolicyError, match="scoring.text.maximum: unknown key"):
        policy_from_dict({"scoring": {"text": {"maximum": 1}}})


def test_derived_defaults_follow_the_clip_range():
    """Changing the clip range alone is a valid policy: bucket edges and the shortest source follow."""
    p = policy_from_dict({"clips": {"min_seconds": 2}})
    assert p.buckets.duration_edges_s == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0]
    assert p.video.min_duration_s == 2.0
    p = policy_from_dict({"clips": {"min_seconds": 5, "max_seconds": 9}})
    assert p.buckets.duration_edges_s == [5.0, 6.0, 8.0, 9.0]
    assert Policy().buckets.duration_edges_s == [4.0, 6.0, 8.0, 10.0, 12.0, 16.0]
    # Explicit settings win over derivation.
    p = policy_from_dict({"clips": {"min_seconds": 2}, "video": {"min_duration_s": 10}})
    assert p.video.min_duration_s == 10
    # A stored (fully explicit) policy reads back equal, so a resume compares like with like.
    assert Policy.model_validate(p.model_dump(mode="json")) == p
