"""The HTML run report, built from hand-made stage tables and real tiny clips.

The score table is written here as a plain parquet part with the clip plan and extract columns plus records.SCORE
(as older outputs have it: no signature columns); the dedup, caption and balance tables of the
newer stages go through StageStore with their STAGE_SCHEMAS.
"""

from __future__ import annotations

import html
import io
import json
import math
import re

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reelflow.curation import report, samples
from reelflow.curation.records import EXTRACT, SCORE, SCORE_COLUMNS, STAGE_SCHEMAS, clip_key, to_table
from reelflow.curation.report import write_report
from reelflow.curation.stage_store import StageStore
from reelflow.curation.storage import Storage, join

RUN = "run-test"
RULES = [
    {"rule": "motion", "score": "motion_mean", "min": 0.5, "max": 7.0, "enabled": True, "score_only": False},
    {"rule": "sharpness", "score": "sharpness", "min": 25.0, "max": None, "enabled": True, "score_only": True},
    {"rule": "text", "score": "text_conf_max", "min": None, "max": 0.6, "enabled": True, "score_only": False},
    {"rule": "jitter", "score": "cuts_per_s", "min": None, "max": 0.85, "enabled": True, "score_only": False},
    {"rule": "aesthetics", "score": "aesthetic_score", "min": 4.0, "max": None, "enabled": False, "score_only": False},
]
# Rejected clips: (scores, rule_failures, ledger reason), as curation.scoring.rules.verdict writes them. The text clip also broke the score-only
# sharpness rule first: it must still count against "text".
REJECTED = {
    "motion": ({"motion_mean": 0.12}, "motion: motion_mean=0.12<0.5", "motion: motion_mean=0.12<0.5"),
    "text": ({"text_conf_max": 0.93, "sharpness": 12.5},
             "sharpness: sharpness=12.5<25 (score only); text: text_conf_max=0.93>=0.6", "text: text_conf_max=0.93>=0.6"),
    "jitter": ({"cuts_per_s": 1.5}, "jitter: cuts_per_s=1.5>=0.85", "jitter: cuts_per_s=1.5>=0.85"),
}
KEPT_SCORE_ONLY = "sharpness: sharpness=20<25 (score only)"


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("report_clips")
    return [str(samples.make_cut_video(root / f"c{i}.mp4", [1.0], size=(96, 64), fps=8, audio=False).path)
            for i in range(2)]


def _base(vid: str, stage: str, status: str = "ok", reason: str | None = None, **kw) -> dict:
    return {"run_id": RUN, "item_id": vid, "kind": "video", "parent_id": None, "source_uri": f"/in/{vid}.mp4",
            "stage": stage, "status": status, "reason": reason, "license": "CC0-1.0", "title": vid, **kw}


def _clip(i: int, stage: str, uri: str, status: str = "ok", reason: str | None = None) -> dict:
    key = clip_key("vgood", i, 0)
    return {**_base(key, stage, status, reason), "kind": "clip", "parent_id": "vgood", "shot_index": i,
            "clip_index": 0, "start_s": 0.0, "end_s": 1.0, "duration_s": 1.0, "clip_uri": uri,
            "width": 96, "height": 64, "fps": 8.0, "frames": 8, "clip_bytes": 1000}


def _scores(i: int) -> dict:
    """Passing scores for every column; aesthetics is disabled, so all NaN."""
    s = {c: 0.0 for c in SCORE_COLUMNS}
    s.update(motion_mean=1.0 + i, sharpness=80.0 + 10 * i, text_conf_max=0.1, cuts_per_s=0.0, aesthetic_score=math.nan)
    return s


def build_output(storage: Storage, output: str, clip_files: list[str], with_score: bool = True, n_kept: int = 3) -> StageStore:
    store = StageStore(storage, output)
    store.write_part("ingest", [_base(v, "ingest") for v in ("vgood", "vsmall", "vbroken")])
    store.write_part("probe", [_base("vgood", "probe"), _base("vsmall", "probe"),
                               _base("vbroken", "probe", "failed", "probe: no video stream")])
    store.write_part("filter", [_base("vgood", "filter"),
                                _base("vsmall", "filter", "rejected", "resolution: short side 64 < 720")])
    store.write_part("shots", [_base("vgood", "shots")])
    n = n_kept + len(REJECTED) + 1  # + one clip whose scoring crashed
    uris = [clip_files[i % len(clip_files)] for i in range(n)]
    store.write_part("clips", [_clip(i, "clips", uris[i]) for i in range(n)])
    store.write_part("extract", [_clip(i, "extract", uris[i]) for i in range(n)])
    if with_score:
        _write_score(storage, output, [_score_row(i, uris[i], n_kept) for i in range(n)])
    store.write_part("shard", [{**_clip(i, "shard", uris[i]), "shard": "shards/a/shard-000000.tar"} for i in range(n_kept)])
    return store


def _score_row(i: int, uri: str, n_kept: int) -> dict:
    row = {**_clip(i, "score", uri), **_scores(i), "rule_failures": None}
    if i == 0:  # kept, though it broke a score-only rule
        return {**row, "sharpness": 20.0, "rule_failures": KEPT_SCORE_ONLY}
    if i < n_kept:
        return row
    j = i - n_kept
    if j == len(REJECTED):
        return {**row, "status": "failed", "reason": "score: decode error",
                **{c: math.nan for c in SCORE_COLUMNS}}
    scores, failures, reason = list(REJECTED.values())[j]
    return {**row, **scores, "status": "rejected", "reason": reason, "rule_failures": failures}


def _write_score(storage: Storage, output: str, rows: list[dict]) -> None:
    schema = pa.schema(list(STAGE_SCHEMAS["clips"]) + EXTRACT + SCORE)  # an older output's score table
    buf = io.BytesIO()
    pq.write_table(to_table(rows, schema), buf)
    storage.write_bytes(join(output, "_stages", "score", "part-test.parquet"), buf.getvalue())


def test_report_with_scores(tmp_path, clip_files):
    storage, out = Storage(), str(tmp_path / "out")
    store = build_output(storage, out, clip_files)
    storage.write_bytes(join(out, "dataset.json"), json.dumps(
        {"run_id": RUN, "inputs": 3, "videos": {"accepted": 1, "rejected": 1, "failed": 1},
         "clips": {"accepted": 3, "rejected": 3, "failed": 1}, "hours": 0.000833}).encode())
    uri = write_report(storage, out, store, RULES, RUN)
    assert uri == join(out, "report.html")
    assert [p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".html"] == ["report.html"]
    page = (tmp_path / "out" / "report.html").read_text()
    # funnel, rules, one histogram per varying or ruled score; aesthetics (all NaN) and constant columns skipped
    assert page.count("data:image/png;base64") == 2 + 4
    assert "static_fraction = 0" in page.split("Same value on every scored clip")[1]
    assert page.count("data:image/jpeg;base64") == 3 + len(REJECTED) + 0  # kept + rejected thumbnails
    assert "thumbnail unavailable" not in page
    for r in RULES:
        assert r["rule"] in page
    for v in ("0.5", "7", "25", "0.6", "0.85", "4"):
        assert f"<td>{v}</td>" in page  # each threshold in the rules table
    for _, failures, reason in REJECTED.values():
        assert html.escape(reason) in page and html.escape(failures) in page
    assert RUN in page and "0.001" in page  # hours from dataset.json, 3 decimals
    # The text clip broke score-only sharpness first: removed by text, sharpness removes nothing.
    assert re.search(r"<td class=l>sharpness</td>.*?score only</td><td>0</td><td>2</td>", page)
    assert "score-only failures: " + html.escape(KEPT_SCORE_ONLY) in page
    assert re.search(r"<td class=l>text</td>.*?enforced</td><td>1</td><td>1</td><td>3</td>", page)
    assert "aesthetic_score" in page.split("No finite value")[1]  # the all-NaN column is skipped, and said so
    # An output from before dedup, captions and balancing: those sections say so, and nothing breaks.
    assert "No dedup stage table" in page and "No balance stage table" in page
    assert "Kept: accepted into the shards (3 of 3 shown)" in page and "class=cap" not in page


def test_report_without_score_table_and_dataset_json(tmp_path, clip_files):
    storage, out = Storage(), str(tmp_path / "out")
    store = build_output(storage, out, clip_files, with_score=False)
    uri = write_report(storage, out, store, RULES, RUN)
    page = (tmp_path / "out" / "report.html").read_text()
    assert uri.endswith("report.html") and "no <code>score</code> stage table" in page
    assert "data:image/png;base64" in page
    assert page.count("data:image/jpeg;base64") == 3  # kept clips, from the shard table
    assert "the ledger built from the stage tables" in page
    assert "<td class=l>score</td>" not in page  # no score row in the stage funnel
    assert "No dedup stage table" in page and "<td class=l>dedup</td>" not in page


def test_report_with_zero_clips(tmp_path):
    storage, out = Storage(), str(tmp_path / "out")
    store = StageStore(storage, out)
    store.write_part("ingest", [_base("vsmall", "ingest")])
    store.write_part("probe", [_base("vsmall", "probe", "rejected", "license: not allowed")])
    _write_score(storage, out, [])
    write_report(storage, out, store, RULES, RUN)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "0 clip(s) entered the score stage" in page and "data:image/jpeg" not in page


# Clips 0..4 pass the rules; 3 is dropped as a near duplicate of 0; captioning 4 fails; 0, 1, 2 reach the shards.
DUP, LOST, KEPT_KEYS = 3, 4, (0, 1, 2)
NEAR_REASON = f"dedup: near duplicate of {clip_key('vgood', 0, 0)} (frame agreement 0.912)"
CLUSTERS = {0: (0, 2, 0.878680), 1: (0, 2, 0.878680), 2: (1, 1, 1.242641)}  # 1/sqrt(size), mean 1


def _caption(i: int) -> str:
    return f"A red square <drifts> across clip {i}."


def build_curated_output(storage: Storage, output: str, clip_files: list[str]) -> tuple[StageStore, list[str]]:
    """build_output, then the dedup, caption and balance tables, and a shard table of the clips they kept."""
    n_kept = LOST + 1
    store = build_output(storage, output, clip_files, n_kept=n_kept)
    store.clear("shard")
    uris = [clip_files[i % len(clip_files)] for i in range(n_kept)]
    scored = [{**_score_row(i, uris[i], n_kept), "camera_motion": "pan_left", "camera_confidence": 0.8} for i in range(n_kept)]
    dedup = [{**r, "stage": "dedup"} for r in scored]
    dedup[DUP].update(status="rejected", reason=NEAR_REASON, duplicate_of=clip_key("vgood", 0, 0),
                      dedup_level="near", dedup_similarity=0.912)
    store.write_part("dedup", dedup)
    caption = [{**r, "stage": "caption", "caption": _caption(i), "tags": "square=0.9; red=0.5; toy=0.2; sky=0.1"}
               for i, r in enumerate(dedup) if r["status"] == "ok"]
    caption[-1].update(status="failed", reason="caption: model crashed", caption=None)
    store.write_part("caption", caption)
    balance = [{**r, "stage": "balance", **dict(zip(("cluster_id", "cluster_size", "sampling_weight"), CLUSTERS[i]))}
               for i, r in enumerate(caption) if r["status"] == "ok"]
    store.write_part("balance", balance)
    store.write_part("shard", [{**r, "stage": "shard", "shard": "shards/a/shard-000000.tar"} for r in balance])
    return store, uris


def test_report_with_duplicates_captions_and_balance(tmp_path, clip_files, monkeypatch):
    decoded = []
    strip = report._thumb_strip
    monkeypatch.setattr(report, "_thumb_strip", lambda st, uri, span=None: decoded.append(uri) or strip(st, uri, span))
    storage, out = Storage(), str(tmp_path / "out")
    store, uris = build_curated_output(storage, out, clip_files)
    write_report(storage, out, store, RULES, RUN)
    page = (tmp_path / "out" / "report.html").read_text()
    kept_key, dup_key = clip_key("vgood", 0, 0), clip_key("vgood", DUP, 0)
    assert "thumbnail unavailable" not in page
    assert sorted(decoded) == sorted(set(uris))  # each clip decoded once, however often it shows

    dedup = page.split('<h2 id="dedup">')[1].split("<h2")[0]
    assert "<tr><td class=l>near</td><td>1</td><td>0.912</td>" in dedup
    assert "<tr><td class=l>exact</td><td>0</td>" in dedup and "<tr><td class=l>semantic</td><td>0</td>" in dedup
    group = dedup.split("<div class=dgroup>")[1]
    assert kept_key in group.split("class=dups")[0] and "in the shards" in group  # kept clip on the left
    right = group.split("class=dups")[1]
    assert dup_key in right and "near · frame agreement 0.912" in right and html.escape(NEAR_REASON) in right
    assert dedup.count("data:image/jpeg;base64") == 2

    balance = page.split('<h2 id="balance">')[1].split("<h2")[0]
    assert 'alt="concept clusters and sampling weights" src="data:image/png;base64' in balance
    assert "<tr><td>0</td><td>2</td><td>0.879</td><td>66.7%</td>" in balance
    assert "3 clip(s) in 2 concept cluster(s)" in balance and html.escape(_caption(0)) in balance
    assert page.count("data:image/png;base64") == 2 + 4 + 1  # funnel, rules, histograms, balance

    sheet = page.split('<h2 id="sheet">')[1]
    kept = sheet.split("<h3>Rejected")[0]
    assert "Kept: accepted into the shards (3 of 3 shown)" in kept
    for i in KEPT_KEYS:
        assert clip_key("vgood", i, 0) in kept and f"<div class=cap>{html.escape(_caption(i))}</div>" in kept
    assert dup_key not in kept and clip_key("vgood", LOST, 0) not in kept  # neither shown as kept
    assert "camera: pan_left, conf 0.80 · cluster 0 (2 clips) · weight 0.879" in kept
    assert "cluster 1 (1 clip) · weight 1.243" in kept and "tags: square=0.9; red=0.5; toy=0.2; …" in kept
    assert "score-only failures: " + html.escape(KEPT_SCORE_ONLY) in kept  # from the shard row
    assert "Removed as duplicates (1)" in sheet
    lost = sheet.split("Lost after scoring (1 of 1)")[1]
    assert clip_key("vgood", LOST, 0) in lost and "caption failed: caption: model crashed" in lost
    assert sheet.count("data:image/jpeg;base64") == len(KEPT_KEYS) + len(REJECTED) + 1
    assert "<b>1</b><span>of which duplicates</span>" in page
    for st in ("dedup", "caption", "balance", "shard"):
        assert f"<td class=l>{st}</td>" in page  # the stage funnel lists the new stages


def test_report_balance_off_and_shard_missing(tmp_path, clip_files):
    """Balancing off (no clusters, weights 1) skips the chart; without a shard table (an unfinished run)
    the clips that passed scoring and dedup stand in for the kept ones."""
    storage, out = Storage(), str(tmp_path / "out")
    store, _ = build_curated_output(storage, out, clip_files)
    rows = store.read("balance").to_pylist()
    store.clear("balance")
    store.write_part("balance", [{**r, "cluster_id": None, "cluster_size": None, "sampling_weight": 1.0} for r in rows])
    store.clear("shard")
    write_report(storage, out, store, RULES, RUN)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "No concept clusters (balancing off, or no embeddings): every sampling weight is 1." in page
    assert page.count("data:image/png;base64") == 2 + 4 and "<td class=l>shard</td><td>0</td>" in page
    kept = page.split('<h2 id="sheet">')[1].split("<h3>Rejected")[0]
    assert "Passed scoring and dedup (no shard table: the run did not finish) (4 of 4 shown)" in kept
    assert clip_key("vgood", DUP, 0) not in kept and "Lost after scoring" not in page


@pytest.mark.integration
def test_report_on_s3(s3_server, clip_files):
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="reports")
    storage, out = Storage(), "s3://reports/run1"
    uploaded = []
    for i, f in enumerate(clip_files):
        uploaded.append(f"s3://reports/clips/c{i}.mp4")
        storage.upload_file(f, uploaded[-1])
    store = build_output(storage, out, uploaded, n_kept=2)
    uri = write_report(storage, out, store, RULES, RUN)
    assert uri == "s3://reports/run1/report.html"
    page = storage.read_bytes(uri).decode()
    assert page.count("data:image/jpeg;base64") == 2 + len(REJECTED) and "thumbnail unavailable" not in page


def test_report_shows_clips_judged_from_their_sources_and_the_encode_saving(tmp_path, clip_files):
    """Judge before encode: rejected clips have no clip file; their thumbnails come from their
    span of the source, and the header says how many seconds were analysed and how many encoded."""
    storage, out = Storage(), str(tmp_path / "out")
    store = StageStore(storage, out)
    n_kept = 2
    n = n_kept + len(REJECTED)
    for st in ("ingest", "probe", "filter", "shots"):
        store.write_part(st, [_base("vgood", st)])

    def judged(i: int, stage: str) -> dict:  # a candidate with its span of a real source, never encoded
        row = {k: v for k, v in _clip(i, stage, clip_files[i % 2]).items()
               if k not in ("clip_uri", "width", "height", "fps", "frames", "clip_bytes")}
        return {**row, "source_uri": clip_files[i % 2], "start_s": 0.25, "end_s": 0.75, "duration_s": 0.5,
                "src_width": 96, "src_height": 64, "rotation": 90 if i == n - 1 else 0}

    store.write_part("clips", [judged(i, "clips") for i in range(n)])
    span = ("source_uri", "start_s", "end_s", "duration_s", "src_width", "src_height", "rotation")
    store.write_part("score", [{**_score_row(i, "", n_kept), "clip_uri": None, "width": None, "height": None,
                                **{k: judged(i, "score")[k] for k in span}} for i in range(n)])
    store.write_part("dedup", [judged(i, "dedup") for i in range(n_kept)])
    store.write_part("extract", [{**_clip(i, "extract", clip_files[i % 2]), "duration_s": 0.5} for i in range(n_kept)])
    store.write_part("shard", [{**_clip(i, "shard", clip_files[i % 2]), "duration_s": 0.5,
                                "shard": "shards/a/shard-000000.tar"} for i in range(n_kept)])
    page = (tmp_path / "out" / "report.html").read_text() if write_report(storage, out, store, RULES, RUN) else ""
    assert "thumbnail unavailable" not in page
    assert page.count("data:image/jpeg;base64") == n_kept + len(REJECTED)
    assert page.count("s of a 96×64 source, not encoded") == len(REJECTED)
    assert (f"{0.5 * n:.1f} s of candidate clips analysed from their sources, {0.5 * n_kept:.1f} s encoded "
            f"({100 * n_kept // n}%)") in page
    assert report.encode_saving(store.read("score"), store.read("extract")) == (0.5 * n, 0.5 * n_kept)


def test_large_run_report_reads_a_sample_of_videos(tmp_path, clip_files, ray_session, monkeypatch):
    """Beyond max_rows the workers read a hash sample of the videos (a clip with its video, the
    same items in every table); the page says so, and shows the run's exact funnel."""
    from reelflow.curation import report

    storage, out = Storage(), str(tmp_path / "out")
    store = build_output(storage, out, clip_files)
    for name in ("vfar", "vnear", "vmid", "vlast"):  # more videos, one clip each
        store.write_part("ingest", [_base(name, "ingest")])
        for st in ("clips", "extract"):
            store.write_part(st, [{**_clip(0, st, clip_files[0]), "item_id": clip_key(name, 0, 0), "parent_id": name}])
    monkeypatch.setattr(report, "SAMPLE_CLIPS", 5)  # of 11 candidate clips
    tables, rate = report.read_tables(store, max_rows=0)
    assert rate == 5 / 11
    full, _ = report.read_tables(store, max_rows=None)
    videos = lambda t: {r["parent_id"] or r["item_id"] for r in t.to_pylist()}  # noqa: E731
    kept = videos(tables["ingest"])
    assert 0 < len(kept) < 5
    for st in ("clips", "extract", "score", "shard"):
        if tables[st] is None:
            continue
        assert videos(tables[st]) <= kept
        # a clip comes with its video: every clip of a sampled video, none of the others
        assert sorted(tables[st]["item_id"].to_pylist()) == sorted(
            r["item_id"] for r in full[st].to_pylist() if (r["parent_id"] or r["item_id"]) in kept)
    funnel = [{"stage": "probe", "rows": 123457, "passed": 123450, "rejected": 5, "failed": 2}]
    write_report(storage, out, store, RULES, RUN, funnel=funnel, max_rows=0)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "show a sample of 45% of the videos" in page
    assert "<td>123457</td><td>123450</td><td>5</td><td>2</td>" in page


def test_a_clip_that_cannot_be_decoded_shows_why_and_the_rest_of_the_report_stands(tmp_path, clip_files):
    """Thumbnails decode in a thread while the charts draw; a clip file that is gone (or broken)
    must end as a note on its own card, every other card keeping its thumbnail."""
    import shutil

    storage, out = Storage(), str(tmp_path / "out")
    gone = tmp_path / "gone.mp4"
    shutil.copy(clip_files[1], gone)
    store = build_output(storage, out, [clip_files[0], str(gone)])
    gone.unlink()
    write_report(storage, out, store, RULES, RUN)
    page = (tmp_path / "out" / "report.html").read_text()
    cards = page.split("<div class='clip ")[1:]
    broken = [c for c in cards if "thumbnail unavailable" in c]
    assert broken and all("data:image/jpeg" not in c for c in broken)
    assert page.count("data:image/jpeg;base64") == len(cards) - len(broken) > 0
    assert "\x00" not in page  # every placeholder was filled
    assert page.count("data:image/png;base64") == 2 + 4  # the charts are all there
