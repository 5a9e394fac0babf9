"""Untrusted inputs, item by item (issue #11): licence claims that disagree, hostile sidecars and
manifests, uris outside the allowed roots, transient vs permanent errors, timeouts, redaction."""

from __future__ import annotations

import csv
import json
import threading
import time

import botocore.exceptions as be
import pytest
from hostile_media import conflicting_licence_manifest, huge_sidecar, nested_json_sidecar

from reelflow.curation.failures import ItemTimeout, deadline, describe, is_transient, redact
from reelflow.curation.policy import Policy, policy_from_dict
from reelflow.curation.sources import SourceError, discover, ingest_rows
from reelflow.curation.storage import Storage


def _by_uri(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["source_uri"], []).append(r)
    return out


@pytest.mark.parametrize("reverse", [False, True], ids=["licensed-first", "unlicensed-first"])
@pytest.mark.parametrize("second", [None, "All-Rights-Reserved"])
def test_conflicting_licence_claims_reject_every_row_in_either_order(tmp_path, media, reverse, second):
    video = tmp_path / "a.mp4"
    video.write_bytes(media["cuts"].path.read_bytes())
    manifest = conflicting_licence_manifest(tmp_path / "m.csv", video, first="CC-BY-4.0", second=second, reverse=reverse)
    rows = ingest_rows(Storage(), str(manifest), "r", Policy())
    assert len(rows) == 2 and {r["status"] for r in rows} == {"rejected"}
    other = second or "none"
    expected = " vs ".join(sorted(["CC-BY-4.0", other], key=str.lower))
    assert {r["reason"] for r in rows} == {f"license: conflicting claims ({expected})"}
    assert len({r["item_id"] for r in rows}) == 2


def test_identical_repeated_rows_are_still_just_duplicates(tmp_path, media):
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["uri", "license"], [str(media["cuts"].path), "CC-BY-4.0"], [str(media["cuts"].path), "cc-by-4.0"]])
    first, again = ingest_rows(Storage(), str(manifest), "r", Policy())
    assert first["status"] == "ok"
    assert again["status"] == "rejected" and again["reason"].startswith("duplicate uri")


def test_sidecar_and_root_manifest_that_disagree_reject_the_file(tmp_path, media):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (src / name).write_bytes(media["cuts"].path.read_bytes())
    (src / "manifest.csv").write_text("uri,license\na.mp4,CC0-1.0\nb.mp4,CC0-1.0\nc.mp4,CC0-1.0\n")
    (src / "a.json").write_text(json.dumps({"license": "CC-BY-NC-4.0"}))  # disagrees
    (src / "b.json").write_text(json.dumps({"license": "cc0-1.0"}))  # agrees
    (src / "c.mp4").write_bytes(media["cuts"].path.read_bytes())
    (src / "c.json").write_text(json.dumps({"title": "C"}))  # a sidecar without a licence claims none
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in ingest_rows(Storage(), str(src), "r", Policy())}
    assert rows["a.mp4"]["status"] == "rejected"
    assert rows["a.mp4"]["reason"] == "license: conflicting claims (CC-BY-NC-4.0 vs CC0-1.0)"
    assert rows["b.mp4"]["status"] == "ok"
    assert rows["c.mp4"]["status"] == "ok" and rows["c.mp4"]["license"] == "CC0-1.0" and rows["c.mp4"]["title"] == "C"


def test_hostile_sidecars_reject_their_video_and_ingest_goes_on(tmp_path, media):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("deep.mp4", "big.mp4", "list.mp4", "dict.mp4", "fine.mp4"):
        (src / name).write_bytes(media["cuts"].path.read_bytes())
    nested_json_sidecar(src / "deep.json")  # json.loads raises RecursionError on it
    huge_sidecar(src / "big.json", mbytes=2)  # over the 1.5 MiB limit below; deep.json (1.3 MB) is under it
    (src / "list.json").write_text("[1, 2, 3]")
    (src / "dict.json").write_text(json.dumps({"license": {"id": "CC0-1.0"}}))
    shallow_but_deep = {"license": "CC0-1.0", "x": {"a": {"b": {"c": {"d": {}}}}}}
    (src / "fine.json").write_text(json.dumps(shallow_but_deep))
    policy = policy_from_dict({"limits": {"max_sidecar_bytes": 3 << 20 >> 1, "max_json_depth": 8}})
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in ingest_rows(Storage(), str(src), "r", policy)}
    assert rows["deep.mp4"]["status"] == "rejected" and "nested deeper than limits.max_json_depth" in rows["deep.mp4"]["reason"]
    assert "over limits.max_sidecar_bytes" in rows["big.mp4"]["reason"]
    assert "must hold a JSON object" in rows["list.mp4"]["reason"]
    assert "license must be text" in rows["dict.mp4"]["reason"]
    assert rows["fine.mp4"]["status"] == "ok"
    too_deep = policy_from_dict({"limits": {"max_json_depth": 3}})
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in ingest_rows(Storage(), str(src), "r", too_deep)}
    assert "nested deeper" in rows["fine.mp4"]["reason"]


def test_an_oversized_manifest_is_a_source_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,license\n" + "a.mp4,CC0-1.0\n" * 1000)
    policy = policy_from_dict({"limits": {"max_manifest_bytes": 1000}})
    with pytest.raises(SourceError, match="over limits.max_manifest_bytes"):
        discover(Storage(), str(manifest), policy.limits)


def test_uris_outside_allowed_roots_or_with_other_schemes_are_rejected(tmp_path, media):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "in.mp4").write_bytes(media["cuts"].path.read_bytes())
    (outside / "secret.mp4").write_bytes(media["cuts"].path.read_bytes())
    (allowed / "link.mp4").symlink_to(outside / "secret.mp4")  # escapes through a symlink
    manifest = tmp_path / "m.csv"
    rows = [["uri", "license"], [str(allowed / "in.mp4"), "CC0-1.0"], [str(outside / "secret.mp4"), "CC0-1.0"],
            [str(allowed / "link.mp4"), "CC0-1.0"], [str(allowed / ".." / "outside" / "secret.mp4") + "?x", "CC0-1.0"],
            ["http://user:hunter2pass@127.0.0.1:9/v.mp4", "CC0-1.0"], ["s3://other-bucket/v.mp4", "CC0-1.0"],
            ["s3://media-bucket/ok/v.mp4", "CC0-1.0"], ["s3://media-bucket/okay-not/v.mp4", "CC0-1.0"]]
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    policy = policy_from_dict({"sources": {"allow": [str(allowed), "s3://media-bucket/ok"]}})
    got = ingest_rows(Storage(), str(manifest), "r", policy)
    status = [(r["status"], r["reason"]) for r in got]
    assert status[0] == ("ok", None)
    for i in (1, 2, 3, 5, 7):
        assert status[i] == ("rejected", "source: outside the allowed roots (sources.allow)"), got[i]
    assert status[4] == ("rejected", "source: http:// uris are not read (only local paths and s3://)")
    assert status[6] == ("ok", None)
    # A password in a uri never reaches the ledger.
    assert "hunter2pass" not in json.dumps(got) and got[4]["source_uri"] == "http://***@127.0.0.1:9/v.mp4"
    # Without an allowlist any local path or s3:// is fine, but never another scheme.
    got = ingest_rows(Storage(), str(manifest), "r", Policy())
    assert [r["status"] for r in got] == ["ok", "ok", "ok", "ok", "rejected", "ok", "ok", "ok"]


def _client_error(code: str, status: int) -> be.ClientError:
    return be.ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("exc, transient", [
    (_client_error("SlowDown", 503), True),
    (_client_error("503", 503), True),  # a HEAD has no body: only the status
    (_client_error("InternalError", 500), True),
    (_client_error("NoSuchKey", 404), False),
    (_client_error("AccessDenied", 403), False),
    (be.ConnectionClosedError(endpoint_url="http://127.0.0.1"), True),
    (be.ReadTimeoutError(endpoint_url="http://127.0.0.1"), True),
    (ConnectionResetError(104, "reset"), True),
    (ItemTimeout(3, "probe"), False),
    (ValueError("corrupt"), False),
    (RuntimeError("wrapped"), False),
])
def test_transient_or_permanent(exc, transient):
    assert is_transient(exc) is transient


def test_a_transient_cause_makes_a_wrapping_error_transient():
    try:
        try:
            raise _client_error("SlowDown", 503)
        except be.ClientError as e:
            raise RuntimeError("download failed") from e
    except RuntimeError as wrapped:
        assert is_transient(wrapped)


def _spin(seconds: float) -> int:
    """A decode loop that never returns on its own (Python between iterations, like PyAV's)."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        n += 1
    return n


def test_deadline_stops_a_spinning_loop_in_the_main_thread():
    t0 = time.monotonic()
    with pytest.raises(ItemTimeout, match=r"timeout after 0.3 s \(decode\)"):
        with deadline(0.3, "decode"):
            _spin(30)
    assert time.monotonic() - t0 < 5
    with deadline(5, "fast"):
        assert _spin(0.05) > 0  # finishes in time: nothing raised, and nothing fires later
    _spin(0.2)


def test_deadline_stops_a_spinning_loop_in_another_thread():
    """Ray actors run items off the main thread: the watchdog raises there instead of SIGALRM."""
    out: dict = {}

    def work() -> None:
        try:
            with deadline(0.3, "actor"):
                _spin(30)
        except ItemTimeout as e:
            out["error"] = str(e)
        try:
            with deadline(2, "fast"):
                _spin(0.05)
            _spin(0.3)  # a cancelled watchdog never fires afterwards
            out["after"] = "clean"
        except ItemTimeout as e:  # pragma: no cover - the failure this guards against
            out["after"] = f"leaked: {e}"

    t = threading.Thread(target=work)
    t.start()
    t.join(20)
    assert out == {"error": "timeout after 0.3 s (actor)", "after": "clean"}


def _library_that_wraps_errors() -> None:
    """Like onnxruntime: catches whatever is raised inside it and raises its own error type."""
    try:
        _spin(30)
    except BaseException as e:
        raise RuntimeError(f"Traceback (most recent call last):\n  File 'x.py'\n{type(e).__name__}: {e}") from None


def test_a_timeout_wrapped_by_a_library_is_still_a_timeout():
    with pytest.raises(ItemTimeout, match="timeout after 0.3 s"):
        with deadline(0.3, "ocr"):
            _library_that_wraps_errors()
    out: dict = {}

    def work() -> None:
        try:
            with deadline(0.3, "ocr"):
                _library_that_wraps_errors()
        except ItemTimeout as e:
            out["error"] = str(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(20)
    assert out == {"error": "timeout after 0.3 s (ocr)"}


def test_describe_gives_one_telling_line():
    wrapped = RuntimeError("Traceback (most recent call last):\n  File 'a.py', line 1\nValueError: bad frame")
    assert describe(wrapped) == "RuntimeError: ValueError: bad frame"
    assert describe(ValueError("x" * 1000)).endswith("...") and len(describe(ValueError("x" * 1000))) == 400
    assert describe(ItemTimeout(3, "probe")) == "timeout after 3 s (probe)"


def test_redact_removes_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")
    text = ("GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAX%2F2026&X-Amz-Signature=abcdef0123 failed; "
            "rtmp://bob:pa55word@10.0.0.1/live; key wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY; aws_secret_access_key=zzz")
    out = redact(text)
    for secret in ("abcdef0123", "AKIAX", "pa55word", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "zzz"):
        assert secret not in out
    assert "rtmp://***@10.0.0.1/live" in out and redact(None) is None


def test_credentials_never_travel_in_a_ray_runtime_env(monkeypatch):
    """Training workers get a runtime_env (stored by the cluster, shown by its dashboard): no keys."""
    from reelflow.training.schedule import load_schedule
    from reelflow.training.trainer import _worker_env

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-value-that-must-stay-home")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-that-must-stay-home")
    env = _worker_env(load_schedule("tiny"))
    assert not {k for k in env if k.startswith("AWS_") and ("KEY" in k or "TOKEN" in k or "SECRET" in k)}
    assert not {v for v in env.values() if "must-stay-home" in v or v.startswith("AKIA")}


def test_worker_cache_keeps_under_its_limit_oldest_first(tmp_path):
    import os

    from reelflow.curation.storage import trim_cache

    for i, name in enumerate(("old.mp4", "mid.mp4", "new.mp4")):
        p = tmp_path / name
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1000 + i, 1000 + i))
    (tmp_path / ".cut.mp4.part-999999999").write_bytes(b"x")  # a dead worker's partial download
    trim_cache(tmp_path, max_bytes=2000, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.mp4", "new.mp4"]
    (tmp_path / "newest.mp4").write_bytes(b"x" * 1000)
    trim_cache(tmp_path, max_bytes=1000)  # scanned just now: throttled, nothing removed
    assert len(list(tmp_path.iterdir())) == 3
    trim_cache(tmp_path, max_bytes=1000, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["newest.mp4"]
