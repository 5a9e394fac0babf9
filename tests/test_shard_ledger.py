"""Shard planning/writing, stage store, ledger and index built from hand-made stage tables."""

import json

import pytest
import webdataset as wds

from curation.ledger import build_index, build_ledger, funnel
from curation.policy import demo_policy, policy_from_dict
from curation.records import STAGE_SCHEMAS, clip_key
from curation import shard as shard_mod
from curation.shard import plan_shards, write_shard
from curation.stage_store import StageStore
from curation.storage import Storage


def clip_row(i, w=320, h=180, dur=2.0, nbytes=100):
    return {"item_id": clip_key("vabc", i, 0), "width": w, "height": h, "duration_s": dur, "clip_bytes": nbytes,
            "title": "t", "description": None, "status": "ok"}


def test_plan_shards_groups_by_bucket_and_caps_size():
    p = policy_from_dict({**json.loads(demo_policy().model_dump_json()), "output": {"shard_max_samples": 2, "max_short_side": 256}})
    rows = [clip_row(i) for i in range(5)] + [clip_row(10 + i, 180, 320) for i in range(2)]
    plan = plan_shards(list(reversed(rows)), p)
    assert [x["shard"] for x in plan] == [
        "shards/16x9_1p5-2p5s/shard-000000.tar", "shards/16x9_1p5-2p5s/shard-000001.tar",
        "shards/16x9_1p5-2p5s/shard-000002.tar", "shards/9x16_1p5-2p5s/shard-000000.tar"]
    keys = [r["item_id"] for x in plan for r in x["rows"]]
    assert keys == sorted(keys[:5]) + sorted(keys[5:])  # deterministic order, whatever the input order
    assert plan_shards(rows, p) == plan


def test_write_shard_reads_back_with_plain_webdataset(tmp_path):
    storage = Storage()
    media = tmp_path / "m"
    media.mkdir()
    rows = []
    for i in range(3):
        (media / f"{i}.mp4").write_bytes(b"video%d" % i)
        r = {**clip_row(i), "clip_uri": str(media / f"{i}.mp4"), "audio_uri": None, "caption": f"cap {i}",
             "license": "CC0-1.0", "bucket": "b"}
        if i == 1:
            (media / "1.flac").write_bytes(b"audio")
            r["audio_uri"] = str(media / "1.flac")
        rows.append(r)
    out = write_shard(storage, str(tmp_path / "out"), "shards/b/shard-000000.tar", rows)
    assert all(r["shard"] == "shards/b/shard-000000.tar" for r in out)
    samples = list(wds.WebDataset(str(tmp_path / "out/shards/b/shard-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [r["item_id"] for r in rows]
    assert samples[1]["flac"] == b"audio" and "flac" not in samples[0]
    rec = json.loads(samples[2]["json"])
    assert rec["key"] == rows[2]["item_id"] and rec["license"] == "CC0-1.0" and samples[2]["txt"] == b"cap 2"
    # Byte-identical on rewrite: resume must not change finished shards.
    first = (tmp_path / "out/shards/b/shard-000000.tar").read_bytes()
    write_shard(storage, str(tmp_path / "out"), "shards/b/shard-000000.tar", rows)
    assert (tmp_path / "out/shards/b/shard-000000.tar").read_bytes() == first

    # The layout is webdataset's own: the same bytes its TarWriter writes for these samples.
    samples = [shard_mod._sample(storage, r) for r in out]
    with open(tmp_path / "wds.tar", "wb") as f, wds.TarWriter(f, mtime=shard_mod.TAR_MTIME, encoder=False) as tw:
        for sample in samples:
            tw.write(sample)
    assert (tmp_path / "wds.tar").read_bytes() == first


def _common(stage, item, status="ok", reason=None, kind="video", parent=None):
    return {"run_id": "r", "item_id": item, "kind": kind, "parent_id": parent, "source_uri": f"/src/{item}",
            "stage": stage, "status": status, "reason": reason}


@pytest.fixture
def store(tmp_path):
    s = StageStore(Storage(), str(tmp_path))
    s.write_part("ingest", [_common("ingest", v) for v in ("va", "vb", "vc", "vd")])
    s.write_part("probe", [_common("probe", "va"), _common("probe", "vb", "failed", "empty file (0 bytes)"),
                           _common("probe", "vc"), _common("probe", "vd")])
    s.write_part("filter", [_common("filter", v) for v in ("va", "vc", "vd")])
    s.write_part("shots", [_common("shots", v) for v in ("va", "vc", "vd")])
    s.write_part("clips", [_common("clips", "va_1", kind="clip", parent="va"),
                           _common("clips", "va_2", "rejected", "shot_too_short: 1s<4s", "clip", "va"),
                           _common("clips", "vc_1", "rejected", "shot_too_short: 2s<4s", "clip", "vc"),
                           _common("clips", "vd_1", kind="clip", parent="vd")])
    s.write_part("extract", [{**_common("extract", "va_1", kind="clip", parent="va"), "width": 320, "height": 180,
                              "duration_s": 2.0},
                             _common("extract", "vd_1", "failed", "extract: ExtractError: ffmpeg exited 1", "clip", "vd")])
    s.write_part("shard", [{**_common("shard", "va_1", kind="clip", parent="va"), "shard": "shards/x/shard-000000.tar",
                            "bucket": "x", "caption": "", "duration_s": 2.0}])
    return s


def test_store_parts(store):
    assert store.read("probe").num_rows == 4
    assert store.read_part("clips", store.parts("clips")[0], ["parent_id"]).column_names == ["parent_id"]
    assert store.read("probe").schema == STAGE_SCHEMAS["probe"]
    store.write_part("probe", [])
    assert len(store.parts("probe")) == 1


def test_ledger_gives_every_item_one_terminal_status(store):
    led = {r["item_id"]: r for r in build_ledger(store).to_pylist()}
    assert len(led) == 4 + 4
    assert (led["va"]["status"], led["va"]["reason"]) == ("accepted", "1 clip(s) accepted")
    assert (led["vb"]["status"], led["vb"]["stage"]) == ("failed", "probe")
    assert led["vc"]["status"] == "rejected" and led["vc"]["reason"] == "no clip accepted (1x shot_too_short)"
    assert led["vd"]["status"] == "failed" and "1x extract" in led["vd"]["reason"]
    assert led["va_1"]["status"] == "accepted" and led["va_2"]["status"] == "rejected"
    assert led["vd_1"]["reason"] == "extract: ExtractError: ffmpeg exited 1"
    f = {r["stage"]: r for r in funnel(store)}
    assert (f["probe"]["rows"], f["probe"]["passed"], f["probe"]["failed"]) == (4, 3, 1)
    idx = build_index(store)
    assert idx.column("key").to_pylist() == ["va_1"] and idx.column("sampling_weight").to_pylist() == [1.0]


def test_ledger_flags_items_a_stopped_run_left_behind(store):
    store.clear("shard")
    led = {r["item_id"]: r for r in build_ledger(store).to_pylist()}
    assert led["va_1"]["status"] == "failed" and led["va_1"]["reason"].startswith("unfinished")
