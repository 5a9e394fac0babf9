"""The hostile-input fixtures make what they claim (tests/hostile_media.py), and the fault-injecting
S3 proxy (tests/s3_proxy.py) works with boto3 and injects the faults it promises."""

from __future__ import annotations

import csv
import json
import subprocess
import time

import av
import boto3
import botocore.exceptions
import hostile_media as hm
import pytest
from botocore.config import Config
from s3_proxy import FaultyS3Proxy

from reelflow.curation import samples


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    base = samples.make_cut_video(root / "base.mp4", [2.0], size=(160, 90), audio=False).path
    return {
        "root": root,
        "base": base,
        "ts": hm.streamable_copy(base, root / "base.ts"),
        "faststart": hm.streamable_copy(base, root / "sub" / "faststart.mp4"),
    }


def _frames(path, **open_kw) -> int:
    with av.open(str(path), **open_kw) as c:
        return sum(1 for _ in c.decode(video=0))


# -- media -------------------------------------------------------------------------------------

def test_high_fps_video(tmp_path):
    p = hm.high_fps_video(tmp_path / "hf.mp4")
    with av.open(str(p)) as c:
        vs = c.streams.video[0]
        assert abs(float(vs.average_rate) - 2000) < 1
        assert abs(float(vs.duration * vs.time_base) - 3.0) < 0.01
        assert vs.frames == 6000
        assert (vs.width, vs.height) == (160, 90)
        assert next(c.decode(vs)).width == 160


@pytest.mark.parametrize("degrees, expected", [(45.0, 45), (-45.0, -45), (30.0, 29), (90.0, 90)])
def test_rotated_video_reports_the_angle(tmp_path, degrees, expected):
    p = hm.rotated_video(tmp_path / "rot.mp4", degrees=degrees, seconds=1.0)
    with av.open(str(p)) as c:
        vs = c.streams.video[0]
        first = next(c.decode(vs))
        assert (vs.width, vs.height) == (320, 180)
    # PyAV 18: counter-clockwise degrees, an int truncated toward zero (30 -> 29.9999 -> 29).
    assert first.rotation == expected
    assert any(sd.type.name == "DISPLAYMATRIX" for sd in first.side_data)
    if degrees % 90:
        assert first.rotation % 90 != 0


def test_rotated_video_keeps_audio(tmp_path):
    p = hm.rotated_video(tmp_path / "rot_audio.mp4", degrees=-45, seconds=1.0, audio=True)
    with av.open(str(p)) as c:
        assert len(c.streams.audio) == 1
        assert next(c.decode(video=0)).rotation == -45


def test_huge_dimensions_video(tmp_path):
    p = hm.huge_dimensions_video(tmp_path / "huge.mkv")
    with av.open(str(p)) as c:
        vs = c.streams.video[0]
        assert (vs.width, vs.height) == (16400, 16)
        frame = next(c.decode(vs))
    assert (frame.width, frame.height) == (16400, 16)
    assert vs.width > 16384


def test_slow_decode_video(tmp_path):
    t0 = time.perf_counter()
    p = hm.slow_decode_video(tmp_path / "slow.mkv")
    made_s = time.perf_counter() - t0
    assert p.stat().st_size < 16 * 1024 * 1024

    t0 = time.perf_counter()
    with av.open(str(p)) as c:
        first = next(c.decode(video=0))
    first_s = time.perf_counter() - t0
    assert (first.width, first.height) == (2560, 1440)

    t0 = time.perf_counter()
    with av.open(str(p)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "NONE"
        vs.codec_context.thread_count = 1
        n = sum(1 for _ in c.decode(vs))
    full_s = time.perf_counter() - t0
    assert n == 150
    # ~5.7 s on the idle 2-core dev machine; loose bounds so that a faster CPU passes too.
    assert full_s >= 2.0, full_s
    assert full_s > 10 * first_s and full_s > 3 * made_s, (made_s, first_s, full_s)


def test_nested_json_sidecar_overflows_the_parser(tmp_path):
    p = hm.nested_json_sidecar(tmp_path / "deep.mp4.json")
    with pytest.raises(RecursionError):
        json.loads(p.read_text())


def test_huge_sidecar_is_valid_json(tmp_path):
    p = hm.huge_sidecar(tmp_path / "big.mp4.json", mbytes=5)
    assert p.stat().st_size >= 5 * 1024 * 1024
    meta = json.loads(p.read_text())
    assert meta["license"] == "CC0-1.0" and len(meta["description"]) >= 5 * 1024 * 1024 - 100


def test_truncated_copy(hostile, tmp_path):
    src = hostile["base"]
    p = hm.truncated_copy(src, tmp_path / "half.mp4")
    data, full = p.read_bytes(), src.read_bytes()
    assert len(data) == len(full) // 2 and full.startswith(data)
    with pytest.raises(av.error.InvalidDataError):  # moov at the end: cut off
        av.open(str(p))


@pytest.mark.parametrize("reverse", [False, True])
def test_conflicting_licence_manifest(hostile, reverse):
    p = hm.conflicting_licence_manifest(hostile["root"] / "manifest.csv", hostile["base"], reverse=reverse)
    rows = list(csv.DictReader(p.open()))
    assert [r["uri"] for r in rows] == ["base.mp4", "base.mp4"]
    assert [r["license"] for r in rows] == (["", "CC-BY-4.0"] if reverse else ["CC-BY-4.0", ""])


# -- playlists: what PyAV (FFmpeg 8.1 libraries) does with nested references -------------------

def test_hls_playlist_is_followed_unless_whitelisted(hostile, tmp_path):
    target = hostile["ts"]
    n = _frames(target)
    p = hm.hls_playlist(tmp_path / "evil.m3u8", target)
    with av.open(str(p)) as c:
        assert c.format.name == "hls"
    assert _frames(p) == n  # the playlist's frames are the other file's
    assert _frames(hm.hls_playlist(tmp_path / "evil2.m3u8", hostile["faststart"])) == n
    with pytest.raises(av.error.ArgumentError):  # "Format not on whitelist"
        av.open(str(p), options=hm.SAFE_OPEN_OPTIONS)
    with pytest.raises(av.error.ArgumentError):
        av.open(str(p), container_options=hm.SAFE_OPEN_OPTIONS)
    # The whitelist is inherited by the nested open: hls itself allowed, its mp4 segment is not.
    with pytest.raises(av.error.FFmpegError):
        _frames(hm.hls_playlist(tmp_path / "evil3.m3u8", hostile["faststart"]),
                options={"format_whitelist": "hls"})
    # protocol_whitelist=file alone does not stop a playlist of local files.
    assert _frames(p, options={"protocol_whitelist": "file"}) == n
    # FFmpeg 8.1 detects HLS by extension only: the same playlist named .mp4 is not followed.
    with pytest.raises(av.error.InvalidDataError):
        av.open(str(hm.hls_playlist(tmp_path / "evil.mp4", target)))


def test_dash_manifest_cannot_be_opened_by_pyav(hostile, tmp_path):
    p = hm.dash_manifest(tmp_path / "evil.mpd", hostile["faststart"])
    assert "<BaseURL>file://" in p.read_text()
    # PyAV 18.1's FFmpeg is built without the dash demuxer (libxml2): nothing nested is opened.
    assert not av.format.ContainerFormat("dash").is_input
    with pytest.raises(av.error.InvalidDataError):
        av.open(str(p))
    with pytest.raises(av.error.FFmpegError):
        av.open(str(p), options=hm.SAFE_OPEN_OPTIONS)


def test_concat_list_is_followed_when_relative(hostile):
    root = hostile["root"]
    n = _frames(hostile["faststart"])
    rel = hm.concat_list(root / "concat.mp4", hostile["faststart"])  # named .mp4 on purpose
    assert rel.read_text().splitlines()[1] == "file 'sub/faststart.mp4'"
    with av.open(str(rel)) as c:
        assert c.format.name == "concat"
    assert _frames(rel) == n
    with pytest.raises(av.error.ArgumentError):
        av.open(str(rel), options=hm.SAFE_OPEN_OPTIONS)
    absolute = hm.concat_list(root / "concat_abs.mp4", hostile["faststart"], relative=False)
    with pytest.raises(av.error.PermissionError):  # concat's safe=1: "Unsafe file name"
        av.open(str(absolute))


def test_safe_open_options_keep_ordinary_media_working(hostile, tmp_path):
    for p in (hostile["base"], hostile["ts"], hm.huge_dimensions_video(tmp_path / "h.mkv")):
        assert _frames(p, options=hm.SAFE_OPEN_OPTIONS) > 0


def test_ffmpeg_cli_follows_playlists_unless_whitelisted(hostile, tmp_path):
    """The ffmpeg 5.1 CLI (curation.extract) has the dash demuxer and no HLS extension check."""
    target = hostile["faststart"]
    cases = {
        "hls_as_mp4": hm.hls_playlist(tmp_path / "hls.mp4", target),
        "dash": hm.dash_manifest(tmp_path / "m.mpd", target),
        "concat": hm.concat_list(hostile["root"] / "cat.mp4", target),
    }
    base = ["ffprobe", "-hide_banner", "-v", "error", "-show_entries", "format=format_name", "-of", "csv=p=0"]
    for name, p in cases.items():
        plain = subprocess.run([*base, str(p)], capture_output=True, text=True, timeout=60)
        assert plain.returncode == 0 and plain.stdout.strip() in ("hls", "dash", "concat"), (name, plain)
        safe = subprocess.run([*base, "-protocol_whitelist", "file", "-format_whitelist", hm.SAFE_FORMATS, str(p)],
                              capture_output=True, text=True, timeout=60)
        assert safe.returncode != 0 and "not on whitelist" in safe.stderr, (name, safe)


# -- the fault-injecting S3 proxy --------------------------------------------------------------

BUCKET = "hostile"
NO_RETRY = Config(retries={"max_attempts": 1})  # botocore: 1 retry, so 2 attempts per call


@pytest.fixture(scope="module")
def proxy(s3_server):
    with FaultyS3Proxy(s3_server) as p:
        boto3.client("s3", endpoint_url=p.url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield p


@pytest.fixture
def s3(proxy):
    proxy.clear()
    yield boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1", config=NO_RETRY)
    proxy.clear()


@pytest.mark.integration
def test_proxy_roundtrip_is_path_style(proxy, s3, hostile):
    data = hostile["base"].read_bytes()
    s3.put_object(Bucket=BUCKET, Key="rt/a.mp4", Body=data)
    assert s3.get_object(Bucket=BUCKET, Key="rt/a.mp4")["Body"].read() == data
    assert s3.head_object(Bucket=BUCKET, Key="rt/a.mp4")["ContentLength"] == len(data)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="rt/")["Contents"]] == ["rt/a.mp4"]
    assert ("GET", f"/{BUCKET}/rt/a.mp4", "200") in proxy.log  # path-style through an IP endpoint


@pytest.mark.integration
def test_proxy_multipart_upload_and_download(proxy, s3, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (20 * 1024 * 4))  # 20 MiB: multipart both ways
    s3.upload_file(str(big), BUCKET, "rt/big.bin")
    s3.download_file(BUCKET, "rt/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()


@pytest.mark.integration
def test_proxy_throttle_answers_slowdown(proxy, s3):
    s3.put_object(Bucket=BUCKET, Key="th/a.bin", Body=b"x" * 1000)
    proxy.throttle("th/a.bin")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="th/a.bin")
    assert e.value.response["Error"]["Code"] == "SlowDown"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=BUCKET, Key="th/a.bin")
    assert e.value.response["Error"]["Code"] == "503"  # a HEAD answer has no body
    assert proxy.counts[("throttle", "th/a.bin")] == 4  # 2 calls x 2 attempts
    s3.put_object(Bucket=BUCKET, Key="th/a.bin", Body=b"y")  # PUTs are not throttled
    proxy.clear()
    assert s3.get_object(Bucket=BUCKET, Key="th/a.bin")["Body"].read() == b"y"


@pytest.mark.integration
def test_proxy_throttle_times_lets_the_third_attempt_through(proxy, s3):
    s3.put_object(Bucket=BUCKET, Key="th/b.bin", Body=b"payload")
    proxy.throttle("th/b.bin", times=2)
    with pytest.raises(botocore.exceptions.ClientError):  # attempts 1 and 2
        s3.get_object(Bucket=BUCKET, Key="th/b.bin")
    assert s3.get_object(Bucket=BUCKET, Key="th/b.bin")["Body"].read() == b"payload"  # attempt 3
    assert proxy.counts[("throttle", "th/b.bin")] == 2
    # With one more retry allowed, a single call rides it out.
    proxy.throttle("th/b.bin", times=2)
    patient = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                           config=Config(retries={"max_attempts": 2}))
    assert patient.get_object(Bucket=BUCKET, Key="th/b.bin")["Body"].read() == b"payload"
    assert proxy.counts[("throttle", "th/b.bin")] == 4


@pytest.mark.integration
def test_proxy_truncate_breaks_the_body(proxy, s3):
    data = bytes(range(256)) * 4096  # 1 MiB
    s3.put_object(Bucket=BUCKET, Key="tr/a.bin", Body=data)
    proxy.truncate("tr/a.bin")
    r = s3.get_object(Bucket=BUCKET, Key="tr/a.bin")
    assert r["ContentLength"] == len(data)
    with pytest.raises(botocore.exceptions.ResponseStreamingError):
        r["Body"].read()
    assert proxy.counts[("truncate", "tr/a.bin")] == 1
    proxy.clear()
    assert s3.get_object(Bucket=BUCKET, Key="tr/a.bin")["Body"].read() == data


@pytest.mark.integration
def test_proxy_reset_closes_the_connection(proxy, s3):
    s3.put_object(Bucket=BUCKET, Key="rs/a.bin", Body=b"original")
    proxy.reset("rs/a.bin")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        s3.get_object(Bucket=BUCKET, Key="rs/a.bin")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        s3.put_object(Bucket=BUCKET, Key="rs/a.bin", Body=b"overwritten")
    assert proxy.counts[("reset", "rs/a.bin")] == 4  # 2 calls x 2 attempts
    proxy.clear()
    assert s3.get_object(Bucket=BUCKET, Key="rs/a.bin")["Body"].read() == b"original"  # never forwarded


def test_proxy_refuses_a_remote_upstream():
    with pytest.raises(ValueError):
        FaultyS3Proxy("http://example.com:80")
